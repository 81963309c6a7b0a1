"""Curation: generators propose samples aimed at diagnosed weaknesses; filters and verifiers decide.

Every candidate is stored with its generator, parents, difficulty, verifier scores, status and the
reason it was kept or dropped. Human decisions from earlier cycles win over every verifier.
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd

from core.curate import counterfactual, feedback, llm, self_label, sql_migrations, templates  # noqa: F401  (they register)
from core.curate import ask, filters, verify
from core.curate.filters import mark
from core.curate.registry import CANDIDATE_COLUMNS, GENERATORS, OPTIONAL_COLUMNS, Context
from core.gates import TRAFFIC_LABELERS
from core.lessons import Remedy

WEIGHED = "a teacher's label, weighed in training by its confidence"
SAMPLE_COLUMNS = ["generator", "parent_id", "text", "label", "confidence", "difficulty", "scores", "status",
                  "reason"]


def _cap_by_mix(group: pd.DataFrame, cap: int, mix: list[float], first: frozenset = frozenset()) -> list:
    """Choose up to cap rows: texts in `first` (the traffic nearest an error cluster) first, then each difficulty
    level's share, best-verified first."""
    ranked = group.sort_values("rank_score", ascending=False)
    chosen: list = list(ranked.index[ranked["text"].isin(first)][:cap])
    weights = np.asarray(mix, dtype=float)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(4, 0.25)
    for level, share in enumerate(weights):
        quota = int(round(cap * share))
        taken = set(chosen)
        chosen += [i for i in ranked.index[ranked["difficulty"] == level] if i not in taken][:quota]
    for i in ranked.index:  # spare capacity goes to the best of whatever is left
        if len(chosen) >= cap:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen[:cap]


