"""Request counters and a latency window, exposed in the Prometheus text format at /metrics."""
from __future__ import annotations

import threading
from collections import Counter, deque

import numpy as np

KNOWN_PATHS = {"/predict", "/feedback", "/healthz", "/metrics", "/docs", "/openapi.json"}


class Metrics:
    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.texts = 0
        self.feedback = 0
        self._latency_ms: deque[float] = deque(maxlen=window)  # recent /predict requests only

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path if path in KNOWN_PATHS else "other", status)] += 1

    def predicted(self, n_texts: int, latency_ms: float) -> None:
        with self._lock:
            self.texts += n_texts
            self._latency_ms.append(latency_ms)

    def corrected(self) -> None:
        with self._lock:
            self.feedback += 1

    def latency_quantiles(self) -> dict[str, float]:
        with self._lock:
            recent = np.array(self._latency_ms)
        if not len(recent):
            return {}
        return {q: float(np.percentile(recent, float(q) * 100)) for q in ("0.5", "0.9", "0.99")}

    def render(self, gauges: dict[str, float], info: dict[str, str]) -> str:
        with self._lock:
            requests, texts, feedback = dict(self.requests), self.texts, self.feedback
        lines = ["# TYPE evolab_requests_total counter"]
        lines += [f'evolab_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(requests.items())]
        lines += ["# TYPE evolab_predicted_texts_total counter", f"evolab_predicted_texts_total {texts}",
                  "# TYPE evolab_feedback_total counter", f"evolab_feedback_total {feedback}",
                  "# TYPE evolab_predict_latency_ms summary"]
        lines += [f'evolab_predict_latency_ms{{quantile="{q}"}} {v:.3f}' for q, v in self.latency_quantiles().items()]
        for name, value in gauges.items():
            lines += [f"# TYPE evolab_{name} gauge", f"evolab_{name} {value}"]
        labels = ",".join(f'{k}="{v}"' for k, v in info.items())
        lines += ["# TYPE evolab_serving_info gauge", f"evolab_serving_info{{{labels}}} 1"]
        return "\n".join(lines) + "\n"
