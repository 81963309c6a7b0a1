"""Search over scaffolds: an archive of evaluated programs with their lineage, grown by mutating parents
chosen for being good and novel (a tournament on accuracy + novelty_weight * novelty).

Every scaffold and its score are stored as soon as they exist, so a search killed at any moment resumes
with its archive and lineage intact and spends only the rest of its budget.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import registry
from core.faults import crash_point
from core.scaffolds import archive, spec as S
from core.scaffolds.evaluate import score, trial_rows
from core.scaffolds.mutate import mutate
from core.scaffolds.run import Batch, bank_for, llm_asker

SPLIT = "search"


@dataclass
class Evaluator:
    """One model, one set of labeled texts and the guardrail probes, with model outputs shared by all scaffolds."""
    version: str
    batch: Batch
    truth: np.ndarray
    guard: Batch | None
    guard_expected: np.ndarray
    llm: bool

    def __call__(self, spec: dict) -> tuple[dict, np.ndarray]:
        return score(spec, self.batch, self.truth, self.guard, self.guard_expected)


def evaluator(ws, version: str, examples: pd.DataFrame) -> Evaluator:
    cfg = ws.config().scaffolds
    loaded = registry.load(ws, version)
    bank = bank_for(ws, loaded)
    ask = llm_asker(cfg.llm)
    guard = ws.store.guardrails()
    guard_batch = Batch(loaded, guard["text"].tolist(), bank, ask, cfg.seed) if len(guard) else None
    return Evaluator(version, Batch(loaded, examples["text"].tolist(), bank, ask, cfg.seed),
                     examples["label"].to_numpy(dtype=object), guard_batch,
                     guard["expected_label"].to_numpy(dtype=object) if len(guard) else np.array([]), ask is not None)


# -- novelty ----------------------------------------------------------------------------------------
def features(spec: dict) -> set[str]:
    """What a program is made of: step types by position, and parameter values coarsely bucketed."""
    out = set()
    for i, s in enumerate(spec["steps"]):
        out.add(f"{i}:{s['type']}")
        for k, v in s.items():
            if k == "type":
                continue
            out.add(f"{s['type']}.{k}={v[:60] if isinstance(v, str) else round(float(v), 1)}")
    return out


def novelty(spec: dict, others: list[dict], k: int) -> float:
    """Mean Jaccard distance to the k most similar other programs (1.0 when there are none)."""
    mine = features(spec)
    dists = sorted(1 - len(mine & f) / len(mine | f) for f in map(features, others))
    return float(np.mean(dists[:k])) if dists else 1.0


def pick_parent(pool: list[dict], weight: float, k: int, rng: random.Random) -> dict:
    """Tournament selection on accuracy + weight * novelty: good and unusual parents are explored most."""
    entrants = rng.sample(pool, min(len(pool), max(2, len(pool) // 3)))
    return max(entrants, key=lambda e: (e["accuracy"] + weight * novelty(e["spec"], [o["spec"] for o in pool
                                                                                      if o is not e], k),
                                        rng.random()))


# -- the search -------------------------------------------------------------------------------------
def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def trial_evals(store, version: str, cycle_id: int) -> pd.DataFrame:
    """The search scores this trial gave (on its own rows): scores from another trial's rows do not compare."""
    evals = store.scaffold_evals(version, SPLIT)
    return evals[evals["detail"].map(lambda d: json.loads(d or "{}").get("trial") == cycle_id).astype(bool)]


def search(ws, cycle_id: int, version: str, budget: int, production_id: str, progress: bool = False) -> str:
    """Grow the archive by `budget` new scaffolds (fewer already made by this cycle) and return the id of the
    best scaffold other than production, scored on this trial's search part of the selection rows."""
    store, cfg = ws.store, ws.config().scaffolds
    archive.ensure_builtins(store)
    search_part, _ = trial_rows(store, cfg, cycle_id)
    ev = evaluator(ws, version, search_part)

    def evaluate(spec: dict, others: list[dict]) -> dict:
        metrics, _ = ev(spec)
        metrics["novelty"] = novelty(spec, [p["spec"] for p in others], cfg.novelty_k)
        metrics["detail"]["trial"] = cycle_id
        return metrics

    scored = trial_evals(store, version, cycle_id).set_index("scaffold_id")["accuracy"].to_dict()
    pool: list[dict] = []
    for row in store.scaffolds().itertuples():
        spec = S.parse(row.spec)
        if S.needs_llm(spec) and not ev.llm:
            continue  # kept in the archive, but it cannot run without an endpoint
        if row.id not in scored:  # new, or scored by an earlier trial on other rows: scored again on these
            metrics = evaluate(spec, pool)
            store.save_scaffold_eval(row.id, version, SPLIT, metrics)
            scored[row.id] = metrics["accuracy"]
        pool.append({"id": row.id, "spec": spec, "accuracy": scored[row.id]})
    made = int((store.scaffolds()["cycle_id"] == cycle_id).sum())
    rng = random.Random(cfg.seed * 7919 + cycle_id * 104729 + made)  # resumes differently, deterministically
    attempts = 0
    while made < budget and attempts < budget * 20:
        attempts += 1
        parent = pick_parent(pool, cfg.novelty_weight, cfg.novelty_k, rng)
        child, what = mutate(parent["spec"], rng, llm=ev.llm)
        sid, new = store.add_scaffold(child["name"], child, S.digest(child), "engine", parent["id"], what, cycle_id)
        if not new:
            continue  # already in the archive: mutate again
        crash_point("scaffold_added_before_eval")
        metrics = evaluate(child, pool)
        store.save_scaffold_eval(sid, version, SPLIT, metrics)
        pool.append({"id": sid, "spec": child, "accuracy": metrics["accuracy"]})
        made += 1
        _say(progress, f"  search {made}/{budget}: {sid} from {parent['id']} ({what}) accuracy "
                       f"{metrics['accuracy']:.4f}")
    guard = trial_evals(store, version, cycle_id).set_index("scaffold_id")["guardrail_pass"].to_dict()
    order = {p["id"]: i for i, p in enumerate(pool)}  # creation order: ties go to the older scaffold

    def rank(p: dict) -> tuple:
        g = guard.get(p["id"])
        return p["accuracy"], 0.0 if g is None or g != g else g, -order[p["id"]]  # NaN: no guardrail probes
    return max((p for p in pool if p["id"] != production_id), key=rank)["id"]