def curate(ctx: Context, heldout: pd.DataFrame, reviewed: pd.DataFrame, progress: bool = False
           ) -> tuple[pd.DataFrame, dict]:
    """heldout: the texts no sample may copy (filters.protected: held-out and traffic-probe texts);
    reviewed: earlier human decisions (text, label, status approved|rejected, reviewed_by)."""
    cfg = ctx.cfg
    remedy = ctx.remedy or Remedy()
    ctx.protected = frozenset(heldout["text"].astype(str).map(filters.normalize))
    for name in sorted(remedy.skip_generators & set(cfg.generators)):
        ctx.notes[name] = "sat this cycle out: a rejected candidate's kept set was flooded by it"
    parts = [GENERATORS[name](ctx) for name in cfg.generators if name in GENERATORS
             and name not in remedy.skip_generators]
    cand = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CANDIDATE_COLUMNS + OPTIONAL_COLUMNS)
    cand["status"], cand["reason"] = "candidate", ""
    cand["text"] = cand["text"].astype(str).str.strip()
    rejected = {filters.normalize(t): who for t, who in
                zip(reviewed.loc[reviewed["status"] == "rejected", "text"],
                    reviewed.loc[reviewed["status"] == "rejected", "reviewed_by"])} if len(reviewed) else {}
    for i, text in cand["text"].items():
        who = rejected.get(filters.normalize(text))
        if who:
            mark(cand, i, "dropped", f"rejected by {who} in an earlier review")
    approved = reviewed[reviewed["status"] == "approved"] if len(reviewed) else reviewed
    labeled = pd.concat([ctx.seed[["text", "label"]], approved[["text", "label"]]], ignore_index=True) \
        if len(approved) else ctx.seed[["text", "label"]]
    cand = filters.apply(cand, labeled, heldout, cfg)
    # Written text must read like the workspace's own: an endpoint's or a generator's nonsense goes here, before
    # the verifiers, which a model can be sure of on nonsense. Traffic is what the workspace holds, by definition.
    written = cand.index[(cand["status"] == "candidate") & ~cand["generator"].isin(TRAFFIC_LABELERS)]
    for i, reason in zip(written, filters.unlike_reasons(cand.loc[written, "text"].tolist(), labeled["text"].tolist(),
                                                         ctx.pool["text"].tolist(), cfg.max_surprise_ratio,
                                                         ctx.seed_value)):
        if reason:
            mark(cand, i, "dropped", reason)

    cand["confidence"], cand["difficulty"], cand["scores"] = np.nan, -1, "{}"
    cand["rank_score"] = 0.0
    confirmed = execute(cand, ctx)  # index -> the execution verdict's reason, for samples it confirmed
    alive = cand.index[cand["status"] == "candidate"]
    if len(alive):
        texts = cand.loc[alive, "text"].tolist()
        # The kNN verifier votes in the frozen teacher view when there is one: not the model checking itself.
        if ctx.view is not None:
            lab_emb, knn_emb = ctx.view.embed(labeled["text"].tolist()), ctx.view.embed(texts, progress)
        else:
            (lab_emb, _), knn_emb = ctx.encode(labeled["text"].tolist()), None
        held_back = cand.loc[alive, "label"].isin(remedy.hold_back) | remedy.strict
        weighed = ((cfg.pseudo_labels == "weigh") & cand.loc[alive, "teacher"].notna() & ~held_back).to_numpy()
        scores = verify.score(ctx.loaded, texts, cand.loc[alive, "label"].tolist(),
                              lab_emb, labeled["label"].to_numpy(dtype=object), cfg.knn_k, cfg.perturbed_views,
                              ctx.seed_value, progress, precomputed=ctx.encode(texts), knn_emb=knn_emb,
                              checked=~weighed, encode=ctx.model_outputs)
        scores.index = alive
        cand.loc[alive, "confidence"] = scores["model"]
        cand.loc[alive, "difficulty"] = scores["difficulty"].astype(int)
        cand.loc[alive, "rank_score"] = scores["model"] + scores["knn"] + scores["consistency"].fillna(1.0)
        scores["teacher"] = cand.loc[alive, "teacher"]
        cand.loc[alive, "scores"] = [json.dumps({**{k: round(float(r[k]), 4) for k in
                                                    ("model", "knn", "knn_top", "consistency", "margin", "teacher")
                                                    if pd.notna(r[k])},
                                                 **({"target": t} if isinstance(t, str) else {}),
                                                 **json.loads(old)})
                                     for (_, r), t, old in zip(scores.iterrows(), cand.loc[alive, "target"],
                                                               cand.loc[alive, "scores"])]
        verdicts = []  # (status, reason) per alive sample, written in one go (see filters.apply)
        for (i, row), weigh, generator in zip(scores.iterrows(), weighed, cand.loc[alive, "generator"]):
            if i in confirmed:
                # Execution confirmed the label: the model's verifiers would only drop what it does not know yet,
                # which is what the sample is there to teach. Their scores stay, for difficulty and ranking.
                verdicts.append(("verified", confirmed[i]))
            elif weigh:
                # A teacher's label of real traffic is kept and weighs in training by the teacher's confidence:
                # dropping what the verifiers doubt throws away the hard texts (measured in bench/README).
                verdicts.append(("verified", WEIGHED))
            else:
                reason = verify.verdict(row, cfg, strict=bool(held_back[i]),
                                        independent_only=generator == feedback.NAME)
                verdicts.append(("dropped", reason) if reason else ("verified", ""))
        cand.loc[alive, "status"] = [v[0] for v in verdicts]
        cand.loc[alive, "reason"] = [v[1] for v in verdicts]
    near = near_clusters(ctx, cand.loc[cand["status"] == "verified"])
    for label, group in cand[cand["status"] == "verified"].groupby("label"):
        cap = int(cfg.max_per_class * remedy.cap_factor
                  * (cfg.favoured_class_factor if label in ctx.favoured else 1.0))
        made = group[~group["generator"].isin(TRAFFIC_LABELERS)] if cfg.difficulty_control else group.iloc[:0]
        # Written text can be asked for any difficulty: the class's requested mix decides what is kept, level by
        # level (a level's quota rounded up, so a handful of samples is not all dropped), with no spill-over
        # from a level that has too many. Traffic is what it is: its difficulty is
        # measured, and the mix only orders it when the cap binds (weighting traffic to the mix cost 0.1-0.5
        # points on Banking77, keeping only part of it more).
        quotas = [math.ceil(min(len(made), cap) * share) for share in ctx.requested_mix(label)]
        chosen = [i for level, quota in enumerate(quotas)
                  for i in made[made["difficulty"] == level].sort_values("rank_score", ascending=False).index[:quota]]
        chosen = sorted(chosen, key=lambda i: -made.loc[i, "rank_score"])[:cap]
        traffic = group.drop(made.index)
        keep = set(chosen) | set(_cap_by_mix(traffic, cap - len(chosen), ctx.requested_mix(label), near))
        written = set(made.index)
        verdicts = [("kept", why or "verifiers agree") if i in keep else
                    ("dropped", f"difficulty mix: level {level}'s share of {label} is full ({quotas[level]})")
                    if i in written else ("dropped", f"over the class cap of {cap}")
                    for i, why, level in zip(group.index, group["reason"], group["difficulty"].astype(int))]
        cand.loc[group.index, "status"] = [v[0] for v in verdicts]
        cand.loc[group.index, "reason"] = [v[1] for v in verdicts]
    if len(approved):  # human approvals from earlier reviews are kept whatever the verifiers say
        carried = pd.DataFrame({"generator": "human_review", "parent_id": None, "text": approved["text"],
                                "label": approved["label"], "confidence": np.nan, "difficulty": -1,
                                "scores": "{}", "status": "approved",
                                "reason": [f"approved by {w} in an earlier review" for w in approved["reviewed_by"]]})
        cand = pd.concat([cand, carried], ignore_index=True)
    cand["parent_id"] = cand["parent_id"].astype("Int64")
    cand["difficulty"] = cand["difficulty"].astype(int)
    report = yield_report(cand, ctx)
    return cand[SAMPLE_COLUMNS], report


