"""Banking77 benchmark: run Evolab's evolution loop on the Banking77 few-shot protocol and measure it.

Protocol (see shared/datasets/banking77/README.md): walk train.csv in file order; per intent the first
10 rows are the labeled seed, the next 5 the held-out validation set, and every other row is unlabeled
traffic. A fixed random part of that traffic (1,500 rows, numpy default_rng(seed)) is the development
test set: its labels are used for scoring only and its texts are never given to the engine. The rest of
the traffic is the unlabeled pool (text only).

    python bench/banking77.py --cycles 1
    python bench/banking77.py --cycles 3 --set train.epochs=2 --json-out bench/out/run.json --keep

Per cycle it prints the production model's development-test accuracy, the gate's estimate of the
candidate's accuracy with its 95% interval next to the candidate's development-test accuracy (the truth
the estimate is judged by, and whether the interval covers it), samples generated/kept per generator,
the wall time of each stage and of the cycle, and peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "banking77"
SEED_PER_CLASS = 10
HELDOUT_PER_CLASS = 5
DEV_SIZE = 1500
from core.cycle import EVOLVE_STAGES as STAGES  # noqa: E402  (one list of stages, the engine's)
# Measured on this protocol with the default MiniLM encoder, scored on the official test split
# (not the development test set used here, so they are a guide rather than an exact comparison).
REFERENCES = [
    ("frozen embeddings + logistic regression (10/intent)", 0.854),
    ("pseudo-label + full fine-tune", 0.872),
    ("supervised ceiling (LR on all 10,003 labels)", 0.930),
]
REFERENCE_TEXT = ["85.4%", "~87%", "93.0%"]


class BenchError(Exception):
    """A problem with the bench's own input: one line, exit 2."""


# -- data ------------------------------------------------------------------------------------------
def split_protocol(train_csv: Path, seed: int, dev_size: int, pool_labels: bool = False, near_seed: bool = False):
    """Return (seed, heldout, pool, dev) frames following the protocol.

    The pool has text only, as the engine gets it; pool_labels keeps its labels for analyses that
    score teachers against the truth (bench/teacher_ceiling.py). near_seed: the held-out rows are drawn
    from the pool rows nearest the seed instead (near_seed_heldout), the protocol's own held-out rows
    going back to the pool; the dev test set is the same either way.
    """
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    missing = {"text", "category"} - set(frame.columns)
    if missing:
        raise BenchError(f"{train_csv}: missing column(s) {', '.join(sorted(missing))} (expected text,category)")
    frame = frame.rename(columns={"category": "label"})[["text", "label"]]
    rank = frame.groupby("label", sort=False).cumcount()  # position of the row within its intent, file order
    seed_df = frame[rank < SEED_PER_CLASS].reset_index(drop=True)
    held_df = frame[(rank >= SEED_PER_CLASS) & (rank < SEED_PER_CLASS + HELDOUT_PER_CLASS)].reset_index(drop=True)
    traffic = frame[rank >= SEED_PER_CLASS + HELDOUT_PER_CLASS].reset_index(drop=True)
    if not 0 < dev_size < len(traffic):
        raise BenchError(f"--dev-size must be between 1 and {len(traffic) - 1} (the traffic has {len(traffic):,} rows)")
    rng = np.random.default_rng(seed)
    dev_idx = np.sort(rng.choice(len(traffic), size=dev_size, replace=False))
    is_dev = np.zeros(len(traffic), dtype=bool)
    is_dev[dev_idx] = True
    dev_df = traffic[is_dev].reset_index(drop=True)
    pool_df = traffic[~is_dev].reset_index(drop=True)
    if near_seed:
        held_df, pool_df = near_seed_heldout(seed_df, pd.concat([held_df, pool_df], ignore_index=True), seed)
    pool_df = pool_df[["text", "label"] if pool_labels else ["text"]].reset_index(drop=True)
    return seed_df, held_df, pool_df, dev_df


