"""`python -m core ARGS` in its own process, forked from a server that imported the engine once.

A fresh Python pays 5-7 s of CPU to import torch, transformers, peft and captum before the CLI parses its
arguments; the suite starts dozens of engines (to kill them, resume them, serve from them). Each one here is
still its own process running the real `core.cli.main` with its own environment, working directory and
captured output, killed by real signals; only the imports are inherited. `subprocess.Popen`'s interface, so a
test reads the same either way.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import types
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ["core.cycle", "core.cli", "core.serve.app", "tests.engine_process"]


def start(target, args: tuple) -> multiprocessing.Process:
    """target(*args) in a process forked from the server that imported the engine (the crash soak's too)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    proc = ctx.Process(target=target, args=args)
    # A child from the forkserver re-runs this process's __main__ from its file, and Streamlit's AppTest leaves
    # the dashboard's script there: the child needs nothing of it.
    main, sys.modules["__main__"] = sys.modules["__main__"], types.ModuleType("__main__")
    try:
        proc.start()
    finally:
        sys.modules["__main__"] = main
    return proc


def _main(args: list[str], env: dict, out: str, err: str) -> None:
    """The child: the CLI's own entry point, as `python -m core` runs it."""
    os.chdir(ROOT)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    from core.cli import main

    sys.exit(main(args))


class EngineProcess:
    def __init__(self, *args: str, env: dict | None = None):
        self.args = ["python", "-m", "core", *args]
        self._dir = Path(tempfile.mkdtemp(prefix="engine-"))
        weakref.finalize(self, shutil.rmtree, self._dir, True)
        out, err = self._dir / "stdout", self._dir / "stderr"
        out.touch()
        err.touch()
        self._proc = start(_main, (list(args), {**os.environ, **(env or {})}, str(out), str(err)))
        self.pid = self._proc.pid
        self.stdout, self.stderr = open(out), open(err)

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def terminate(self) -> None:
        self._proc.terminate()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout.read(), self.stderr.read()


def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = EngineProcess(*args, env=env)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

