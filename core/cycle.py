"""The evolution cycle as a persisted state machine, its stages declared once in `FLOWS`.

A cycle's stage lives in the store, and every stage writes its output and the next stage (taken from
`FLOWS`) in one transaction, so a process killed at any moment resumes from the stage it was in without
losing or duplicating anything. A stage that raises, or whose process dies, `engine.max_stage_tries` times
in a row ends its cycle as `failed`; an approver can `abandon` an open cycle. The first cycle of a workspace
is a baseline: it trains on the labeled seed and skips diagnosis and curation.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from typing import Callable

import pandas as pd

from core import (atomic, checksums, curate, diagnose, drift, executor, gates, lessons, model as M, registry, stats,
                  traffic)
from core.curate import ask, difficulty, replay, views
from core.diagnose import evidence
from core.sandbox import check
from core.scaffolds import stages as scaffold_stages
from core.evaluate import evaluate_parts, probe_predictions
from core.faults import crash_point
from core.flow import Outcome, Stage, gate_stage
from core.store import END_STATUSES, HELDOUT_PARTS, utcnow
from core.train import TrainSpec, train
from core.workspace import Workspace, engine_lock, require_accepted_config

ENGINE = "engine"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def heldout_parts(store) -> dict:
    return {part: store.heldout(part) for part in HELDOUT_PARTS}


def evaluate_version(ws: Workspace, version: str, progress: bool = False, cycle_id: int | None = None,
                     next_stage: str | None = None) -> dict:
    """Score the version on both parts of the held-out set and predict the traffic probe, stored together;
    then every version's estimate on traffic is brought up to date (core/traffic.py). Returns {part:
    (results, accuracy, per_class)} and "traffic": this version's estimate or None."""
    store = ws.store
    with store.kept_open():
        parts, probe_rows = heldout_parts(store), store.traffic_probe()
    loaded = registry.load(ws, version)
    scored = evaluate_parts(loaded, parts, progress)
    probe = probe_predictions(loaded, probe_rows, progress)
    store.save_evaluation(version, scored, cycle_id=cycle_id, next_stage=next_stage, probe=probe)
    return {**scored, "traffic": traffic.refresh(store).get(version)}


def ensure_evaluated(ws: Workspace, version: str, progress: bool = False) -> None:
    """The version's results on both parts of the held-out set and on the probe, computed once and stored."""
    store = ws.store
    with store.kept_open():
        if all(store.evaluation(version, part) is not None for part in HELDOUT_PARTS) and \
                (store.traffic_probe().empty or not store.probe_predictions(version).empty):
            return
    evaluate_version(ws, version, progress)


def rejection_findings(store, version: str, before_cycle: int | None) -> list[dict]:
    """What the gates that rejected earlier candidates of this production version said (core.lessons)."""
    cycles = store.cycles()
    rejected = cycles[(cycles["status"] == "rejected") & (cycles["parent_version"] == version)
                      & (cycles["kind"] == "evolve")]
    if before_cycle:
        rejected = rejected[rejected["id"] < before_cycle]
    return [f for cid in rejected["id"] for f in cycle_rejection(store, int(cid))]


def cycle_rejection(store, cycle_id: int) -> list[dict]:
    """The findings one cycle's rejected gates teach (none when no gate of it rejected)."""
    found: list[dict] = []
    for kind in ("data_review", "drift_review", "promotion"):
        gate = store.gate_for(cycle_id, kind)
        if gate is not None and gate["status"] == "rejected":
            report = (store.drift_report(cycle_id) or {}).get("report") if kind == "drift_review" else None
            selection = selection_results(store, cycle_id) if kind == "promotion" else None
            found += lessons.from_rejection(cycle_id, gate, report, selection)
    return found


def selection_results(store, cycle_id: int) -> pd.DataFrame | None:
    """The cycle's candidate and production side by side on the selection rows, where a promotion rejection's
    lesson is read (never on the gate rows that will grade the next candidate); None where either is unscored."""
    cycle = store.cycle(cycle_id)
    if not cycle["candidate_version"] or not cycle["parent_version"]:
        return None
    candidate = store.eval_results(cycle["candidate_version"], "selection")
    production = store.eval_results(cycle["parent_version"], "selection")
    if candidate.empty or production.empty:
        return None
    return gates.paired_results(candidate, production, "selection")


