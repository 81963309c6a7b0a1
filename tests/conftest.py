"""Shared fixtures: a tiny real dataset cut from the demo data, a fast training config, real workspaces."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from http.server import BaseHTTPRequestHandler

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED = ROOT.parent / "shared"
LABELS = ["billing_question", "payment_processing_error", "shipping_delay", "account_access"]

sys.path.insert(0, str(ROOT))

from tests import engine_process  # noqa: E402

# Under xdist each worker gets its share of the cores for torch (and so do the engines, servers and CLIs it
# starts, which inherit the environment): two workers each running torch on every core are slower than one.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker a core and one more. About a sixth of a worker's time is spent waiting on the
    processes, servers, browser and fsyncs its tests start, and the extra worker fills it (measured on 2 cores,
    with worksteal: 688 s with 2 workers, 636 s with 3)."""
    return (os.cpu_count() or 1) + 1


# The longest tests after the soak (about 2 and 1.5 minutes): named so that each starts a worker's share.
# A name that no longer matches only puts that test among the other slow ones.
LONGEST = ("test_many_classes_planted_forgetting_rejected_then_the_rejection_teaches",
           "test_sign_in_roles_and_approval_in_the_browser")


def pytest_collection_modifyitems(config, items):
    """The slow tests first in every worker's share, the longest at its front. xdist's worksteal hands each
    worker a contiguous share of the collection up front (len(pending) // workers left, in turn) and a worker
    runs its share front to back: with the slow tests all first in the collection, one worker's share held the
    soak and the next longest while the others ran short tests and then waited on its tail."""
    def rank(item) -> int:  # the soak alone takes about a fifth of the suite: it starts first of all
        if item.get_closest_marker("soak"):
            return 0
        if item.name in LONGEST:
            return 1
        return 2 if item.get_closest_marker("slow") else 3

    items.sort(key=rank)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    # The Ray tests share a cluster a worker (a module fixture): all at the front of the last worker's share, so
    # one cluster starts, not one in every worker, and it is gone before the tail of the run.
    on_ray = [i for i in items if i.module.__name__.endswith("test_ray_executor")]
    slow = [i for i in items if rank(i) < 3 and i not in on_ray]
    fast = [i for i in items if rank(i) == 3 and i not in on_ray]
    order, left, taken = [], len(items), 0
    for w in range(workers):
        share = left // (workers - w)
        dealt = (on_ray if w == workers - 1 else []) + slow[w::workers]
        rest = max(share - len(dealt), 0)
        order += dealt + fast[taken:taken + rest]
        taken += rest
        left -= share
    items[:] = order + fast[taken:]