def near_clusters(ctx: Context, verified: pd.DataFrame) -> frozenset:
    """The verified traffic texts nearest each error cluster of the diagnosis (ask.near_clusters, as many as the
    class caps keep): where a class cap binds, they are kept before the rest, so self-labeling learns most where
    the model errs together."""
    traffic = verified[verified["generator"].isin(TRAFFIC_LABELERS)]
    if not ctx.clusters or traffic.empty:
        return frozenset()
    texts = traffic["text"].tolist()
    rows = ask.near_clusters(ctx, ctx.encode(texts)[0], ctx.cfg.max_per_class, np.ones(len(texts), dtype=bool))
    return frozenset(texts[i] for i in rows)


def execute(cand: pd.DataFrame, ctx: Context) -> dict:
    """The sandbox verifier: run every candidate still standing through the configured execution check (none:
    nothing happens). A sample whose execution contradicts its label, or that the sandbox contained, is dropped
    with the sandbox's reason; the evidence goes into its scores either way. Returns index -> reason of the
    samples execution confirmed. What ran, how fast and why samples fell is kept for the yield report."""
    if ctx.check is None:
        return {}
    alive = cand.index[cand["status"] == "candidate"]
    rows = [{"text": t, "label": lab, "generator": g, "target": tg if isinstance(tg, str) else None}
            for t, lab, g, tg in zip(cand.loc[alive, "text"], cand.loc[alive, "label"], cand.loc[alive, "generator"],
                                     cand.loc[alive, "target"])]
    levels = cand["level"] if "level" in cand else pd.Series(np.nan, index=cand.index)
    start = time.perf_counter()
    results = ctx.check.run(rows)
    seconds = time.perf_counter() - start
    confirmed, dropped = {}, {}
    for i, checked in zip(alive, results):
        v = checked.verdict
        record = {"sandbox": {"keep": v.keep, "reason": v.reason, "evidence": v.evidence,
                              **({"executed_as": checked.label} if checked.label else {})}}
        if pd.notna(levels.get(i)):
            record["level"] = int(levels[i])  # the difficulty the generator wrote it at
        cand.at[i, "scores"] = json.dumps(record, default=str)
        if v.keep:
            confirmed[i] = v.reason
        else:
            mark(cand, i, "dropped", v.reason)
            dropped[checked.category] = dropped.get(checked.category, 0) + 1
    ctx.memo["sandbox"] = {"check": ctx.check.name, "executed": len(results), "confirmed": len(confirmed),
                           "seconds": round(seconds, 2),
                           "checks_per_s": round(len(results) / seconds, 1) if seconds > 0 else None,
                           "dropped_by": dict(sorted(dropped.items(), key=lambda kv: -kv[1]))}
    return confirmed