# -- stages ----------------------------------------------------------------------------------------
def run_diagnosis(ws: Workspace, cycle_id: int, version: str, next_stage: str | None,
                  progress: bool = False) -> dict:
    """Diagnose a version on the held-out set and store it under cycle_id (0: an on-demand diagnosis)."""
    store, cfg = ws.store, ws.config()
    ensure_evaluated(ws, version, progress)
    with store.kept_open():
        _, previous = store.latest_diagnosis(before_cycle=cycle_id if cycle_id else None)
        # The selection part only: the gate part stays untouched for the gates.
        selection, feedback = store.eval_results(version, "selection"), store.production_feedback(version)
        rejections = rejection_findings(store, version, cycle_id or None)
    loaded = registry.load(ws, version)
    more = evidence.gather(store, loaded, cfg, cycle_id)  # label answers and traffic: no gate row
    found = diagnose.diagnose(loaded, selection, cfg.diagnose, cfg.model.lora_layers, diagnose.finding_keys(previous),
                              feedback=feedback, rejections=rejections, evidence=more)
    store.save_diagnosis(cycle_id, found["findings"], next_stage, found["attributions"], found["internals"], version)
    return found


def stage_diagnose(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> None:
    found = run_diagnosis(ws, cycle["id"], cycle["parent_version"], step.next, ctx["progress"])
    top = found["findings"].head(1)
    if len(top):
        _say(ctx["progress"], f"  diagnose: {len(found['findings'])} findings; top: {top['subject'].iloc[0]} "
                              f"({top['action'].iloc[0]})")


def stage_curate(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> None:
    store, cfg = ws.store, ws.config()
    with store.kept_open():
        findings, corrections = store.diagnoses(cycle["id"]), store.production_feedback()
        seed = store.seed_examples(before_cycle=cycle["id"])  # people's answers to label requests count as seed
        pool, protected, selection = store.unlabeled_pool(), _protected(store), store.heldout("selection")
    acts = set(cfg.diagnose.acts)
    steering = findings if "asks" in acts else findings.iloc[:0]  # a rejection's lesson binds either way (remedy)
    pairs = [(json.loads(d)["true"], json.loads(d)["predicted"], int(sev))
             for kind, d, sev in zip(steering.get("kind", []), steering.get("detail", []), steering.get("severity", []))
             if kind in diagnose.PAIR_KINDS and json.loads(d).get("trend") != "fixed"]
    # A person's correction or answer, not a teacher, labels these.
    pool = pool[~pool["text"].isin(corrections["text"]) & ~pool["text"].isin(seed["text"])]
    loaded = registry.load(ws, cycle["parent_version"])
    # The pool's and the teacher view's encoding and the perturbed views run on engine.executor (Ray's actors are
    # freed when the stage ends); what they return is written below, by this process alone.
    with executor.open_executor(cfg.engine) as ex:
        ex.notes = lambda text: store.note_progress(cycle["id"], cycle["stage"], text)  # the Overview's stage line
        context = curate.Context(loaded=loaded, seed=seed[["id", "text", "label"]],
                                 pool=pool, pairs=pairs,
                                 favoured=diagnose.target_labels(steering), cfg=cfg.curate, root=ws.root,
                                 asks=diagnose.asks(steering, cfg.diagnose.samples_per_error),
                                 leaned_on=diagnose.leaned_on(findings) if "attributions" in acts else {},
                                 clusters=diagnose.cluster_texts(findings, selection) if "clusters" in acts else [],
                                 seed_value=cycle["id"], remedy=lessons.remedy(findings), feedback=corrections,
                                 view=views.for_config(cfg.curate.teacher_encoder, ws.root, ex),
                                 encoder=executor.model_encoder(ex, ws, loaded))
        with store.kept_open():
            if cfg.curate.difficulty_control:  # off: every class keeps the configured mix
                context.mixes, context.memo["mixes_moved"] = difficulty.next_mixes(store, cycle["id"],
                                                                                   context.requested_mix)
        # The execution check (curate.sandbox*) is opened once for the stage and closed, its cluster and clones
        # removed, however the stage ends.
        with check.open_check(cfg.curate, ex) as context.check:
            if context.check is not None:
                _say(ctx["progress"], f"  curate: every candidate is executed by {context.check.name}")
            samples, report = curate.curate(context, protected, store.reviewed_samples(cycle["id"]),
                                            ctx["progress"])
        requests = None
        if cfg.curate.ask_humans_per_cycle:
            # Never ask again about a text already asked (in another cycle, or answered), nor about a protected text.
            asked = store.label_requests()
            asked = asked[(asked["cycle_id"] != cycle["id"]) | (asked["status"] != "pending")]
            requests = ask.choose(context, cfg.curate.ask_humans_per_cycle,
                                  set(asked["text"]) | set(protected["text"]))
            report["label_requests"] = len(requests)
    store.save_samples(cycle["id"], samples, step.next, requests)
    ctx["stage_detail"] = report
    _say(ctx["progress"], f"  curate: {report['summary']} ("
                          + ", ".join(f"{g} {v['generated']:,}/{v['kept']:,}" for g, v in
                                      report["per_generator"].items()) + ")"
                          + (f"; {len(requests)} texts asked of people" if requests is not None else ""))


def _training_data(ws: Workspace, cycle: dict) -> pd.DataFrame:
    store = ws.store
    with store.kept_open():
        # The seed, with people's answers to label requests made before this cycle began (source `human_label`).
        seed = store.seed_examples(before_cycle=cycle["id"])[["text", "label", "source"]]
        if cycle["kind"] == "baseline":
            return seed
        remedy = lessons.remedy(store.diagnoses(cycle["id"]))
        samples = store.samples(cycle["id"])
    # Human approvals and relabels count as kept; a human rejection is never trained on. People's
    # corrections from production arrive as `feedback` samples, verified and reviewed like the rest.
    kept = samples[samples["status"].isin(["kept", "approved"])]
    kept = _with_provenance(kept, kept["generator"].where(kept["generator"] == "feedback", "synthetic"),
                            _label_weights(kept, ws.config().train.pseudo_label_weight))
    # A class a rejected candidate forgot has its seed replayed more, so the next one holds on to it.
    extra = [seed[seed["label"].isin(remedy.upweight)]] * (lessons.SEED_REPLAY - 1) if remedy.upweight else []
    earlier = _replayed(ws, cycle, [*seed["text"], *kept["text"]], remedy) if ws.config().train.accumulate else None
    data = pd.concat([seed, *extra, kept, earlier], ignore_index=True)  # the seed is replayed in every retraining
    return data.assign(weight=data["weight"].fillna(1.0), sample_id=data["sample_id"].astype("Int64"),
                       source_cycle=data["source_cycle"].astype("Int64"))


def _protected(store) -> pd.DataFrame:
    """Held-out and traffic-probe texts: a sample that copies one would train on what grades or estimates it."""
    return curate.filters.protected(store.examples("heldout"), store.traffic_probe())


def _with_provenance(samples: pd.DataFrame, source, weight) -> pd.DataFrame:
    """Training rows from samples, each saying where it came from: sample id, the cycle that kept it, generator."""
    return pd.DataFrame({"text": samples["text"], "label": samples["label"], "source": source, "weight": weight,
                         "sample_id": samples["id"], "source_cycle": samples["cycle_id"],
                         "generator": samples["generator"]})


def _replayed(ws: Workspace, cycle: dict, known_texts: list[str], remedy: lessons.Remedy) -> pd.DataFrame:
    """What earlier cycles kept and people did not reject (core/curate/replay.py), source `replayed`, each row
    weighing `train.accumulated_weight` times its own label weight. The trainer takes per-row weights, so the
    weight is applied in the loss, not by sampling rows."""
    store, cfg = ws.store, ws.config()
    earlier = store.replayable_samples(cycle["id"])
    # A rejection's lesson binds replay as it binds curation: a generator it sits out replays nothing, a label it
    # holds back (every label, when strict) replays only what a person approved, and its cap factor shrinks the cap.
    held = earlier["label"].isin(remedy.hold_back) | remedy.strict
    earlier = earlier[~earlier["generator"].isin(remedy.skip_generators) & (~held | earlier["status"].eq("approved"))]
    protected = _protected(store)
    rows = replay.select(earlier, known_texts, protected, int(cfg.train.accumulated_per_class * remedy.cap_factor),
                         cfg.curate.contamination_similarity)
    return _with_provenance(rows, "replayed",
                            _label_weights(rows, cfg.train.pseudo_label_weight) * cfg.train.accumulated_weight)


def replay_summary(data: pd.DataFrame) -> dict:
    """What a training set replayed from earlier cycles: rows, per source cycle and generator, and the sample ids."""
    earlier = data[data["source"] == "replayed"] if "source_cycle" in data else data.iloc[:0]
    if earlier.empty:
        return {"rows": 0, "by_cycle": {}, "by_generator": {}, "sample_ids": []}
    return {"rows": int(len(earlier)),
            "by_cycle": {str(c): int(n) for c, n in earlier["source_cycle"].value_counts().sort_index().items()},
            "by_generator": {str(g): int(n) for g, n in earlier["generator"].value_counts().items()},
            "sample_ids": [int(i) for i in earlier["sample_id"]]}


def _label_weights(kept: pd.DataFrame, scheme: str) -> pd.Series:
    """Each kept sample's weight in the loss: its labeling teacher's confidence where one labeled it (a
    pseudo-label), 1 for everything else (people's labels, generators that write the label they mean)."""
    if scheme == "none" or kept.empty:
        return pd.Series(1.0, index=kept.index)
    scores = kept["scores"].map(lambda raw: json.loads(raw or "{}"))
    teacher = scores.map(lambda s: s.get("teacher", 1.0))
    # A pseudo-label that execution confirmed is no longer the teacher's guess: it counts in full.
    executed = scores.map(lambda s: bool((s.get("sandbox") or {}).get("keep")))
    human = kept["status"].eq("approved") | kept["generator"].eq("feedback") | executed
    return teacher.where(~human, 1.0).clip(0.0, 1.0).astype(float)


def _model_config_for(ws: Workspace, cycle: dict) -> tuple[dict, str]:
    """The model settings for this cycle's training: the diagnosis may pick which layers get LoRA (its activation
    analysis, or head importance where nothing separates; core.diagnose), and its reason goes to the lineage."""
    config = ws.config()
    cfg = config.model.model_dump()
    if cycle["kind"] == "baseline" or cfg["lora_layer_ids"] or "layers" not in config.diagnose.acts:
        return cfg, "configured"
    internals = ws.store.diagnosis_internals(cycle["id"])
    choice = internals.get("lora_choice") or internals.get("heads")  # heads: diagnoses stored before lora_choice
    if choice and choice.get("lora_layers"):
        cfg["lora_layer_ids"] = choice["lora_layers"]
        return cfg, choice["reason"]
    return cfg, "configured"


def _set_aside(ws: Workspace, cycle_id: int, folder) -> None:
    """A model folder no version owns (a run killed between writing and registering it, or a stale copy)
    is moved beside the cycle's checkpoints, never deleted: versions' folders are written once."""
    if ws.store.version(folder.name) is not None:
        raise RuntimeError(f"{folder} belongs to registered version {folder.name}; it is never overwritten")
    dest = ws.checkpoints / f"cycle_{cycle_id}" / f"unregistered-{folder.name}-{utcnow():%Y%m%dT%H%M%S%f}"
    folder.rename(dest)
    ws.store.audit(ENGINE, "model_folder_set_aside", f"cycle:{cycle_id}", {"folder": folder.name, "to": str(dest)})


def stage_train(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> None:
    store, cfg = ws.store, ws.config()
    run_dir = ws.checkpoints / f"cycle_{cycle['id']}"
    run_dir.mkdir(parents=True, exist_ok=True)
    num = store.next_version_num()
    version = f"v{num}"
    out = ws.models / version
    result_file = run_dir / "checkpoints" / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    if not (result and out.exists() and checksums.manifest(out) == result.get("files")):
        if out.exists():
            _set_aside(ws, cycle["id"], out)
        data = _training_data(ws, cycle)
        model_cfg, lora_reason = _model_config_for(ws, cycle)
        atomic.write_with(run_dir / "train.parquet", data.to_parquet)
        # Checkpoint choice and early stopping see the selection part only; the gate part stays untouched.
        atomic.write_with(run_dir / "eval.parquet", store.heldout("selection")[["text", "label"]].to_parquet)
        spec = TrainSpec(run_id=f"cycle_{cycle['id']}", labels=store.labels(), model=model_cfg,
                         train=cfg.train.model_dump(), train_file=str(run_dir / "train.parquet"),
                         eval_file=str(run_dir / "eval.parquet"), checkpoint_dir=str(run_dir / "checkpoints"),
                         output_dir=str(out), db=str(ws.db), extra={"doctor": cfg.doctor.model_dump(),
                                                                    "lora_reason": lora_reason})
        spec.save(run_dir / "spec.json")
        earlier = replay_summary(data)["by_cycle"]
        replayed = f", {sum(earlier.values()):,} samples kept in cycles {', '.join(earlier)}" if earlier else ""
        _say(ctx["progress"], f"  train: {len(data):,} rows ({int(data['source'].isin(['seed', 'human_label']).sum()):,}"
                              f" seed{replayed} replayed) -> {version}")
        if cfg.train.num_processes > 1:
            # --multi_gpu starts one process per worker; without CUDA they form a gloo group on the CPU.
            subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines",
                            "1", "--num_processes", str(cfg.train.num_processes), "--mixed_precision", "no",
                            "--dynamo_backend", "no", "-m", "core.train", str(run_dir / "spec.json")], check=True)
        else:
            train(spec, progress=ctx["progress"])
        result = json.loads(result_file.read_text())
    data = pd.read_parquet(run_dir / "train.parquet")
    spec_saved = TrainSpec.load(run_dir / "spec.json")
    lineage = {"parent": cycle["parent_version"], "cycle": cycle["id"], "run_id": f"cycle_{cycle['id']}",
               "lora_layers": spec_saved.model.get("lora_layer_ids") or f"top {spec_saved.model['lora_layers']}",
               "lora_reason": spec_saved.extra.get("lora_reason"), "train_rows": len(data), "rows_by_source": data["source"].value_counts().to_dict(),
               "train_data_sha256": checksums.sha256_file(run_dir / "train.parquet"),
               "best_val_acc": result["best_val_acc"], "steps": result["steps"],
               "early_stop": result.get("stop_reason")}  # the doctor's reason, None when the run went to its end
    if cycle["kind"] != "baseline":  # what it replayed from earlier cycles, each row's provenance in train.parquet
        lineage["replayed"] = {**replay_summary(data), "enabled": spec_saved.train.get("accumulate", False),
                               "weight": spec_saved.train.get("accumulated_weight")}
    crash_point("train_before_register")
    store.register_version(version, num, cycle["id"], cycle["parent_version"], ws.config().model.base_model,
                           str(out.relative_to(ws.root)), result["files"], lineage, ENGINE, next_stage=step.next)


def stage_evaluate(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> None:
    store = ws.store
    version = cycle["candidate_version"]
    scored = evaluate_version(ws, version, ctx["progress"], cycle_id=cycle["id"], next_stage=step.next)
    gate = stats.estimate(scored["gate"][0]["correct"]) if "gate" in scored else None
    if gate:
        _say(ctx["progress"], f"  evaluate: {version} gate rows {gate['accuracy']:.4f} (95% CI "
                              f"{gate['ci_low']:.4f}-{gate['ci_high']:.4f}, {gate['n']} untouched rows)")
    if scored["traffic"]:
        t = scored["traffic"]
        _say(ctx["progress"], f"  evaluate: {version} expected on traffic {t['accuracy']:.4f} (95% CI "
                              f"{t['ci_low']:.4f}-{t['ci_high']:.4f}, {t['n']} probe rows)")


def stage_data_review(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> Outcome | None:
    store = ws.store
    checks = gates.data_review_checks(ws.config().gates.data_review, store.samples(cycle["id"]),
                                      store.seed_examples(before_cycle=cycle["id"])["label"])
    return gate_stage(ws, cycle, ctx, "data_review", checks, step, hard=False)


def stage_drift(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> None:
    store, cfg = ws.store, ws.config()
    pool = store.unlabeled_pool()  # production traffic last, so the tail is the most recent
    reference = pool["text"].tail(cfg.drift.reference_size).tolist() if cfg.drift.reference_size else []
    report = drift.compare(registry.load(ws, cycle["parent_version"]), registry.load(ws, cycle["candidate_version"]),
                           store.heldout("gate"), reference, store.guardrails(), cfg.drift)
    passed = report["verdict"] == "pass"
    store.save_drift(cycle["id"], cycle["candidate_version"], cycle["parent_version"], passed, report,
                     step.next if passed else step.otherwise)
    _say(ctx["progress"], f"  drift: {report['verdict']} ({'; '.join(report['reasons'])})")


def stage_drift_review(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> Outcome | None:
    report = ws.store.drift_report(cycle["id"])["report"]
    checks = {"passed": False, "verdict": report["verdict"], "reasons": report["reasons"]}
    return gate_stage(ws, cycle, ctx, "drift_review", checks, step, hard=False)


def stage_traffic_labels(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> Outcome | None:
    """Ask people to label the probe rows that decide between candidate and production (core/traffic.py), then
    wait for the answers up to `gates.traffic_labels_wait_hours` (0: never wait; answers given later still
    count for every later gate and estimate)."""
    store, cfg = ws.store, ws.config().gates
    design = store.traffic_design(cycle["id"])
    if design is None:
        if not cfg.traffic_labels_per_cycle or store.traffic_probe().empty:
            store.set_stage(cycle["id"], step.next)
            return None
        ensure_evaluated(ws, cycle["parent_version"])  # production scored before probe predictions were kept
        drawn, plan, requests = traffic.plan(store, cycle["id"], cycle["candidate_version"], cycle["parent_version"],
                                             cfg.traffic_labels_per_cycle)
        store.save_traffic_design(cycle["id"], plan, requests, None)
        _say(ctx["progress"], f"  traffic labels: {len(drawn)} probe rows asked of people ({plan['disagreements']} "
                              f"of {plan['probe']} rows where candidate and production disagree)")
        design = store.traffic_design(cycle["id"])
    asked = store.label_requests(status="pending", cycle_id=cycle["id"])
    pending = int((asked["purpose"] == "evaluate").sum())
    waited_h = (utcnow() - design["created_at"]).total_seconds() / 3600
    if pending and waited_h < cfg.traffic_labels_wait_hours:
        store.set_cycle_waiting(cycle["id"], True)
        return Outcome(cycle["id"], "waiting", cycle["stage"], None,
                       f"cycle {cycle['id']} waits for {pending} traffic labels (they grade the candidate and are "
                       f"never trained on): answer with `python -m core samples label --workspace {ws.root}`, then "
                       f"`python -m core resume --workspace {ws.root}`; after {cfg.traffic_labels_wait_hours:g} h "
                       f"the gate decides with the labels it has")
    store.set_stage(cycle["id"], step.next)
    return None


def stage_gate(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> Outcome | None:
    store, cfg = ws.store, ws.config()
    candidate = store.eval_results(cycle["candidate_version"], "gate")
    production = None
    if cycle["parent_version"]:
        ensure_evaluated(ws, cycle["parent_version"])  # a version from before the held-out set had parts
        production = store.eval_results(cycle["parent_version"], "gate")
    read = traffic.readings(store)  # every version's per-row readings of the probe, for both of the next two
    shown = traffic.refresh(store, read)  # with every traffic label answered by now
    resemblance = traffic.resemblance(ws) if cycle["parent_version"] else None
    if resemblance is not None:  # shown beside it: what the estimates take off for it
        resemblance["held_out_ease"] = (shown.get(cycle["candidate_version"]) or {}).get("held_out_ease")
    evidence = {"candidate": shown.get(cycle["candidate_version"]),
                "production": shown.get(cycle["parent_version"]) if cycle["parent_version"] else None,
                "gain": traffic.gain(store, cycle["id"]) if cycle["parent_version"] else None,
                "label_free_gain": (traffic.label_free_gain(store, cycle["candidate_version"], cycle["parent_version"],
                                                            read) if cycle["parent_version"] else None),
                "resemblance": resemblance}
    checks = gates.promotion_checks(cfg.gates, candidate, production, evidence)
    return gate_stage(ws, cycle, ctx, "promotion", checks, step)


def stage_promote(ws: Workspace, cycle: dict, ctx: dict, step: Stage) -> None:
    gate = ws.store.gate_for(cycle["id"], "promotion")
    if gate is None or gate["status"] != "approved":  # never promote past a gate that did not allow it
        raise RuntimeError(f"cycle {cycle['id']} reached promotion without an approved gate")
    crash_point("promote_start")
    ws.store.promote(cycle["id"], cycle["candidate_version"], gate["decided_by"],
                     f"gate {gate['id']}: {gate['comment'] or 'approved'}", step.next)


# Every cycle kind's stages in order: the engine walks this table and nothing else names a next stage.
# Besides these exits, any stage can end its cycle as `failed` (engine.max_stage_tries tries that raised or
# died) or `abandoned` (an approver closed it); a gate's `otherwise` ends it as `rejected`.
FLOWS: dict[str, dict[str, Stage]] = {
    "baseline": {
        "train": Stage(stage_train, "evaluate"),
        "evaluate": Stage(stage_evaluate, "gate"),  # a baseline has nothing to drift from
        "gate": Stage(stage_gate, "promote", otherwise="rejected"),
        "promote": Stage(stage_promote, "done"),
    },
    "evolve": {
        "diagnose": Stage(stage_diagnose, "curate"),
        "curate": Stage(stage_curate, "data_review"),
        "data_review": Stage(stage_data_review, "train", otherwise="rejected"),
        "train": Stage(stage_train, "evaluate"),
        "evaluate": Stage(stage_evaluate, "drift"),
        "drift": Stage(stage_drift, "traffic_labels", otherwise="drift_review"),
        "drift_review": Stage(stage_drift_review, "traffic_labels", otherwise="rejected"),
        "traffic_labels": Stage(stage_traffic_labels, "gate"),
        "gate": Stage(stage_gate, "promote", otherwise="rejected"),
        "promote": Stage(stage_promote, "scaffold_retest"),
        # the production scaffold against the plain model on the version just promoted
        "scaffold_retest": Stage(scaffold_stages.stage_retest, "done"),
    },
    scaffold_stages.KIND: {
        "scaffold_search": Stage(scaffold_stages.stage_search, "scaffold_ab"),
        "scaffold_ab": Stage(scaffold_stages.stage_ab, "scaffold_gate"),
        "scaffold_gate": Stage(scaffold_stages.stage_gate, "scaffold_adopt", otherwise="rejected"),
        "scaffold_adopt": Stage(scaffold_stages.stage_adopt, "done"),
    },
}
EVOLVE_STAGES = list(FLOWS["evolve"])
BASELINE_STAGES = list(FLOWS["baseline"])


def _ended(store, cycle: dict) -> Outcome:
    cycle_id = cycle["id"]
    scaffold = cycle["kind"] == scaffold_stages.KIND
    if cycle["status"] == "done":
        detail = (f"production scaffold: {store.production_scaffold()}" if scaffold
                  else f"production: {store.alias('production')}")
    elif cycle["status"] == "rejected":
        gate = store.gate_for(cycle_id, "scaffold_adoption" if scaffold else "promotion")
        detail = (gate or {}).get("comment") or cycle.get("error") or ""
    else:  # failed or abandoned: the error says why
        detail = cycle.get("error") or ""
    return Outcome(cycle_id, cycle["status"], cycle["stage"],
                   message=f"cycle {cycle_id} {cycle['status']}" + (f" ({detail})" if detail else ""))


def run_cycle(ws: Workspace, cycle_id: int, auto_approve: bool = False, progress: bool = True,
              stop: Callable[[], bool] | None = None) -> Outcome:
    """Walk the cycle's flow until it ends or waits; `stop` (the daemon's SIGTERM) is asked between stages."""
    store = ws.store
    ctx = {"auto_approve": auto_approve, "progress": progress}
    while True:
        with store.kept_open():  # the stage's bookkeeping: one open of the file
            cycle = store.cycle(cycle_id)
            if cycle["status"] in END_STATUSES:
                return _ended(store, cycle)
            if stop is not None and stop():
                return Outcome(cycle_id, "stopped", cycle["stage"], message=f"cycle {cycle_id} stopped before its "
                                                                          f"{cycle['stage']} stage; resume continues it")
            if cycle["status"] == "waiting":
                store.set_cycle_waiting(cycle_id, False)
                cycle["status"] = "running"
            unfinished = store.begin_stage_try(cycle_id)
        stage = cycle["stage"]
        step = FLOWS[cycle["kind"]][stage]
        max_tries = ws.config().engine.max_stage_tries
        if unfinished >= max_tries:  # the earlier tries died without a word (killed, out of memory)
            store.fail_cycle(cycle_id, f"stage {stage} did not finish in {unfinished} tries; last error: "
                                       f"{cycle.get('error') or 'none (the process died)'}", ENGINE)
            continue
        started, t0 = utcnow(), time.perf_counter()
        _say(progress, f"cycle {cycle_id} [{cycle['kind']}] {stage} ...")
        ctx.pop("stage_detail", None)
        try:
            crash_point("stage_start")
            outcome = step.run(ws, cycle, ctx, step)
        except Exception as err:
            error = f"{stage}: {type(err).__name__}: {err}"
            store.note_stage_error(cycle_id, error)
            if unfinished + 1 < max_tries:
                raise  # the next resume tries again
            store.fail_cycle(cycle_id, f"stage {stage} failed {max_tries} times; last error: {error}", ENGINE)
            continue
        store.record_stage_run(cycle_id, stage, started, time.perf_counter() - t0, _peak_rss_mb(),
                               ctx.get("stage_detail"))
        crash_point("stage_end")
        if outcome is not None:
            return outcome


def start_cycle(ws: Workspace) -> int:
    production = ws.store.alias("production")
    if production is not None:  # refuse damaged weights before anything is written
        row = ws.store.version(production)
        M.verify_files(ws.models / production, row["files"], production)
    if production is None:
        return ws.store.create_cycle("baseline", BASELINE_STAGES[0], None, ENGINE)
    return ws.store.create_cycle("evolve", EVOLVE_STAGES[0], production, ENGINE)


def begin_engine(ws: Workspace) -> None:
    """What an engine does first, holding the lock: record hand edits to config.toml since the last run (and
    stop while a governed one waits for an approver) and remove the temporaries of a writer that was killed
    (only the engine writes models/ and checkpoints/)."""
    require_accepted_config(ws, ENGINE)
    M.check_lora_layers(ws.config().model)  # a hand-edited config.toml is refused before a cycle starts
    executor.check(ws.config().engine)  # a Ray cluster that cannot be reached: one line, before any stage
    for folder in (ws.models, ws.checkpoints):
        atomic.sweep(folder)


def evolve(ws: Workspace, cycles: int = 1, auto_approve: bool = False, progress: bool = True,
           on_outcome: Callable[[Outcome], None] | None = None,
           stop: Callable[[], bool] | None = None) -> list[Outcome]:
    """Finish any open cycle, then run new ones until `cycles` evolution cycles have ended or one waits.

    A workspace without a production model first runs its baseline cycle, which does not count."""
    outcomes: list[Outcome] = []
    with engine_lock(ws):
        begin_engine(ws)
        counted = 0
        while counted < cycles:
            open_ = ws.store.open_cycle()
            cycle_id = open_["id"] if open_ else start_cycle(ws)
            kind = ws.store.cycle(cycle_id)["kind"]
            outcome = run_cycle(ws, cycle_id, auto_approve, progress, stop)
            outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
            if outcome.status in ("waiting", "stopped", "failed"):  # a failure needs a look before more cycles
                break
            if kind == "evolve":  # a baseline or a scaffold cycle finished on the way does not count
                counted += 1
    return outcomes


def resume(ws: Workspace, auto_approve: bool = False, progress: bool = True,
           stop: Callable[[], bool] | None = None) -> Outcome | None:
    with engine_lock(ws):
        begin_engine(ws)
        open_ = ws.store.open_cycle()
        if open_ is None:
            return None
        return run_cycle(ws, open_["id"], auto_approve, progress, stop)


def run_scaffold_cycle(ws: Workspace, budget: int | None = None, candidate: str | None = None,
                       auto_approve: bool = False, progress: bool = True) -> Outcome:
    """Start a scaffold cycle and run it to its end or to its gate (one engine per workspace, as for evolve)."""
    with engine_lock(ws):
        begin_engine(ws)
        cycle_id = scaffold_stages.start(ws, FLOWS[scaffold_stages.KIND], budget, candidate)
        return run_cycle(ws, cycle_id, auto_approve, progress)
