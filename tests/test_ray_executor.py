"""engine.executor = "ray" against a real Ray started here on 127.0.0.1: the same pool encodings, teacher view,
kept samples, sandbox verdicts and predictions as local; a worker killed mid-batch changes nothing; an unreachable
cluster is one line and exit 1 before anything runs."""
from __future__ import annotations

import os
import re
import signal
import socket
import sys

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -r requirements-scale.txt")

from conftest import ROOT, copy_workspace, curate_only, run_cli  # noqa: E402

from core import executor  # noqa: E402
from core.sandbox import check as sandbox_check  # noqa: E402
from core.config import BUNDLED_MODEL  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    # Two CPUs at most: the machine has two cores and the rest of the suite shares them.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1", runtime_env={"py_modules": [str(ROOT / "core")]})
    # KillOnce lives in this test module, which the workers cannot import: send it by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(executor, "BATCH_TEXTS", 8)  # the tiny pool's 40 texts become 5 batches


def test_pool_and_teacher_view_encode_the_same_on_ray(ray_cluster, small_batches, baseline_ws):
    from core import registry
    from core.curate import views

    texts = baseline_ws.store.unlabeled_pool()["text"].tolist()
    loaded = registry.load_alias(baseline_ws, "production")
    local = executor.model_encoder(executor.LocalExecutor(), baseline_ws, loaded)(texts)
    with executor.RayExecutor("", workers=2) as ex:
        remote = executor.model_encoder(ex, baseline_ws, loaded)(texts)
        view = views.for_config(BUNDLED_MODEL, baseline_ws.root / "ray", ex).embed(texts)
    here = views.for_config(BUNDLED_MODEL, baseline_ws.root / "here").embed(texts)
    # bfloat16 where the CPU computes it (model.precision "auto", the teacher view): one torch thread on an actor
    # against two here sums in another order, which bfloat16 shows in the third decimal.
    np.testing.assert_allclose(remote[0], local[0], atol=3e-3)
    np.testing.assert_allclose(remote[1], local[1], atol=3e-3)
    assert (remote[1].argmax(1) == local[1].argmax(1)).all()
    np.testing.assert_allclose(view, here, atol=3e-3)


def _curate(ws, executor_name: str, teacher: bool = True) -> pd.DataFrame:
    """Run a cycle up to the end of its curate stage; the samples it wrote. teacher: with a teacher view."""
    config = ws.config()
    config.engine.executor = executor_name
    if teacher:
        config.curate.teacher_encoder = BUNDLED_MODEL  # the teacher view's encoding runs on the executor too
        config.curate.pseudo_labels = "verify"  # every self-label is verified: the perturbed views run there too
    ws.save_config(config)
    samples = ws.store.samples(curate_only(ws))
    return samples[["generator", "text", "label", "status", "reason"]].sort_values(["generator", "text"]) \
        .reset_index(drop=True)


class KillOnce(executor.Task):
    """Doubles numbers; the first worker to reach the marker's batch kills its own process mid-task."""
    key = "kill-once"

    def __init__(self, marker: str):
        self.marker = marker

    def run(self, held, batch):
        if batch[0] == 16 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return np.asarray(batch) * 2


def test_a_killed_worker_changes_nothing(ray_cluster, tmp_path):
    marker = tmp_path / "killed"
    batches = [list(range(i, i + 8)) for i in range(0, 48, 8)]
    with executor.RayExecutor("", workers=2) as ex:
        remote = ex.map(KillOnce(str(marker)), batches)
    assert marker.exists()  # a worker did die mid-batch
    local = executor.LocalExecutor().map(KillOnce(str(marker)), batches)
    assert [r.tolist() for r in remote] == [r.tolist() for r in local]  # every batch once, in order


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket closes


def test_unreachable_cluster_is_one_line_before_anything_runs(baseline_ws, tmp_path):
    config = baseline_ws.config()
    config.engine.executor, config.engine.ray_address = "ray", f"127.0.0.1:{_closed_port()}"
    baseline_ws.save_config(config)
    cycles_before = len(baseline_ws.store.cycles())
    csv = tmp_path / "in.csv"
    pd.DataFrame({"text": ["where is my card"]}).to_csv(csv, index=False)
    for args in (["evolve", "--workspace", str(baseline_ws.root)],
                 ["predict", "--workspace", str(baseline_ws.root), "--input", str(csv),
                  "--output", str(tmp_path / "out.csv")]):
        result = run_cli(*args, timeout=120)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach a Ray cluster" in lines[0], result.stderr
    assert len(baseline_ws.store.cycles()) == cycles_before  # refused before a cycle started
    assert not (tmp_path / "out.csv").exists()


