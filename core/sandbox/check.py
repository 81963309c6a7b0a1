"""The configured execution check, opened once per curation: the SQL sandbox or a domain's own check.

    with open_check(cfg.curate) as check:          # None when nothing is configured
        verdicts = check.run(samples)              # [Verdict], input order; every reason starts "sandbox: "

One shape for all three sources (curate.sandbox, curate.sandbox_command, curate.sandbox_callable), so the
curation pipeline has one verifier. A verdict's `category` is its reason without the details (what the yield
report counts: "executed as fails (23502 not_null_violation), claimed safe", "contained", a command's
timeout), and `label` is what execution measured when the check says it (the SQL sandbox does).
"""
from __future__ import annotations

import importlib
import os
import re
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

from core.executor import Task
from core.sandbox.external import Verdict, command_check, python_check

PREFIX = "sandbox: "


def _sqlstate_name(code: str | None) -> str:
    """23502 -> 'not_null_violation' (psycopg's class name in snake case), so a reason reads without a manual."""
    if not code:
        return ""
    try:
        import psycopg.errors

        name = psycopg.errors.lookup(code).__name__
    except (KeyError, ImportError):
        return code
    return f"{code} " + re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class Checked:
    verdict: Verdict
    category: str  # the reason without its details: what the yield report counts
    label: str | None = None  # the label execution measured, when the check reports one


def sql_verdict(outcome, claimed: str) -> Checked:
    """An Outcome of the SQL sandbox as a verdict on the label a sample claims."""
    evidence = outcome.evidence()
    if outcome.escape:
        category = "contained"
    elif outcome.label is None:
        category = f"unverifiable on {outcome.backend}"
    elif outcome.label == claimed:
        category = f"execution confirms {claimed}"
    else:
        state = f" ({_sqlstate_name(outcome.sqlstate)})" if outcome.sqlstate else ""
        category = f"executed as {outcome.label}{state}, claimed {claimed}"
    keep = not outcome.escape and outcome.label is not None and outcome.label == claimed
    return Checked(Verdict(keep, f"{PREFIX}{category}; {outcome.reason}"[:500], evidence), category, outcome.label)


def _external(verdict: Verdict) -> Checked:
    # A domain's reason is its own words; its first clause is what gets counted.
    category = re.split(r"[;:]", verdict.reason, maxsplit=1)[0].strip()[:80] or ("kept" if verdict.keep else "dropped")
    return Checked(Verdict(verdict.keep, f"{PREFIX}{verdict.reason}"[:500], verdict.evidence), category)


@dataclass
class ExecutionCheck:
    name: str  # what runs the samples, for reports: "postgres (local cluster)", "command ./run_tests.sh", ...
    run_batch: Callable[[list[dict]], list[Checked]]
    close: Callable[[], None] = lambda: None
    sandbox: object = None  # the SQL sandbox behind it, when it is one

    def run(self, samples: list[dict]) -> list[Checked]:
        """samples: dicts with text and label (generator, target optional); one Checked each, input order."""
        return self.run_batch(samples) if samples else []


def sandbox_execution_check(sandbox, name: str) -> ExecutionCheck:
    """An open SQL sandbox (core.sandbox.open_sandbox) as the verifier's check; closing the check closes it."""
    def batch(samples: list[dict]) -> list[Checked]:
        outcomes = sandbox.check_many([s["text"] for s in samples])  # parallel over the sandbox's workers
        return [sql_verdict(o, s["label"]) for o, s in zip(outcomes, samples)]

    return ExecutionCheck(name, batch, sandbox.close, sandbox)


def _per_sample(fn: Callable[[dict], Verdict], workers: int) -> Callable[[list[dict]], list[Checked]]:
    def batch(samples: list[dict]) -> list[Checked]:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # a command's time is mostly its own process
            return [_external(v) for v in pool.map(fn, samples)]
    return batch


def load_callable(path: str) -> Callable[[dict], dict]:
    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"curate.sandbox_callable '{path}' cannot be loaded: {err}") from None
    if not callable(fn):
        raise ValueError(f"curate.sandbox_callable '{path}' is not callable")
    return fn


def _name(cfg) -> str | None:
    if cfg.sandbox:
        return {"duckdb": "duckdb (embedded fallback)", "local": "postgres (throwaway local cluster)"}.get(
            cfg.sandbox, "postgres (configured server)")
    if cfg.sandbox_command:
        return "command " + " ".join(cfg.sandbox_command)
    return f"callable {cfg.sandbox_callable}" if cfg.sandbox_callable else None