def _run_folder(tmp_path_factory) -> Path:
    """The temp folder of the whole run: under xdist the workers' folders sit side by side in it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build):
    """build(folder) -> a JSON value naming what it built in folder, run once for the whole run however many
    xdist workers need it (each used to train the same baselines: about 2 minutes of CPU a run): the first builds
    it under a file lock in the run's folder, the others wait. Each worker then takes a copy of its own, and the
    value with its paths pointing there: tests read some templates in place (a dashboard's sign-in writes), and a
    worker copying a folder another one writes to would catch its files half there."""
    from filelock import FileLock

    folder = _run_folder(tmp_path_factory) / "built-once" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        done = folder / "built.json"
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
            done.write_text(json.dumps(build(folder)))
    mine = tmp_path_factory.mktemp(f"{name}-template")
    shutil.copytree(folder, mine, dirs_exist_ok=True)  # nothing writes the built folder once it is done
    return json.loads((mine / "built.json").read_text().replace(json.dumps(str(folder))[1:-1],
                                                                 json.dumps(str(mine))[1:-1]))


@pytest.fixture(scope="session", autouse=True)
def _audit_keys(tmp_path_factory):
    """Every workspace's audit key goes under a temp folder for the run (subprocesses inherit it), never into the
    real home; one folder for every xdist worker, so a template one worker built verifies in another."""
    config = _run_folder(tmp_path_factory) / "config"
    config.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(config))
        mp.delenv("EVOLAB_AUDIT_KEY_FILE", raising=False)
        yield


def fast_config(autonomous: bool = True):
    """Small and fast. autonomous: every gate decides by its own checks (the recorded autonomous mode, as
    `init --policy auto` makes it); tests of human oversight set the policies they need."""
    from core.actions import make_autonomous
    from core.config import Config

    config = Config()
    if autonomous:
        make_autonomous(config)
    config.model.lora_r = 4
    config.model.lora_layers = 1
    config.model.max_length = 32
    config.train.epochs = 2
    config.train.batch_size = 16
    config.train.checkpoint_every = 2
    config.curate.min_confidence = 0.3
    config.curate.max_per_class = 10
    # Integrated gradients at 8 steps, not 16: a third of a tiny cycle's diagnosis, and the planted-word tests pass
    config.diagnose.attribution_steps = 8
    # The correct rows attributed for contrast: 4 of the tiny selection's rows, not 30 (most of a cycle's Captum time)
    config.diagnose.correct_attributions = 4
    # a traffic probe of 10 of the tiny pool's 40 rows, so every cycle in the tests estimates on traffic
    config.data.probe_min_pool, config.data.probe_fraction = 20, 0.25
    # A tiny gate set cannot show a gain at 90% and a 10-row probe's label-free gain is noise: the point estimate
    # decides, as the promotion tests need (tests/test_honest_gate.py tests the shipped confidence).
    config.gates.promotion_confidence = 0.5
    # Nobody labels traffic unless a test says so (tests/test_traffic_labels.py), so a gate opens at once.
    config.gates.traffic_labels_per_cycle = 0
    # Tiny data makes every retrain flip many predictions; drift tests set their own thresholds.
    config.drift.max_flip_rate, config.drift.max_kl, config.drift.max_ece_increase = 1.0, 100.0, 1.0
    return config


@pytest.fixture(scope="session")
def tiny_csvs(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tiny")
    labeled = pd.read_csv(DATA / "tickets_labeled.csv")
    held = pd.read_csv(DATA / "tickets_heldout.csv")
    pool = pd.read_csv(DATA / "tickets_unlabeled.csv")
    labeled = labeled[labeled["label"].isin(LABELS)].groupby("label").head(6)
    held = held[held["label"].isin(LABELS)].groupby("label").head(4)
    paths = {"labeled": out / "labeled.csv", "heldout": out / "heldout.csv", "unlabeled": out / "unlabeled.csv"}
    labeled.to_csv(paths["labeled"], index=False)
    held.to_csv(paths["heldout"], index=False)
    pool.head(40).to_csv(paths["unlabeled"], index=False)
    return paths


def make_workspace(root: Path, csvs: dict[str, Path], config=None):
    from core.setup import init_workspace

    return init_workspace(root, csvs["labeled"], csvs["unlabeled"], csvs["heldout"], config=config or fast_config())


@pytest.fixture
def workspace(tmp_path, tiny_csvs):
    return make_workspace(tmp_path / "ws", tiny_csvs)


@pytest.fixture(scope="session")
def _baseline_template(tmp_path_factory, tiny_csvs):
    """A workspace whose baseline is trained and promoted, built once and copied per test."""
    def build(folder: Path) -> str:
        from core import cycle

        ws = make_workspace(folder / "ws", tiny_csvs)
        assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"
        return str(ws.root)
    return Path(built_once(tmp_path_factory, "baseline", build))


def curate_only(ws) -> int:
    """Start an evolution cycle and run it to the end of its curate stage; its id."""
    from core import cycle

    cid = cycle.start_cycle(ws)
    outcome = cycle.run_cycle(ws, cid, progress=False,
                              stop=lambda: ws.store.cycle(cid)["stage"] not in ("diagnose", "curate"))
    assert outcome.status == "stopped", outcome.message
    return cid


def copy_workspace(template: Path, target: Path):
    from core.workspace import open_workspace

    shutil.copytree(template, target)
    return open_workspace(target)


@pytest.fixture
def baseline_ws(tmp_path, _baseline_template):
    return copy_workspace(_baseline_template, tmp_path / "ws")


@pytest.fixture(scope="session")
def _scaffold_template(tmp_path_factory, tiny_csvs):
    """A trained baseline whose held-out set gives 12 of its 16 rows to selection (3 a class): a scaffold trial
    reads the selection rows alone, and a planted paired test needs more than the usual 4."""
    def build(folder: Path) -> str:
        from core import cycle

        config = fast_config()
        config.data.selection_fraction = 0.75
        ws = make_workspace(folder / "ws", tiny_csvs, config)
        assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"
        return str(ws.root)
    return Path(built_once(tmp_path_factory, "scaffold", build))


@pytest.fixture
def scaffold_ws(tmp_path, _scaffold_template):
    return copy_workspace(_scaffold_template, tmp_path / "ws")


@pytest.fixture(scope="session")
def _weak_baseline_template(tmp_path_factory, tiny_csvs):
    """A workspace whose baseline read only the first 8 tokens of each text, with the fast config back for later
    cycles: a candidate that reads whole texts truly beats it (measured: 7 of 12 gate rows against 11), so tests
    reach promotion through the real checks; on the good baseline the tiny data's candidate only ties."""
    def build(folder: Path) -> str:
        from core import cycle

        config = fast_config()
        config.model.max_length = 8
        ws = make_workspace(folder / "ws", tiny_csvs, config)
        assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"
        ws.save_config(fast_config())
        return str(ws.root)
    return Path(built_once(tmp_path_factory, "weak", build))


@pytest.fixture
def weak_baseline_ws(tmp_path, _weak_baseline_template):
    return copy_workspace(_weak_baseline_template, tmp_path / "ws")


# Commands that load the engine (torch and the rest) run forked from a process that imported it once
# (tests/engine_process.py); the others start a fresh Python, as a user's shell does.
ENGINE_COMMANDS = {"evolve", "resume", "predict", "scaffolds", "serve"}


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, check: bool = False):
    """The real CLI in its own process, as a user runs it."""
    if args[0] in ENGINE_COMMANDS:
        result = engine_process.run(*args, env=env, timeout=timeout)
    else:
        result = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                                capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"CLI {args} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