def test_predict_gives_the_same_file_on_ray(ray_cluster, baseline_ws, tmp_path):
    """`predict` through the CLI joining the running cluster by its address, against local."""
    texts = baseline_ws.store.unlabeled_pool()["text"].tolist()
    csv = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(csv, index=False)
    run_cli("predict", "--workspace", str(baseline_ws.root), "--input", str(csv), "--output",
            str(tmp_path / "local.csv"), check=True)
    config = baseline_ws.config()
    config.engine.executor, config.engine.ray_address, config.engine.ray_workers = "ray", ray_cluster, 1
    baseline_ws.save_config(config)
    run_cli("predict", "--workspace", str(baseline_ws.root), "--input", str(csv), "--output",
            str(tmp_path / "ray.csv"), check=True, timeout=300)
    local, remote = pd.read_csv(tmp_path / "local.csv"), pd.read_csv(tmp_path / "ray.csv")
    assert remote["prediction"].tolist() == local["prediction"].tolist()
    np.testing.assert_allclose(remote["confidence"], local["confidence"], atol=3e-3)


def test_a_driver_killed_mid_curation_resumes_like_local(ray_cluster, small_batches, baseline_ws, tmp_path,
                                                        _baseline_template):
    """`evolve` on the cluster, its engine (Ray's driver) SIGKILLed while curation runs there: the cycle waits at
    its stage like a killed local engine's, and `resume` on the cluster keeps the same samples as a local run. (The
    resumed run curates on the cluster from the start, since the killed one wrote nothing: this is also the test
    that curation keeps the same samples on Ray.)"""
    import time

    from core import cycle
    from tests.engine_process import EngineProcess

    local = _curate(copy_workspace(_baseline_template, tmp_path / "local-ws"), "local")
    assert (local["status"] == "kept").any()
    config = baseline_ws.config()
    config.engine.executor, config.engine.ray_address = "ray", ray_cluster
    config.curate.teacher_encoder, config.curate.pseudo_labels = BUNDLED_MODEL, "verify"  # as _curate sets them
    baseline_ws.save_config(config)
    store = baseline_ws.store
    proc = EngineProcess("evolve", "--workspace", str(baseline_ws.root), "--quiet")
    deadline = time.monotonic() + 300
    while (store.open_cycle() or {}).get("stage") != "curate":
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the engine never reached curation"
        time.sleep(0.1)
    time.sleep(1.0)  # inside curation: the pool and the teacher view are being encoded on the cluster
    proc.kill()
    proc.wait(60)
    cid = int(store.open_cycle()["id"])
    assert store.cycle(cid)["stage"] == "curate" and store.samples(cid).empty  # killed before it wrote anything
    outcome = cycle.run_cycle(baseline_ws, cid, progress=False,
                              stop=lambda: store.cycle(cid)["stage"] not in ("diagnose", "curate"))
    assert outcome.status == "stopped", outcome.message
    resumed = store.samples(cid)[["generator", "text", "label", "status", "reason"]] \
        .sort_values(["generator", "text"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed, local)


def _migrations() -> list[dict]:
    """The SQL skill's seed migrations, a third of them claiming a label their execution contradicts."""
    from conftest import DATA
    from core.sandbox import LABELS

    seed = pd.read_csv(DATA / "sql_migrations_seed.csv")
    return [{"text": t, "label": lab if i % 3 else LABELS[(LABELS.index(lab) + 1) % len(LABELS)],
             "generator": "sql_migrations"} for i, (t, lab) in enumerate(zip(seed["text"], seed["label"]))]


class KillOnceChecking(sandbox_check.CheckOnWorkers):
    """The sandbox's worker task, except that the first worker to reach the sample at index 17 kills its own
    process there, holding its cluster, in the middle of a batch."""
    marker = ""  # set by the test; the class travels by value, with it

    def run(self, check, samples):
        if any(s.get("index") == 17 for s in samples) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(check, samples)


def _orphans() -> list:
    """Cluster folders whose owner process is gone (what a killed worker would leave behind)."""
    from core.sandbox.cluster import _pid_alive, private_parent

    return [d for d in private_parent().glob("cluster-*")
            if not (d / "owner.pid").exists() or not _pid_alive(int((d / "owner.pid").read_text()))]


def test_sandbox_checks_give_the_same_verdicts_on_ray_even_when_a_worker_dies(ray_cluster, tmp_path, monkeypatch):
    """curate.sandbox = "local" on two actors, a throwaway PostgreSQL cluster each, one actor SIGKILLed in the
    middle of a batch: every sample gets the verdict the engine's own sandbox gives it, once, in order, and no
    cluster is left behind."""
    from core.config import CurateConfig
    from core.sandbox import check

    samples = [dict(s, index=i) for i, s in enumerate(_migrations())]
    cfg = CurateConfig(sandbox="local", sandbox_workers=2)
    with check.open_check(cfg) as here:
        local = here.run(samples)
    monkeypatch.setattr(check, "SAMPLES_PER_BATCH", 8)
    monkeypatch.setattr(KillOnceChecking, "marker", str(tmp_path / "killed"))
    monkeypatch.setattr(check, "CheckOnWorkers", KillOnceChecking)
    with executor.RayExecutor("", workers=2) as ex, check.open_check(cfg, ex) as there:
        assert there.name == "postgres (throwaway local cluster) on Ray (2 workers), one per worker"
        remote = there.run(samples)
    assert (tmp_path / "killed").exists()  # a worker did die holding its cluster
    assert [(c.verdict.keep, c.category, c.label) for c in remote] == \
        [(c.verdict.keep, c.category, c.label) for c in local]
    assert sum(c.verdict.keep for c in local) not in (0, len(local))  # execution kept some claims and refuted some
    assert not _orphans()


def test_a_sql_cycle_keeps_the_same_samples_and_sandbox_verdicts_on_ray(ray_cluster, tmp_path, monkeypatch):
    """The SQL-migration preset's workspace (its grammar and its PostgreSQL sandbox), one evolution cycle to the
    end of curation with each executor: the same samples, labels, statuses and execution verdicts; each run
    noted its progress for the Overview where its work ran."""
    import contextlib
    import io
    import json
    import shutil

    from conftest import fast_config
    from core import cycle, presets
    from core.cli import main
    from core.workspace import open_workspace

    root = tmp_path / "sql"
    # A smaller pool and grammar share: each run executes about 400 migrations, not 800 (each pool row's
    # self-label is executed too; the diagnosis' asks add to the 12 a class); the same comparison, at about half
    # the time.
    monkeypatch.setattr(presets, "POOL_SIZE", 60)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["init", "--workspace", str(root), "--preset", "sql-migrations", "--policy", "auto"]) == 0
    ws = open_workspace(root)
    config, fast = ws.config(), fast_config()
    config.model, config.train, config.diagnose = fast.model, fast.train, fast.diagnose  # sizes do not matter here
    config.data.probe_min_pool = 10 ** 6  # no traffic probe: not what this test is about
    config.curate.sql_migrations_per_class = config.curate.sql_migrations_per_pair = 12
    ws.save_config(config)
    assert cycle.run_cycle(ws, cycle.start_cycle(ws), progress=False).status == "done"
    template = tmp_path / "template"
    shutil.copytree(root, template)
    monkeypatch.setattr(executor, "NOTE_EVERY_S", 0.0)  # a note after every batch
    local_ws = copy_workspace(template, tmp_path / "local-ws")
    # the preset's own curation settings (no teacher view: the driver-killed test has it on Ray)
    local = _curate(local_ws, "local", teacher=False)
    ray_ws = copy_workspace(template, tmp_path / "ray-ws")
    remote = _curate(ray_ws, "ray", teacher=False)
    for ws, where in ((local_ws, "here"), (ray_ws, r"on Ray \(2 workers\)")):
        row = ws.store.cycles().iloc[-1]
        assert row["progress_stage"] == "curate" and re.fullmatch(rf".+ {where}: ([\d,]+) of \1", row["progress"]), \
            row["progress"]
    runs = ray_ws.store.stage_runs()
    report = json.loads(runs.loc[runs["stage"] == "curate", "detail"].iloc[-1])
    assert report["sandbox"]["check"] == "postgres (throwaway local cluster) on Ray (2 workers), one per worker"
    executed = local["reason"].str.startswith("sandbox: ")
    assert executed.sum() >= 10 and local.loc[executed, "status"].nunique() == 2, local["reason"].head(20).tolist()
    pd.testing.assert_frame_equal(remote, local)