def near_seed_heldout(seed_df, pool_df, seed: int, per_class: int = HELDOUT_PER_CLASS):
    """Held-out rows that sit closer to the seed than traffic does, as on a domain whose held-out file was
    written beside its seed: per intent, per_class rows drawn at random from the third of its pool rows
    nearest its seed rows (cosine similarity to the nearest seed row of that intent, in the default
    encoder's mean-pooled embeddings), removed from the pool. Returns (heldout, pool)."""
    import numpy as np
    import pandas as pd

    from core import model as M
    from core.config import ModelConfig

    tokenizer, encoder = M.load_base(ModelConfig().base_model)
    seed_emb = M.embed_texts(tokenizer, encoder, seed_df["text"].tolist(), 64)
    pool_emb = M.embed_texts(tokenizer, encoder, pool_df["text"].tolist(), 64)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted(seed_df["label"].unique()):
        rows = np.flatnonzero(pool_df["label"].to_numpy() == label)
        near = (pool_emb[rows] @ seed_emb[seed_df["label"].to_numpy() == label].T).max(1)
        third = rows[np.argsort(-near, kind="stable")[:max(per_class, len(rows) // 3)]]
        chosen.extend(rng.choice(third, size=min(per_class, len(third)), replace=False).tolist())
    taken = np.zeros(len(pool_df), dtype=bool)
    taken[chosen] = True
    return pool_df[taken].reset_index(drop=True), pool_df[~taken].reset_index(drop=True)


# -- config ----------------------------------------------------------------------------------------
def build_config(overrides: list[str], autonomous: bool = True):
    """The bench's config: autonomous by default (every gate decides by its checks, recorded in config.toml as
    `init --policy auto` records it), then the --set overrides."""
    from core.actions import make_autonomous, parse_value
    from core.config import Config, parse_config

    base = Config()
    if autonomous:
        make_autonomous(base)
    raw = base.model_dump()
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = [p.strip() for p in key.split(".")]
        if not sep or len(parts) < 2 or not all(parts):
            raise BenchError(f"--set {item!r}: expected section.key=value (e.g. train.epochs=2)")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise BenchError(f"--set {item!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return parse_config(raw)  # pydantic validation: unknown keys and bad values raise ConfigError


# -- measurement -----------------------------------------------------------------------------------
def rss_mb() -> tuple[float, float]:
    """Peak resident set size so far (ru_maxrss is KiB on Linux, bytes on macOS) of self and children."""
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return own, kids


class DevScorer:
    """Development-test accuracy per model version, plain or through a scaffold (cached: a rejected cycle keeps the
    same production). An abstention counts as wrong."""

    def __init__(self, ws, dev):
        self.ws, self.dev, self.cache = ws, dev, {}

    def __call__(self, version: str | None, scaffold: str | None = None) -> tuple[float | None, float]:
        import numpy as np

        from core import model as M, registry
        from core.scaffolds import archive, spec as S

        if version is None:
            return None, 0.0
        key = (version, scaffold or S.DEFAULT)
        if key not in self.cache:
            t0 = time.perf_counter()
            loaded = registry.load(self.ws, version)
            texts = self.dev["text"].tolist()
            if key[1] == S.DEFAULT:
                probs = M.predict_proba(loaded, texts)
                predicted = np.asarray(loaded.labels, dtype=object)[probs.argmax(1)]
            else:
                from core.scaffolds import run

                out = run.run(archive.get(self.ws.store, key[1]), loaded, texts, run.bank_for(self.ws, loaded))
                predicted = np.asarray([None if r["abstained"] else r["label"] for r in out], dtype=object)
            acc = float((predicted == self.dev["label"].to_numpy()).mean())
            self.cache[key] = (acc, time.perf_counter() - t0)
            return self.cache[key]
        return self.cache[key][0], 0.0


def scaffold_turn(ws, searches: int, scorer: DevScorer, quiet: bool) -> list[dict]:
    """After a model cycle, the scaffold work the daemon does in its window (core/daemon.py): the plain model's
    trial when the re-test after a promotion found it better than the production scaffold, then `searches`
    scaffold searches, each through the scaffold_adoption gate; per scaffold cycle, what it decided and the
    dev-test accuracy of the production model through the production scaffold after it."""
    from core import cycle
    from core.daemon import plain_trial_due
    from core.scaffolds import archive, spec as S

    out = []
    runs = ([S.DEFAULT] if plain_trial_due(ws.store) is not None else []) + [None] * searches
    for candidate in runs:
        t0 = time.perf_counter()
        outcome = cycle.run_scaffold_cycle(ws, candidate=candidate, progress=not quiet)
        seconds = time.perf_counter() - t0
        trial = ws.store.scaffold_trial(outcome.cycle_id) or {}
        production, scaffold = ws.store.alias("production"), archive.production_id(ws.store)
        out.append({"cycle_id": int(outcome.cycle_id), "status": outcome.status, "candidate": trial.get("candidate_id"),
                    "production_scaffold": scaffold, "model": production, "dev_acc": scorer(production, scaffold)[0],
                    "seconds": seconds, "message": outcome.message})
    return out


def pool_label_accuracy(samples, truth: dict[str, str] | None) -> dict | None:
    """How right the cycle's pseudo-labels of the pool are (the pool's labels read here for scoring only):
    the teacher's label on every pool text, and the labels the verifiers kept."""
    if truth is None or not len(samples):
        return None
    pooled = samples[(samples["generator"] == "self_label") & samples["text"].isin(truth.keys())]
    if pooled.empty:
        return None
    right = pooled["label"].to_numpy() == pooled["text"].map(truth).to_numpy()
    kept = pooled["status"].isin(["kept", "approved"]).to_numpy()
    return {"teacher": float(right.mean()), "n": int(len(pooled)),
            "kept": float(right[kept].mean()) if kept.any() else None, "kept_n": int(kept.sum())}


def cycle_record(ws, index: int, outcome, seconds: float, production: str | None, scorer: "DevScorer",
                 truth: dict[str, str] | None = None) -> dict:
    from core import stats

    store = ws.store
    cyc = store.cycle(outcome.cycle_id)
    candidate = cyc.get("candidate_version")
    gate_est = None
    if candidate:
        gate = store.gate_for(outcome.cycle_id, "promotion")
        checks = (gate or {}).get("checks", {})
        est = checks.get("estimate") or checks.get("candidate")  # on traffic where there is a probe
        if not isinstance(est, dict):  # rejected before the promotion gate: its estimate is stored all the same
            est = stats.shown_estimates(store.evaluations()).get(candidate)
        gate_est = est
    runs = store.stage_runs(outcome.cycle_id)
    seen = [str(s) for s in runs["stage"]]
    stage_s = {s: float(runs.loc[runs["stage"] == s, "seconds"].sum()) if s in seen else None
               for s in STAGES + [s for s in seen if s not in STAGES]}  # stages added later are kept too
    samples = store.samples(outcome.cycle_id)
    per_gen = {}
    if len(samples):
        for gen, group in samples.groupby("generator"):
            per_gen[str(gen)] = {"generated": int(len(group)),
                                 "kept": int(group["status"].isin(["kept", "approved"]).sum())}
    gates = store.gates()
    gates = gates[gates["cycle_id"] == outcome.cycle_id]
    gate_list = [{"kind": g["kind"], "status": g["status"], "by": g["decided_by"], "comment": g["comment"],
                  "reasons": json.loads(g["checks"]).get("reasons")} for g in gates.to_dict("records")]
    from core.cycle import cycle_rejection

    diagnosis = store.diagnoses(outcome.cycle_id)
    lessons_applied = [f"{r.subject}: {r.action}" for r in diagnosis.itertuples() if r.kind == "gate_rejection"] \
        if len(diagnosis) else []
    from core.scaffolds import archive

    dev_acc, dev_s = scorer(production, archive.production_id(store))  # what production serves
    cand_dev, cand_s = scorer(candidate)  # also for a rejected candidate: was the gate right?
    parent_dev = scorer(cyc.get("parent_version"))[0]
    promotion = next((g for g in gates.to_dict("records") if g["kind"] == "promotion"), None)
    checks = json.loads(promotion["checks"]) if promotion else {}
    own, kids = rss_mb()
    return {
        "cycle": index, "cycle_id": int(outcome.cycle_id), "kind": cyc["kind"], "status": outcome.status,
        "parent": cyc.get("parent_version"), "candidate": candidate, "production": production,
        "dev_acc": dev_acc, "candidate_dev_acc": cand_dev,
        "gate_estimate": gate_est, "gate_covers_truth": None if gate_est is None or cand_dev is None
        else bool(gate_est["ci_low"] <= cand_dev <= gate_est["ci_high"]),
        "samples": per_gen, "pool_labels": pool_label_accuracy(samples, truth), "stage_s": stage_s, "cycle_s": seconds, "dev_scoring_s": dev_s + cand_s,
        "gates": gate_list, "lessons_applied": lessons_applied, "parent_dev_acc": parent_dev,
        "decided_on": checks.get("decided_on"), "gate_gain": checks.get("gain"),
        "traffic_gain": checks.get("traffic_gain"), "resemblance": checks.get("resemblance"),
        "rejection_keys": sorted({f["key"] for f in cycle_rejection(store, int(outcome.cycle_id))}),
        "peak_rss_mb": {"self": round(own, 1), "children": round(kids, 1)},
    }


# -- the human budget: an oracle answers the label requests from the pool's true labels --------------
ORACLE = "oracle"


class Oracle:
    """--oracle-budget N: stands in for a person. After each cycle it answers that cycle's label requests (the N
    pool texts curation asked about) with their true labels, through the same action a person's answer goes
    through, and nothing else: the labels of texts nobody asked about stay unread."""

    def __init__(self, ws, pool_df):
        import secrets

        from core import actions, auth

        self.ws, self.truth = ws, dict(zip(pool_df["text"], pool_df["label"]))
        password = secrets.token_urlsafe(24)
        actions.add_user(ws, None, ORACLE, "labeler", password)  # a labeler: it may answer requests, nothing else
        self.who = auth.authenticate(ws.store, ORACLE, password, "bench:oracle")
        self.spent = 0

    def answer(self, purpose: str = "train") -> int:
        spent = answer_requests(self.ws, self.who, self.truth, purpose)
        if purpose == "train":
            self.spent += spent
        return spent

    def note(self, record: dict, base: float | None) -> str:
        """The labels spent before this cycle began (the ones it trained on) and dev-test gain per label."""
        gain = None if base is None or record["dev_acc"] is None else record["dev_acc"] - base
        record["human_labels_spent"] = self.spent
        record["gain_per_human_label"] = gain / self.spent if self.spent and gain is not None else None
        per = record["gain_per_human_label"]
        return (f"      human labels spent so far {self.spent:,}; dev-test gain over the baseline "
                f"{'-' if gain is None else f'{100 * gain:+.2f}pp'}; accuracy per human label "
                f"{'-' if per is None else f'{100 * per:+.4f}pp'}")


def answer_requests(ws, who, truth: dict[str, str], purpose: str = "train") -> int:
    """Answer every pending label request of this purpose (`train`: the human budget; `evaluate`: traffic
    labels that grade candidates) whose text has a true label (skip the others); how many labels were spent.
    Only requested texts are looked up in `truth`."""
    from core import actions

    spent = 0
    queue = ws.store.label_requests(status="pending")
    for request in queue[queue["purpose"] == purpose].itertuples():
        label = truth.get(request.text)
        actions.answer_label_request(ws, who, int(request.id), label, skip=label is None)
        spent += label is not None
    return spent


# -- printing --------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _sec(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ci(est: dict | None) -> str:
    return "-" if not est else f"{100 * est['ci_low']:.1f}-{100 * est['ci_high']:.1f}%"


def _pool(acc: dict | None) -> str:
    return "-" if not acc else f"{_pct(acc['teacher'])}/{_pct(acc['kept'])}"


def _yes(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


# stage columns are wall seconds; rss_* are peak resident memory so far in MB
COLS = [("cyc", 3), ("id", 3), ("kind", 8), ("status", 8), ("prod", 5), ("dev_acc", 7), ("gate_est", 8),
        ("gate_95%_ci", 15), ("cand_dev", 8), ("in_ci", 5), ("pool_teach/kept", 15),
        *[(s, 8) for s in STAGES], ("cycle_s", 8), ("rss_self", 8), ("rss_kids", 8), ("samples gen/kept", 0)]


def header() -> str:
    return "  ".join(f"{name:<{w}}" if i in (2, 3, 4) or w == 0 else f"{name:>{w}}"
                     for i, (name, w) in enumerate(COLS))


def row_line(r: dict) -> str:
    samples = ", ".join(f"{g} {v['generated']:,}/{v['kept']:,}" for g, v in r["samples"].items()) or "-"
    extra = [f"{s} {_sec(v)}s" for s, v in r["stage_s"].items() if s not in STAGES]
    if extra:
        samples += f"  [other stages: {', '.join(extra)}]"
    est = r["gate_estimate"]
    cells = [str(r["cycle"]), str(r["cycle_id"]), r["kind"], r["status"], r["production"] or "-",
             _pct(r["dev_acc"]), _pct(est and est["accuracy"]), _ci(est), _pct(r["candidate_dev_acc"]),
             _yes(r["gate_covers_truth"]), _pool(r["pool_labels"]), *[_sec(r["stage_s"][s]) for s in STAGES],
             _sec(r["cycle_s"]), f"{r['peak_rss_mb']['self']:.0f}", f"{r['peak_rss_mb']['children']:.0f}", samples]
    return "  ".join(f"{c:<{w}}" if i in (2, 3, 4) or w == 0 else f"{c:>{w}}"
                     for i, (c, (_, w)) in enumerate(zip(cells, COLS)))


def gain_line(r: dict) -> str:
    """What decided the promotion gate against the truth: the paired gain it used (traffic labels or gate rows),
    the other one, and the dev-test gain of the candidate over the production it was compared with."""
    dev = None if r["candidate_dev_acc"] is None or r["parent_dev_acc"] is None else \
        r["candidate_dev_acc"] - r["parent_dev_acc"]
    t = r["traffic_gain"]
    res = r["resemblance"] or {}
    return (f"decided on {r['decided_on'] or '-'}: gain {_pp(r['gate_gain'])}; traffic labels "
            + (f"{_pp(t['gain'])} ({_pp(t['ci_low'])} to {_pp(t['ci_high'])}, {t['labeled']} labeled of "
               f"{t['disagreements']} disagreements)" if t else "-")
            + f"; dev-test gain {_pp(dev)}"
            + (f"; held-out rows resemble traffic {res['resemblance']:.2f} (seed-proximity AUC {res['auc']:.2f})"
               if res.get("resemblance") is not None else ""))


def _pp(x) -> str:
    return "-" if x is None else f"{100 * x:+.2f}pp"


def version_table(ws, scorer, rows: list[dict], truth: dict[str, str]) -> list[dict]:
    """Every version at the end of the run: the estimate people are shown (with every traffic label answered by
    then), its dev-test accuracy, its true accuracy on the traffic probe (the rows the estimate is about, scored
    here with the pool's labels: it splits the estimate's error into the estimator's and the probe's own draw),
    and whether it was promoted."""
    from core import stats

    store = ws.store
    shown = stats.shown_estimates(store.evaluations())
    history = store.alias_history()
    promoted = set(history.loc[history["name"] == "production", "version"].dropna())
    probe = store.traffic_probe().set_index("id")["text"].map(truth).dropna()
    out = []
    for v in store.versions()["version"]:
        est = shown.get(v)
        preds = store.probe_predictions(v).set_index("example_id")["predicted"].reindex(probe.index)
        probe_acc = float((preds == probe).mean()) if preds.notna().any() else None
        out.append({"version": v, "estimate": est, "dev_acc": scorer(v)[0], "probe_acc": probe_acc,
                    "promoted": v in promoted})
    return out


def print_versions(table: list[dict], rows: list[dict]) -> None:
    print()
    print("== versions " + "=" * 69)
    print(f"{'version':<8}  {'shown':>8}  {'95% interval':>15}  {'basis':<40}  {'ease':>8}  {'dev_test':>8}  "
          f"{'error':>8}  {'probe':>8}  {'vs probe':>8}  promoted")
    for t in table:
        est = t["estimate"] or {}
        err = None if not est or t["dev_acc"] is None else est["accuracy"] - t["dev_acc"]
        on_probe = None if not est or t.get("probe_acc") is None else est["accuracy"] - t["probe_acc"]
        print(f"{t['version']:<8}  {_pct(est.get('accuracy')):>8}  {_ci(est or None):>15}  "
              f"{(est.get('method') or est.get('basis') or '-')[:40]:<40}  {_pp(est.get('held_out_ease')):>8}  "
              f"{_pct(t['dev_acc']):>8}  {_pp(err):>8}  "
              f"{_pct(t.get('probe_acc')):>8}  {_pp(on_probe):>8}  {'yes' if t['promoted'] else 'no'}")
    scored = [t for t in table if t["dev_acc"] is not None]
    ranked = [t for t in scored if t["estimate"]]
    errors = [abs(t["estimate"]["accuracy"] - t["dev_acc"]) for t in ranked]
    if errors:
        print(f"estimate error: largest {100 * max(errors):.2f}pp, mean {100 * sum(errors) / len(errors):.2f}pp over "
              f"{len(errors)} versions")
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:] if abs(a["dev_acc"] - b["dev_acc"]) >= 0.005]
    wrong = [(a, b) for a, b in pairs if (a["estimate"]["accuracy"] - b["estimate"]["accuracy"])
             * (a["dev_acc"] - b["dev_acc"]) <= 0]
    print(f"order: {len(pairs) - len(wrong)} of {len(pairs)} version pairs at least 0.5pp apart on the dev test are "
          f"shown in the right order" + ("".join(f"; wrong: {a['version']}/{b['version']}" for a, b in wrong)))
    best = max(scored, key=lambda t: t["dev_acc"])
    final = rows[-1]
    print(f"best version by dev test {best['version']} {_pct(best['dev_acc'])}; production {final['production']} "
          f"{_pct(final['dev_acc'])} ({_pp(final['dev_acc'] - best['dev_acc'])})")
    missed = [r for r in rows if r["status"] == "rejected" and r["candidate_dev_acc"] is not None
              and r["parent_dev_acc"] is not None and r["candidate_dev_acc"] - r["parent_dev_acc"] >= 0.01]
    print(f"candidates at least 1pp better than production on the dev test that were rejected: {len(missed)}"
          + "".join(f" ({r['candidate']}, {_pp(r['candidate_dev_acc'] - r['parent_dev_acc'])})" for r in missed))
    signs = [(r, r["traffic_gain"]["gain"], r["candidate_dev_acc"] - r["parent_dev_acc"]) for r in rows
             if r["traffic_gain"] and r["candidate_dev_acc"] is not None and r["parent_dev_acc"] is not None
             and abs(r["candidate_dev_acc"] - r["parent_dev_acc"]) > 0.01]
    if signs:
        right = sum(g * d > 0 for _, g, d in signs)
        print(f"traffic-label gain has the dev-test gain's sign for {right} of {len(signs)} candidates whose dev-test "
              f"gain is beyond ±1pp")


def print_summary(rows: list[dict], meta: dict) -> None:
    print()
    print("== summary " + "=" * 70)
    print(f"data      {meta['data']}  (seed {meta['sizes']['seed']:,}, held-out {meta['sizes']['heldout']:,}, "
          f"pool {meta['sizes']['pool']:,}, dev test {meta['sizes']['dev']:,}; split seed {meta['seed']})")
    print(f"machine   {meta['machine']['cpus']} CPUs, torch device {meta['machine']['device']}, "
          f"{meta['machine']['torch_threads']} torch threads")
    base = rows[0]["dev_acc"] if rows else None
    print()
    print(f"{'cyc':>3}  {'kind':<8}  {'status':<8}  {'cand':<5}  {'gate_est':>8}  {'gate_95%_ci':>15}  {'cand_dev':>8}  "
          f"{'in_ci':>5}  {'pool_teach/kept':>15}  {'prod':<5}  {'dev_acc':>7}  {'vs base':>8}  {'kept':>6}  "
          f"{'train_s':>8}  {'cycle_s':>8}")
    for r in rows:
        kept = sum(v["kept"] for v in r["samples"].values()) if r["samples"] else None
        delta = "-" if base is None or r["dev_acc"] is None else f"{100 * (r['dev_acc'] - base):+.2f}pp"
        est = r["gate_estimate"]
        print(f"{r['cycle']:>3}  {r['kind']:<8}  {r['status']:<8}  {r['candidate'] or '-':<5}  "
              f"{_pct(est and est['accuracy']):>8}  {_ci(est):>15}  {_pct(r['candidate_dev_acc']):>8}  "
              f"{_yes(r['gate_covers_truth']):>5}  {_pool(r['pool_labels']):>15}  {r['production'] or '-':<5}  {_pct(r['dev_acc']):>7}  {delta:>8}  "
              f"{'-' if kept is None else f'{kept:,}':>6}  {_sec(r['stage_s']['train']):>8}  {_sec(r['cycle_s']):>8}")
    rejected = [r for r in rows if r["status"] == "rejected"]
    repeats = sum(bool(set(a["rejection_keys"]) & set(b["rejection_keys"])) for a, b in zip(rows, rows[1:]))
    print(f"rejections: {len(rejected)}; the same reason rejected two cycles in a row {repeats} time(s)")
    covered = [r["gate_covers_truth"] for r in rows if r["gate_covers_truth"] is not None]
    if covered:
        print(f"gate estimate's 95% interval covers the candidate's dev-test accuracy in {sum(covered)} of "
              f"{len(covered)} cycles")
    final = rows[-1]["dev_acc"] if rows else None
    print()
    print(f"final production {rows[-1]['production'] if rows else '-'}: dev-test accuracy {_pct(final)}")
    print("reference figures (official test split, not this dev test set):")
    for (name, value), shown in zip(REFERENCES, REFERENCE_TEXT):
        gap = "" if final is None else f"   (ours {100 * (final - value):+.1f}pp)"
        print(f"  {shown:>6}  {name:<52}{gap}")
    t = meta["timing"]
    print()
    print(f"time      total {t['total_s']:.1f}s = setup {t['setup_s']:.1f}s + cycles {t['cycles_s']:.1f}s "
          f"+ dev scoring {t['dev_scoring_s']:.1f}s")
    print(f"memory    peak RSS self {meta['peak_rss_mb']['self']:.0f} MB, children {meta['peak_rss_mb']['children']:.0f} MB")
    if meta.get("error"):
        print(f"error     {meta['error']}")


# -- main ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/banking77.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=1, help="evolution cycles after the baseline (default 1)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
    p.add_argument("--seed", type=int, default=0, help="numpy default_rng seed for the dev-test hold-out")
    p.add_argument("--dev-size", type=int, default=DEV_SIZE, help=f"dev-test rows held out of the traffic "
                   f"(default {DEV_SIZE})")
    p.add_argument("--work", type=Path, help="work folder for the CSVs and the workspace (default: a fresh "
                   "temp folder, deleted at the end unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the temp work folder")
    p.add_argument("--policy", choices=["auto", "default"], default="auto",
                   help="auto (default): the recorded autonomous mode, every gate decides by its own checks; "
                        "default: the shipped policies, so the run stops at the first gate that waits for a person")
    p.add_argument("--auto-approve", dest="policy", action="store_const", const="auto",
                   help="the same as --policy auto (kept for older command lines)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--view-cache", type=Path, help="a folder of teacher-view embeddings (<key>.npz, as "
                   "bench/teacher_ceiling.py --cache keeps them) copied into the workspace first, so the teacher "
                   "encoder's pass is not timed again; leave it out to time the whole run")
    p.add_argument("--json-out", type=Path, help="also write the summary as JSON here")
    p.add_argument("--oracle-budget", type=int, default=0, metavar="N",
                   help="ask for N human labels per cycle (curate.ask_humans_per_cycle) and answer them from the "
                        "pool's true labels; prints accuracy per human label spent")
    p.add_argument("--oracle-eval-budget", type=int, default=0, metavar="N",
                   help="traffic labels that grade candidates (gates.traffic_labels_per_cycle = N): the oracle answers "
                        "each cycle's draw of probe rows from the pool's true labels before its gate decides")
    p.add_argument("--near-seed", action="store_true",
                   help="held-out rows drawn from the third of each intent's pool rows nearest its seed rows, so "
                        "they are easier than traffic (near_seed_heldout); the dev test set is unchanged")
    p.add_argument("--scaffold-searches", type=int, metavar="N",
                   help="scaffold searches after each model cycle, as the daemon runs them in its window (default: "
                        "the config's daemon.scaffold_searches_per_night); dev-test accuracy is then the production "
                        "model's through the production scaffold")
    p.add_argument("--quiet", action="store_true", help="no engine progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    train_csv = args.data / "train.csv"
    if not train_csv.is_file():
        print(f"error: Banking77 data not found: {train_csv} is missing (pass --data DIR)", file=sys.stderr)
        return 2
    if args.cycles < 0:
        print("error: --cycles must be 0 or more", file=sys.stderr)
        return 2

    from core.config import ConfigError
    from core.data import DataError
    from core.workspace import WorkspaceError

    try:
        if args.oracle_budget < 0:
            raise BenchError("--oracle-budget must be 0 or more")
        if args.scaffold_searches is not None and args.scaffold_searches < 0:
            raise BenchError("--scaffold-searches must be 0 or more")
        if args.oracle_eval_budget < 0:
            raise BenchError("--oracle-eval-budget must be 0 or more")
        budget = [f"curate.ask_humans_per_cycle={args.oracle_budget}"] if args.oracle_budget else []
        # Without the eval oracle nobody labels traffic: the gate decides from the held-out rows alone.
        budget += [f"gates.traffic_labels_per_cycle={args.oracle_eval_budget}",
                   f"gates.traffic_labels_wait_hours={24 if args.oracle_eval_budget else 0}"]
        config = build_config(args.overrides + budget, autonomous=args.policy == "auto")
        seed_df, held_df, pool_df, dev_df = split_protocol(train_csv, args.seed, args.dev_size, pool_labels=True,
                                                             near_seed=args.near_seed)
    except (BenchError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    own_tmp = args.work is None
    work = Path(tempfile.mkdtemp(prefix="evolab-banking77-")) if own_tmp else args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    meta: dict = {}
    code = 0
    setup_s = 0.0
    try:
        import torch

        from core import cycle
        from core.model import device
        from core.setup import init_workspace

        t0 = time.perf_counter()
        seed_df.to_csv(work / "seed.csv", index=False)
        held_df.to_csv(work / "heldout.csv", index=False)
        # The engine gets the pool's texts only; their labels stay here, to score the cycle's pseudo-labels.
        truth = dict(zip(pool_df["text"], pool_df["label"]))
        pool_df[["text"]].to_csv(work / "unlabeled.csv", index=False)
        try:
            ws = init_workspace(work / "workspace", work / "seed.csv", work / "unlabeled.csv", work / "heldout.csv",
                                "text", "label", None, config)
        except (DataError, WorkspaceError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.view_cache:
            views_dir = ws.root / "cache" / "views"
            views_dir.mkdir(parents=True, exist_ok=True)
            for cached in Path(args.view_cache).glob("*.npz"):
                shutil.copy2(cached, views_dir / cached.name)
        setup_s = time.perf_counter() - t0
        meta = {
            "data": str(args.data.resolve()), "seed": args.seed, "work": str(work),
            "sizes": {"seed": len(seed_df), "heldout": len(held_df), "pool": len(pool_df), "dev": len(dev_df),
                      "labels": int(seed_df["label"].nunique())},
            "config": config.model_dump(), "overrides": args.overrides, "cycles_requested": args.cycles,
            "machine": {"cpus": os.cpu_count(), "device": str(device()), "torch_threads": torch.get_num_threads(),
                        "python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform()},
            "references": {name: value for name, value in REFERENCES},
        }
        print(f"banking77: {meta['sizes']['labels']} intents; seed {len(seed_df):,}, held-out {len(held_df):,}, "
              f"pool {len(pool_df):,}, dev test {len(dev_df):,} (seed {args.seed}); workspace {ws.root}; "
              f"setup {setup_s:.1f}s", flush=True)
        if args.overrides:
            print(f"config overrides: {', '.join(args.overrides)}", flush=True)
        scorer = DevScorer(ws, dev_df)
        oracle = Oracle(ws, pool_df) if args.oracle_budget or args.oracle_eval_budget else None
        eval_oracle = bool(oracle and args.oracle_eval_budget)
        printed_header = False
        searches = config.daemon.scaffold_searches_per_night if args.scaffold_searches is None \
            else args.scaffold_searches
        scaffold_rows: list[dict] = []
        meta["scaffold_searches"] = searches
        meta["scaffold_cycles"] = scaffold_rows
        # One evolve call per cycle; the first call also runs the baseline (reported as cycle 0).
        for _ in range(max(args.cycles, 1)):
            marks: list[tuple[object, float, str | None]] = []
            t_call = time.perf_counter()

            def on_outcome(outcome, marks=marks):
                if eval_oracle and outcome.status == "waiting" and outcome.gate_id is None:
                    return  # waiting for traffic labels: the oracle answers below and the cycle goes on
                marks.append((outcome, time.perf_counter(), ws.store.alias("production")))

            try:
                if args.cycles == 0:  # baseline only: evolve(cycles=0) would do nothing
                    cid = cycle.start_cycle(ws)
                    on_outcome(cycle.run_cycle(ws, cid, progress=not args.quiet))
                else:
                    outcomes = cycle.evolve(ws, cycles=1, progress=not args.quiet, on_outcome=on_outcome)
                    while eval_oracle and outcomes[-1].status == "waiting" and outcomes[-1].gate_id is None:
                        answered = oracle.answer("evaluate")
                        print(f"      oracle answered {answered} traffic labels for cycle {outcomes[-1].cycle_id}",
                              flush=True)
                        outcomes = [cycle.resume(ws, progress=not args.quiet)]
                        on_outcome(outcomes[-1])
            finally:
                previous = t_call
                for outcome, at, production in marks:
                    record = cycle_record(ws, len(rows), outcome, at - previous, production, scorer, truth)
                    previous = at
                    rows.append(record)
                    if not printed_header:
                        print(header(), flush=True)
                        printed_header = True
                    print(row_line(record), flush=True)
                    for lesson in record["lessons_applied"]:
                        print(f"      lesson from a rejection, carried out: {lesson}", flush=True)
                    for g in record["gates"]:
                        if g["status"] == "rejected":
                            print(f"      {g['kind']} gate rejected by {g['by']}: {g['comment']}", flush=True)
                    if record["traffic_gain"] or record["decided_on"]:
                        print("      " + gain_line(record), flush=True)
                    if oracle and args.oracle_budget:
                        print(oracle.note(record, rows[0]["dev_acc"]), flush=True)
            if oracle and args.oracle_budget:  # this cycle's requests, answered: they count from the next cycle
                oracle.answer()
            if searches and marks and marks[-1][0].status != "waiting":
                for sc in scaffold_turn(ws, searches, scorer, args.quiet):
                    scaffold_rows.append({**sc, "after_cycle": len(rows) - 1})
                    print(f"      scaffold cycle {sc['cycle_id']}: {sc['status']} (candidate {sc['candidate']}); "
                          f"production {sc['model']} through {sc['production_scaffold']}: dev test "
                          f"{_pct(sc['dev_acc'])}; {sc['seconds']:.0f}s", flush=True)
                if scaffold_rows and scaffold_rows[-1]["status"] == "waiting":
                    meta["error"] = f"scaffold cycle {scaffold_rows[-1]['cycle_id']} is waiting at a human gate"
                    code = 1
                    break
            if marks and marks[-1][0].status == "waiting":
                meta["error"] = (f"cycle {marks[-1][0].cycle_id} is waiting at a human gate; stopping "
                                 "(rerun with --policy auto to let every gate decide by its checks)")
                code = 1
                break
    except KeyboardInterrupt:
        meta["error"] = "interrupted"
        code = 130
    except Exception as err:  # report what was measured before the failure, with the traceback
        traceback.print_exc()
        meta["error"] = f"{type(err).__name__}: {err}"
        code = 1
    finally:
        if meta:
            own, kids = rss_mb()
            meta["timing"] = {"total_s": time.perf_counter() - t_start, "setup_s": setup_s,
                              "cycles_s": sum(r["cycle_s"] for r in rows),
                              "dev_scoring_s": sum(r["dev_scoring_s"] for r in rows),
                              "scaffold_s": sum(r["seconds"] for r in meta.get("scaffold_cycles", []))}
            meta["peak_rss_mb"] = {"self": round(own, 1), "children": round(kids, 1)}
            if args.oracle_budget and rows:
                meta["oracle"] = {"budget_per_cycle": args.oracle_budget,
                                  "human_labels_spent": rows[-1].get("human_labels_spent"),
                                  "gain_per_human_label": rows[-1].get("gain_per_human_label")}
            print_summary(rows, meta)
            if meta.get("scaffold_cycles"):
                adopted = [r for r in meta["scaffold_cycles"] if r["status"] == "done"]
                last = meta["scaffold_cycles"][-1]
                print(f"scaffolds {len(meta['scaffold_cycles'])} scaffold cycles in {meta['timing']['scaffold_s']:.0f}s, "
                      f"{len(adopted)} adopted; at the end production {last['model']} through "
                      f"{last['production_scaffold']}: dev test {_pct(last['dev_acc'])}")
            if rows:
                meta["versions"] = version_table(ws, scorer, rows, truth)
                print_versions(meta["versions"], rows)
            if meta.get("oracle"):
                o = meta["oracle"]
                per = o["gain_per_human_label"]
                print(f"human     {o['human_labels_spent']:,} labels spent by the last cycle ({o['budget_per_cycle']} "
                      f"asked per cycle); accuracy per human label {'-' if per is None else f'{100 * per:+.4f}pp'}")
            if args.json_out:
                args.json_out.parent.mkdir(parents=True, exist_ok=True)
                args.json_out.write_text(json.dumps({**meta, "cycles": rows}, indent=2, default=str) + "\n",
                                         encoding="utf-8")
                print(f"json      {args.json_out}")
        if own_tmp and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif meta:
            print(f"work      {work} (kept)")
    return code


if __name__ == "__main__":
    sys.exit(main())
