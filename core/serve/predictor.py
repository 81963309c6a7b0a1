"""Everything the server does to turn texts into predictions, behind one class.

For now the production model answers directly (`scaffold_version: "direct"`). Inference scaffolds plug in
here: watch their key in `watched_keys`, load the spec in `_build`, and call it in `predict`; the app, the
logs and the hot swap stay as they are.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch

from core import model as M, registry
from core.serve.swap import HotSwap, Keys
from core.workspace import Workspace

DIRECT = "direct"


@dataclass(frozen=True)
class Serving:
    """What answers requests: swapped as one reference, never changed in place."""
    loaded: M.Loaded
    model_version: str
    scaffold_version: str


def watched_keys(ws: Workspace) -> dict[str, Callable[[], str | None]]:
    """The store keys whose change means a new Serving: the production alias (and, with scaffolds, the
    production scaffold id)."""
    return {"model": lambda: ws.store.alias("production")}


class Predictor:
    def __init__(self, ws: Workspace, poll_s: float = 0.5, threads: int = 0):
        self.ws, self.threads = ws, threads
        self._local = threading.local()
        self.swap: HotSwap[Serving] = HotSwap(watched_keys(ws), self._build, poll_s)
        # One forward at a time: on a few cores, concurrent forwards only fight over the same threads.
        self._forward = threading.Lock()

    def _build(self, keys: Keys) -> Serving:
        version = keys["model"]
        if not version:
            raise registry.NoModelError("no production model yet (run `python -m core evolve` and approve "
                                        "its gate)")
        loaded = registry.load(self.ws, version)
        loaded.model.to(M.device()).eval()
        self._logits(loaded, ["warm up"])  # the first real request should not pay for lazy initialisation
        return Serving(loaded, version, DIRECT)

    def start(self) -> None:
        self.swap.start()

    def close(self) -> None:
        self.swap.close()

    @property
    def serving(self) -> Serving:
        return self.swap.current

    def labels(self) -> list[str]:
        return self.serving.loaded.labels

    def _logits(self, loaded: M.Loaded, texts: list[str]) -> torch.Tensor:
        if self.threads and not getattr(self._local, "threads_set", False):
            # OpenMP's thread count is per calling thread, and requests run on the server's worker threads.
            torch.set_num_threads(self.threads)
            self._local.threads_set = True
        batch = M.tokenize(loaded.tokenizer, texts, loaded.max_length)
        dev = M.device()
        with self._forward, torch.inference_mode():
            return loaded.model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev)).float().cpu()

    def predict(self, texts: list[str]) -> list[dict]:
        """[{label, confidence, model_version, scaffold_version}] per text, all from one Serving."""
        serving = self.swap.current  # read once: a swap during this request does not mix two models
        probs = torch.softmax(self._logits(serving.loaded, texts), dim=-1)
        confidence, index = probs.max(dim=-1)
        labels = serving.loaded.labels
        return [{"label": labels[i], "confidence": round(float(c), 6), "model_version": serving.model_version,
                 "scaffold_version": serving.scaffold_version}
                for i, c in zip(index.tolist(), confidence.tolist())]