def build_check(cfg) -> ExecutionCheck | None:
    """The configured check, opened here (a throwaway cluster starts); None when nothing is configured."""
    if cfg.sandbox:
        from core.sandbox import open_sandbox

        target = None if cfg.sandbox == "duckdb" else cfg.sandbox
        sandbox = open_sandbox(target, workers=cfg.sandbox_workers)  # its own 2 s statement timeout
        return sandbox_execution_check(sandbox, _name(cfg))
    if cfg.sandbox_command:
        return ExecutionCheck(_name(cfg), _per_sample(command_check(list(cfg.sandbox_command),
                                                                    timeout_s=cfg.sandbox_timeout_s),
                                                      cfg.sandbox_workers))
    if cfg.sandbox_callable:
        return ExecutionCheck(_name(cfg), _per_sample(python_check(load_callable(cfg.sandbox_callable)), 1))
    return None


SAMPLES_PER_BATCH = 32  # samples a worker executes per call: a few seconds of checks, so a dead worker costs little


class CheckOnWorkers(Task):
    """The check as a task of core.executor: each worker opens its own (on Ray: a throwaway cluster per actor,
    or its own databases on the configured server) the first time it runs a batch, and closes it when the
    executor closes. A command or a callable must exist on every node, as the base model must."""

    key = "execution-check"

    def __init__(self, cfg):
        self.cfg = SimpleNamespace(**{k: getattr(cfg, k) for k in (
            "sandbox", "sandbox_command", "sandbox_callable", "sandbox_timeout_s", "sandbox_workers")})

    def load(self):
        return build_check(self.cfg)

    def run(self, check, samples):
        return check.run(samples)

    def unload(self, check) -> None:
        check.close()


def _on_executor(cfg, executor) -> ExecutionCheck:
    task = CheckOnWorkers(cfg)

    def batch(samples: list[dict]) -> list[Checked]:
        cuts = [samples[s:s + SAMPLES_PER_BATCH] for s in range(0, len(samples), SAMPLES_PER_BATCH)]
        return [c for part in executor.map(task, cuts, desc="executing candidates") for c in part]

    return ExecutionCheck(f"{_name(cfg)} {executor.where}, one per worker", batch)


@contextmanager
def open_check(cfg, executor=None):
    """cfg: CurateConfig. Yields an ExecutionCheck, or None when no check is configured; whatever it started
    (a throwaway cluster, its clones) is stopped and removed on the way out, whatever happened inside.
    executor: a Ray executor runs the checks on its workers, each with its own sandbox, freed when the
    executor closes; otherwise (None, local) they run here."""
    if _name(cfg) is None:
        yield None
        return
    if getattr(executor, "name", "local") == "ray":
        yield _on_executor(cfg, executor)
        return
    check = build_check(cfg)
    previous, terminated = _exit_on_sigterm(check)
    try:
        yield check
    except Exception:
        if terminated.is_set():  # what the server's shutdown under a hung statement broke: the stop asked for
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        try:
            check.close()
        except Exception:  # noqa: BLE001 - the server was stopped under a hung cleanup: exit as SIGTERM asked
            if not terminated.is_set():
                raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


STOP_SERVER_AFTER_S = 5.0  # after SIGTERM, how long the cleanup may take before the server is stopped under it


def _exit_on_sigterm(check: ExecutionCheck):
    """While a check is open, SIGTERM (the demo stopping its engine, a service manager) unwinds like Ctrl+C so the
    `finally` above stops the cluster and removes its folder; Python's default would die on the spot and leave a
    running PostgreSQL behind (seen when `demo` was stopped mid-curation). Only where the default handler is in
    place (a daemon's own handler stays) and only in the main thread, where signals are delivered.

    The unwinding can land inside psycopg, mid-statement (creating a clone), and the cleanup's next statement on
    that connection then waited forever (1 in 6 stops under load). So SIGTERM also starts a timer: if the cleanup
    has not finished after STOP_SERVER_AFTER_S, the local server is told to shut down, which ends every session,
    a hung one too, and the cleanup's remaining statements fail fast. Returns the handler to put back (None when
    nothing was changed) and the event SIGTERM sets."""
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None, terminated
    cluster = getattr(check.sandbox, "cluster", None)

    def shut_down() -> None:
        if cluster is not None and cluster.pid:
            try:
                os.kill(cluster.pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            except ProcessLookupError:
                pass

    def stop(signum, frame):
        terminated.set()
        timer = threading.Timer(STOP_SERVER_AFTER_S, shut_down)
        timer.daemon = True
        timer.start()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    return signal.SIG_DFL, terminated
