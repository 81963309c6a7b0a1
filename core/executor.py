"""Where the cycle's embarrassingly parallel work runs: in the engine's process, or on a Ray cluster.

One interface, `Executor.map(task, batches)`: a `Task` is what a worker holds (a model, loaded once) and what it
does to one batch; the executor returns one result per batch, in the batches' order. `local` is a plain loop in
this process, as before there was a choice. `ray` (`engine.executor = "ray"`, requirements-scale.txt) hands the
batches to actors, one task object loaded once per actor, as Ray Data's `map_batches` does with a callable class:

- A worker only computes and returns; the engine alone writes the store, so crash safety and the audit are the
  same whichever executor ran the work.
- An actor killed mid-batch is restarted by Ray and its batch run again (`max_restarts`, `max_task_retries`).
  Results are keyed by batch index, so a batch that ran twice is still counted once.
- A cluster that cannot be reached is an `ExecutorError`, one line from the CLI, raised when the engine starts
  (`connect`), before a cycle or a prediction begins.

Ray is imported only when the executor is `ray`.
"""
from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from core.errors import ExecutorError

BATCH_TEXTS = 512  # texts per batch: large enough to amortize a call, small enough to spread 2 workers' work
RETRIES = 3  # per actor: restarts after its process died, and re-runs of the batch it held
NOTE_EVERY_S = 5.0  # how often a long map tells its listener (the cycle's Overview line) how far it is


