"""Everything the server does to turn texts into predictions, behind one class: the production model
run through the production scaffold, both hot-swapped when either changes."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch

from core import model as M, registry
from core.scaffolds import archive, run as scaffold_run
from core.serve.swap import HotSwap, Keys
from core.workspace import Workspace


@dataclass(frozen=True)
class Serving:
    """What answers requests: swapped as one reference, never changed in place."""
    loaded: M.Loaded
    model_version: str
    scaffold_version: str
    scaffold: dict
    bank: scaffold_run.Bank


def watched_keys(ws: Workspace) -> dict[str, Callable[[], str | None]]:
    """The store keys whose change means a new Serving: the production alias and the production scaffold."""
    return {"model": lambda: ws.store.alias("production"),
            "scaffold": lambda: archive.production_id(ws.store)}


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
        scaffold_id = keys["scaffold"]
        spec = archive.get(self.ws.store, scaffold_id)
        serving = Serving(loaded, version, scaffold_id, spec, scaffold_run.bank_for(self.ws, loaded))
        self._run(serving, ["warm up"])  # the first real request should not pay for lazy initialisation
        return serving

    def start(self) -> None:
        self.swap.start()

    def close(self) -> None:
        self.swap.close()

    @property
    def serving(self) -> Serving:
        return self.swap.current

    def _run(self, serving: Serving, texts: list[str]) -> list[dict]:
        if self.threads and not getattr(self._local, "threads_set", False):
            # OpenMP's thread count is per calling thread, and requests run on the server's worker threads.
            torch.set_num_threads(self.threads)
            self._local.threads_set = True
        with self._forward, torch.inference_mode():
            return scaffold_run.run(serving.scaffold, serving.loaded, texts, serving.bank)

    def predict(self, texts: list[str]) -> list[dict]:
        """[{label, confidence, abstained, model_version, scaffold_version}] per text, all from one Serving."""
        serving = self.swap.current  # read once: a swap during this request does not mix two models
        return [{**row, "model_version": serving.model_version, "scaffold_version": serving.scaffold_version}
                for row in self._run(serving, texts)]
