"""Curation: generators propose samples aimed at diagnosed weaknesses; filters and verifiers decide.

Every candidate is stored with its generator, parents, difficulty, verifier scores, status and the
reason it was kept or dropped. Human decisions from earlier cycles win over every verifier.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core.curate import counterfactual, feedback, llm, self_label, templates  # noqa: F401  (they register)
from core.curate import filters, verify
from core.curate.registry import GENERATORS, Context
from core.lessons import Remedy

SAMPLE_COLUMNS = ["generator", "parent_id", "text", "label", "confidence", "difficulty", "scores", "status",
                  "reason"]


def _cap_by_mix(group: pd.DataFrame, cap: int, mix: list[float]) -> list:
    """Choose up to cap rows, filling each difficulty level's share first, best-verified first."""
    ranked = group.sort_values("rank_score", ascending=False)
    chosen: list = []
    weights = np.asarray(mix, dtype=float)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(4, 0.25)
    for level, share in enumerate(weights):
        quota = int(round(cap * share))
        chosen += list(ranked.index[ranked["difficulty"] == level][:quota])
    for i in ranked.index:  # spare capacity goes to the best of whatever is left
        if len(chosen) >= cap:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen[:cap]


def curate(ctx: Context, heldout: pd.DataFrame, reviewed: pd.DataFrame, progress: bool = False
           ) -> tuple[pd.DataFrame, dict]:
    """reviewed: earlier human decisions (text, label, status approved|rejected, reviewed_by)."""
    cfg = ctx.cfg
    remedy = ctx.remedy or Remedy()
    for name in sorted(remedy.skip_generators & set(cfg.generators)):
        ctx.notes[name] = "sat this cycle out: a rejected candidate's kept set was flooded by it"
    parts = [GENERATORS[name](ctx) for name in cfg.generators if name in GENERATORS
             and name not in remedy.skip_generators]
    cand = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["generator", "parent_id",
                                                                                   "text", "label"])
    cand["status"], cand["reason"] = "candidate", ""
    cand["text"] = cand["text"].astype(str).str.strip()
    rejected = {filters.normalize(t): who for t, who in
                zip(reviewed.loc[reviewed["status"] == "rejected", "text"],
                    reviewed.loc[reviewed["status"] == "rejected", "reviewed_by"])} if len(reviewed) else {}
    for i, text in cand["text"].items():
        who = rejected.get(filters.normalize(text))
        if who:
            cand.loc[i, ["status", "reason"]] = ["dropped", f"rejected by {who} in an earlier review"]
    approved = reviewed[reviewed["status"] == "approved"] if len(reviewed) else reviewed
    labeled = pd.concat([ctx.seed[["text", "label"]], approved[["text", "label"]]], ignore_index=True) \
        if len(approved) else ctx.seed[["text", "label"]]
    cand = filters.apply(cand, labeled, heldout, cfg)

    alive = cand.index[cand["status"] == "candidate"]
    cand["confidence"], cand["difficulty"], cand["scores"] = np.nan, -1, "{}"
    cand["rank_score"] = 0.0
    if len(alive):
        texts = cand.loc[alive, "text"].tolist()
        # The kNN verifier votes in the frozen teacher view when there is one: not the model checking itself.
        if ctx.view is not None:
            lab_emb, knn_emb = ctx.view.embed(labeled["text"].tolist()), ctx.view.embed(texts, progress)
        else:
            (lab_emb, _), knn_emb = ctx.encode(labeled["text"].tolist()), None
        scores = verify.score(ctx.loaded, texts, cand.loc[alive, "label"].tolist(),
                              lab_emb, labeled["label"].to_numpy(dtype=object), cfg.knn_k, cfg.perturbed_views,
                              ctx.seed_value, progress, precomputed=ctx.encode(texts), knn_emb=knn_emb)
        scores.index = alive
        cand.loc[alive, "confidence"] = scores["model"]
        cand.loc[alive, "difficulty"] = scores["difficulty"].astype(int)
        cand.loc[alive, "rank_score"] = scores["model"] + scores["knn"] + scores["consistency"]
        cand.loc[alive, "scores"] = [json.dumps({k: round(float(r[k]), 4) for k in
                                                 ("model", "knn", "knn_top", "consistency", "margin")})
                                     for _, r in scores.iterrows()]
        for i, row in scores.iterrows():
            held_back = remedy.strict or cand.loc[i, "label"] in remedy.hold_back
            reason = verify.verdict(row, cfg, strict=held_back,
                                    independent_only=cand.loc[i, "generator"] == feedback.NAME)
            cand.loc[i, ["status", "reason"]] = ["dropped", reason] if reason else ["verified", ""]
    for label, group in cand[cand["status"] == "verified"].groupby("label"):
        cap = int(cfg.max_per_class * remedy.cap_factor
                  * (cfg.favoured_class_factor if label in ctx.favoured else 1.0))
        keep = set(_cap_by_mix(group, cap, cfg.difficulty_mix))
        for i in group.index:
            cand.loc[i, ["status", "reason"]] = (["kept", "verifiers agree"] if i in keep
                                                 else ["dropped", f"over the class cap of {cap}"])
    if len(approved):  # human approvals from earlier reviews are kept whatever the verifiers say
        carried = pd.DataFrame({"generator": "human_review", "parent_id": None, "text": approved["text"],
                                "label": approved["label"], "confidence": np.nan, "difficulty": -1,
                                "scores": "{}", "status": "approved",
                                "reason": [f"approved by {w} in an earlier review" for w in approved["reviewed_by"]]})
        cand = pd.concat([cand, carried], ignore_index=True)
    cand["parent_id"] = cand["parent_id"].astype("Int64")
    cand["difficulty"] = cand["difficulty"].astype(int)
    report = yield_report(cand, ctx.notes)
    return cand[SAMPLE_COLUMNS], report


def yield_report(samples: pd.DataFrame, notes: dict) -> dict:
    kept = samples["status"].isin(["kept", "approved"])
    per = {g: {"generated": int(len(grp)), "kept": int(kept[grp.index].sum())}
           for g, grp in samples.groupby("generator")}
    for name, note in notes.items():
        per.setdefault(name, {"generated": 0, "kept": 0})["note"] = note
    reasons = samples.loc[~kept, "reason"].str.split(":").str[0].value_counts().to_dict()
    return {"generated": int(len(samples)), "kept": int(kept.sum()), "per_generator": per, "dropped_by": reasons,
            "summary": f"generated {len(samples):,}, kept {int(kept.sum()):,}"}