APPROVER, PASSWORD = "alice", "alice-secret"
VIEWER, VIEWER_PASSWORD = "vera", "vera-secret"


def approve_as(ws, gate_id: int, name: str = APPROVER, password: str = PASSWORD, comment: str = "",
               approved: bool = True) -> dict:
    """A person's decision the way every caller makes it: checked credentials, then core.actions."""
    from core import actions, auth

    return actions.decide_gate(ws, auth.authenticate(ws.store, name, password, f"gate:{gate_id}"), gate_id,
                               approved, comment)


@pytest.fixture(scope="session")
def _pending_template(tmp_path_factory, _weak_baseline_template):
    """the weak baseline v1 in production, an approver and a viewer, and cycle 2 waiting at its promotion gate
    with candidate v2, whose checks passed.
    Shared: tests that change it work on a copy."""
    def build(folder: Path) -> list:
        from core import auth, cycle

        ws = copy_workspace(_weak_baseline_template, folder / "ws")
        config = ws.config()
        config.gates.max_recall_drop = 1.0  # the forgetting guard is not what these tests are about
        config.gates.promotion.policy = "human"
        config.train.epochs = 1  # the curves only need to exist
        ws.save_config(config)
        auth.add_user(ws.store, APPROVER, "approver", PASSWORD)
        auth.add_user(ws.store, VIEWER, "viewer", VIEWER_PASSWORD)
        outcome = cycle.evolve(ws, cycles=1, progress=False)[-1]
        assert outcome.status == "waiting"
        return [str(ws.root), outcome.gate_id]
    root, gate_id = built_once(tmp_path_factory, "pending", build)
    return Path(root), gate_id


@pytest.fixture
def pending_ws(tmp_path, _pending_template):
    """A private copy of the pending-gate workspace, for tests that change it: (workspace, gate id)."""
    from core.workspace import open_workspace

    root, gate_id = _pending_template
    shutil.copytree(root, tmp_path / "pending_ws")
    return open_workspace(tmp_path / "pending_ws"), gate_id


class ChatHandler(BaseHTTPRequestHandler):
    """A local server speaking OpenAI chat completions; subclasses say what to answer (`reply(body)`)."""
    requests: list = []

    def reply(self, body: dict) -> str:
        raise NotImplementedError

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, self.headers.get("Authorization"), body))
        payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": self.reply(body)}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


# -- the execution sandbox: one real throwaway PostgreSQL cluster per session --------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names the cluster's folder (the postmaster and its children)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(root).encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def start_sandbox(**kw):
    from core.sandbox.postgres import PostgresMissing, PostgresSandbox

    try:
        return PostgresSandbox.local(**kw)
    except PostgresMissing as e:
        pytest.fail(f"{e}. The sandbox tests need a real PostgreSQL; CI installs it (.ci/run).")


@pytest.fixture(scope="session")
def pg():
    """One throwaway PostgreSQL cluster for the whole session (test_sandbox.py, test_sql_skill.py), stopped at
    the end; nothing of it may be left behind."""
    sandbox = start_sandbox(workers=2, statement_timeout_ms=1000)
    root, pid = sandbox.cluster.root, sandbox.cluster.pid
    yield sandbox
    sandbox.close()
    assert not root.exists(), "the cluster's folder is left behind"
    assert not _alive(pid) and not _processes_under(root), "the cluster's processes are left behind"