def _shares(levels: pd.Series) -> list[float]:
    counts = np.bincount(levels[levels >= 0].astype(int), minlength=4)[:4]
    return [round(float(c) / max(int(counts.sum()), 1), 4) for c in counts]


def difficulty_report(samples: pd.DataFrame, ctx: Context) -> dict:
    """Requested against achieved difficulty mix of the kept set: for written samples (whose mix is
    controlled) and for traffic (whose mix is measured), overall and per class of written samples."""
    kept = samples[samples["status"] == "kept"]
    made = kept[~kept["generator"].isin(TRAFFIC_LABELERS)]
    requested = np.mean([ctx.requested_mix(label) for label in kept["label"]], axis=0) if len(kept) else None
    return {"requested": None if requested is None else [round(float(r), 4) for r in requested],
            # per generator that writes at a level: samples asked for and written per level (Context.at_levels)
            "levels": ctx.memo.get("levels", {}),
            # classes whose mix the last curation's results moved (core.curate.difficulty), and why
            "mixes": ctx.mixes, "moved": ctx.memo.get("mixes_moved", {}),
            "achieved_written": _shares(made["difficulty"]), "written_kept": int(len(made)),
            "achieved_traffic": _shares(kept.loc[kept["generator"].isin(TRAFFIC_LABELERS), "difficulty"]),
            "per_class_written": {str(label): {"requested": [round(m, 4) for m in ctx.requested_mix(label)],
                                               "achieved": _shares(group["difficulty"]), "kept": int(len(group))}
                                  for label, group in made.groupby("label")}}


def asks_report(samples: pd.DataFrame, asks: dict) -> dict:
    """Per diagnosis ask: how many samples it asked for, how many the generators produced and kept for it."""
    target = samples["target"]
    kept = samples["status"].isin(["kept", "approved"])
    out = {}
    for key, n in asks.items():
        mine = target == key
        out[key] = {"asked": int(n), "produced": int(mine.sum()), "kept": int((mine & kept).sum()),
                    "by_generator": {str(g): int(c) for g, c in samples.loc[mine, "generator"].value_counts().items()}}
    return out


def yield_report(samples: pd.DataFrame, ctx: Context) -> dict:
    kept = samples["status"].isin(["kept", "approved"])
    per = {g: {"generated": int(len(grp)), "kept": int(kept[grp.index].sum())}
           for g, grp in samples.groupby("generator")}
    asks = asks_report(samples, ctx.asks)
    for name, note in ctx.notes.items():
        per.setdefault(name, {"generated": 0, "kept": 0})["note"] = note
    reasons = samples.loc[~kept, "reason"].str.split(":").str[0].value_counts().to_dict()
    asked, produced = sum(a["asked"] for a in asks.values()), sum(a["produced"] for a in asks.values())
    sandbox = ctx.memo.get("sandbox")
    if sandbox:
        # Per generator too: what each one had executed and how much of it execution confirmed.
        checked = samples["scores"].map(lambda raw: (json.loads(raw or "{}").get("sandbox") or {}).get("keep"))
        for g, grp in samples.groupby("generator"):
            per[g]["executed"] = int(checked[grp.index].notna().sum())
            per[g]["confirmed"] = int((checked[grp.index] == True).sum())  # noqa: E712  (None is not executed)
        sandbox = {**sandbox, "kept": int((kept & (checked == True)).sum())}  # noqa: E712
    summary = f"generated {len(samples):,}, " + (f"executed {sandbox['executed']:,}, " if sandbox else "") \
        + f"kept {int(kept.sum()):,}"
    if sandbox and sandbox["dropped_by"]:
        summary += " (execution dropped " + ", ".join(f"{n:,} {why}" for why, n in
                                                      list(sandbox["dropped_by"].items())[:3]) + ")"
    return {"generated": int(len(samples)), "kept": int(kept.sum()), "per_generator": per, "dropped_by": reasons,
            "asks": asks, "asked": asked, "produced_for_asks": produced,
            "difficulty": difficulty_report(samples, ctx), "sandbox": sandbox,
            "summary": summary
                       + (f"; diagnosis asked for {asked:,} samples, generators produced {produced:,} for its asks"
                          if asks else "")}