class Task:
    """What a worker holds and does. `load()` builds the held state (once per process that runs the task);
    `run(held, batch)` computes one batch's result. Pickling drops the held state, so a task travels light and
    each Ray actor loads its own copy once."""

    key = "task"  # tasks with the same key are run by the same actors within one executor

    _held = None

    def load(self):
        return None

    def run(self, held, batch):
        raise NotImplementedError

    def __call__(self, batch):
        if self._held is None:
            self._held = self.load()
        return self.run(self._held, batch)

    def for_workers(self) -> "Task":
        """The copy that travels to other machines (a subclass ships files a remote node may not have)."""
        return self

    def unload(self, held) -> None:
        """Free what load() built (a sandbox's cluster); the executor calls it when it closes."""

    def release(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self.unload(held)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_held", None)
        return state


class _Tally:
    """One map's count of items done (a batch's length, or 1): the CLI's bar, and at most every NOTE_EVERY_S a
    line for the executor's listener (`notes`: the cycle writes it to the store, where the Overview shows it),
    with a last line at the end when any was said."""

    def __init__(self, executor, batches: list, progress: bool, desc: str):
        from tqdm import tqdm

        self.sizes = [len(b) if hasattr(b, "__len__") else 1 for b in batches]
        self.total, self.done = sum(self.sizes), 0
        self.bar = tqdm(total=self.total, disable=not progress or len(batches) < 2, desc=desc, leave=False)
        self.notes, self.line = executor.notes, f"{desc} {executor.where}"
        self.said = None  # monotonic time of the last line; None: nothing said yet
        self.since = time.monotonic()

    def finished(self, index: int) -> None:
        self.done += self.sizes[index]
        self.bar.update(self.sizes[index])
        now = time.monotonic()
        last = self.done == self.total
        if self.notes is not None and (now - (self.said or self.since) >= NOTE_EVERY_S or
                                       (last and self.said is not None)):
            self.said = now
            self.notes(f"{self.line}: {self.done:,} of {self.total:,}")

    def close(self) -> None:
        self.bar.close()


class LocalExecutor:
    name = "local"
    workers = 1
    where = "here"
    notes = None  # text -> None: told how long maps stand (see _Tally)

    def map(self, task: Task, batches: list, progress: bool = False, desc: str = "batches") -> list:
        tally, results = _Tally(self, batches, progress, desc), []
        try:
            for index, batch in enumerate(batches):
                results.append(task(batch))
                tally.finished(index)
        finally:
            tally.close()
        return results

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connect to host:port: ray.init on an address where nothing listens retries for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ExecutorError(f"engine.ray_address {address}: cannot reach a Ray cluster there ({reason}); "
                            "fix the address or set engine.executor = \"local\"") from None


def connect(address: str = "", num_cpus: int | None = None) -> None:
    """Join the Ray cluster at address, or start one on this machine (empty address); once per process."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("engine.executor is \"ray\" but Ray is not installed "
                            "(pip install -r requirements-scale.txt)") from None
    if ray.is_initialized():
        return
    if address:
        _reachable(address)
    # Workers import this Evolab's own code, shipped with the job; models come from each node's installation.
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
               "runtime_env": {"py_modules": [str(Path(__file__).parent)]}}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **options)
    except Exception as err:  # a listener that is not Ray, a version mismatch, a token the cluster refuses
        raise ExecutorError(f"engine.ray_address {address or '(local)'}: Ray did not start "
                            f"({' '.join(str(err).split())[:300]})") from None


class RayExecutor:
    """Batches over one fixed set of actors; an idle actor takes the next batch (ActorPool's way). Each actor
    holds every task it has been handed (the model, the teacher encoder), loaded the first time it runs one: one
    pool, so the cluster's CPUs are never held by actors of one kind of work while another's wait for them."""

    name = "ray"
    notes = None  # text -> None: told how long maps stand (see _Tally)

    def __init__(self, address: str = "", workers: int = 0):
        import ray

        connect(address)
        self._ray = ray
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus)
        self.where = f"on Ray ({self.workers} worker{'s' if self.workers > 1 else ''})"
        self._actors: list = []
        self._shipped: dict[str, list] = {}  # task key -> [object ref of the task as workers get it]

    def _pool(self) -> list:
        if not self._actors:
            ray = self._ray

            @ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)
            class Worker:
                def __init__(self):
                    # One torch thread per actor: the actors, not the threads, use the cores.
                    import torch

                    torch.set_num_threads(1)
                    self.tasks = {}

                def run(self, key: str, shipped: list, batch):
                    # The task comes as a reference inside a list, fetched here once per actor (and again after
                    # Ray restarted it); the driver keeps the reference alive.
                    if key not in self.tasks:
                        self.tasks[key] = ray.get(shipped[0])
                    return self.tasks[key](batch)

                def release(self):
                    for task in self.tasks.values():
                        task.release()

            self._actors = [Worker.remote() for _ in range(self.workers)]
        return self._actors

    def map(self, task: Task, batches: list, progress: bool = False, desc: str = "batches") -> list:
        ray = self._ray
        if task.key not in self._shipped:
            self._shipped[task.key] = [ray.put(task.for_workers())]
        shipped = self._shipped[task.key]
        results: dict[int, object] = {}
        waiting: dict = {}  # object ref -> (batch index, actor)
        pending = list(enumerate(batches))[::-1]
        idle = list(self._pool())
        tally = _Tally(self, batches, progress, desc)
        try:
            while pending or waiting:
                while idle and pending:
                    index, batch = pending.pop()
                    actor = idle.pop()
                    waiting[actor.run.remote(task.key, shipped, batch)] = (index, actor)
                done, _ = ray.wait(list(waiting), num_returns=1)
                index, actor = waiting.pop(done[0])
                results[index] = ray.get(done[0])  # keyed by batch: a batch Ray ran twice is kept once
                idle.append(actor)
                tally.finished(index)
        finally:
            tally.close()
        return [results[i] for i in range(len(batches))]

    def close(self) -> None:
        # Each actor frees what its tasks hold (a sandbox's cluster) before it is killed; an actor that does not
        # answer in time is killed anyway, and its cluster stops with it (core/sandbox/cluster.py ties the
        # server to its owner, and the next cluster started on that node sweeps what is left).
        if self._actors:
            try:
                self._ray.get([actor.release.remote() for actor in self._actors], timeout=120)
            except Exception:  # noqa: BLE001 - a dead or hung actor: killed below either way
                pass
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors, self._shipped = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_executor(engine_cfg):
    """The executor engine.executor names (close it, or use it as a context manager, to free Ray's actors)."""
    if engine_cfg.executor == "ray":
        return RayExecutor(engine_cfg.ray_address, engine_cfg.ray_workers)
    return LocalExecutor()


def check(engine_cfg) -> None:
    """Fail before any work starts when the configured executor cannot run: the engine's and predict's first step."""
    if engine_cfg.executor == "ray":
        connect(engine_cfg.ray_address)


# -- the texts-in, arrays-out work the cycle hands over --------------------------------------------------------
def map_texts(executor, task: Task, texts: list[str], progress: bool = False, desc: str = "encoding"):
    """task over texts in batches, as one result: a tuple of arrays with a row per text, in the texts' order.

    Texts are sorted by length before they are cut into batches, as embed_texts sorts them, so a batch pads to
    texts of about its own length, and local runs compute what they computed before batching."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    cuts = [order[s:s + BATCH_TEXTS] for s in range(0, len(order), BATCH_TEXTS)]
    if not texts:
        return task([])  # the empty result's shapes, from the task itself
    parts = executor.map(task, [[texts[i] for i in cut] for cut in cuts], progress=progress, desc=desc)
    single = not isinstance(parts[0], tuple)
    parts = [(p,) if single else p for p in parts]
    out = []
    for k in range(len(parts[0])):
        first = parts[0][k]
        stacked = np.zeros((len(texts), *first.shape[1:]), dtype=first.dtype)
        for cut, part in zip(cuts, parts):
            stacked[cut] = part[k]
        out.append(stacked)
    return out[0] if single else tuple(out)


class ModelEncode(Task):
    """A model version's (embeddings, probabilities) per text (core.model.embed_and_proba)."""

    def __init__(self, loaded, folder: Path, files: dict[str, str]):
        self.version, self.folder, self.files = loaded.version, Path(folder), dict(files)
        self.key = f"model:{self.version}"
        self._held = loaded  # in the engine's process the loaded model is at hand
        self.blobs: dict[str, bytes] | None = None

    def for_workers(self) -> "ModelEncode":
        # The version's own files (adapter, head, memory: megabytes) travel with the task, so a node without the
        # workspace can load it; the base model must be installed on every node, like Evolab itself.
        shipped = object.__new__(ModelEncode)
        shipped.__dict__.update(self.__getstate__())
        shipped.blobs = {name: (self.folder / name).read_bytes() for name in self.files}
        return shipped

    def load(self):
        from core import model as M

        if self.blobs is None:
            return M.load_version(self.folder, self.files, self.version)
        tmp = Path(tempfile.mkdtemp(prefix=f"evolab-{self.version}-"))
        for name, data in self.blobs.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        return M.load_version(tmp, self.files, self.version)  # checks every file's sha256 on arrival

    def run(self, loaded, texts):
        from core import model as M

        return M.embed_and_proba(loaded, texts)


class EncoderEmbed(Task):
    """A frozen encoder's normalized embeddings (a teacher view). The encoder is named as the config names it
    (the bundled MiniLM, an offline extra, a folder) and resolved on each node, where it must be installed."""

    def __init__(self, name: str, max_length: int, digest: str = "", bf16: bool = True):
        self.name, self.max_length, self.digest, self.bf16 = str(name), max_length, digest, bf16
        self.key = f"encoder:{self.name}:{max_length}"

    def load(self):
        from core import model as M
        from core.checksums import encoder_key

        folder = M.resolve_base(self.name)
        # The view's cache is keyed by the engine's copy of the encoder: a node holding other weights would mix
        # another encoder's vectors into it.
        if self.digest and encoder_key(Path(folder)) != self.digest:
            raise ExecutorError(f"teacher encoder {self.name} on this node differs from the engine's copy")
        return M.load_base(self.name)

    def run(self, loaded, texts):
        from core import model as M

        return M.embed_texts(*loaded, texts, self.max_length, bf16=self.bf16)


def model_encoder(executor, ws, loaded):
    """texts -> the model version's (embeddings, probabilities), computed in batches by executor (locally with the
    model already loaded in this process)."""
    task = ModelEncode(loaded, ws.models / loaded.version, ws.store.version(loaded.version)["files"])
    return lambda texts, progress=False: map_texts(executor, task, texts, progress,
                                                   f"encoding texts with {loaded.version}")
