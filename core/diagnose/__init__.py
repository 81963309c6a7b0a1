"""Self-diagnosis: the production model finds its own weaknesses, says why, and names an action for each.

A diagnosis combines error patterns (pairs, weak classes, clusters), Captum token attributions,
activation statistics and attention-head importance, and is stored per cycle with a ranked list of
weaknesses; the layers whose units best separate failures from successes get the next training's adapters
(head importance picks when there is nothing to separate).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from core import model as M
from core.config import DiagnoseConfig
from core.diagnose.attribution import attribution_rows, top_tokens
from core.diagnose.errors import (PAIR_KINDS, asks, class_findings, cluster_findings, pair_findings,  # noqa: F401
                                  cluster_texts, leaned_on, production_findings, rank, rests_on, target_labels)
from core.diagnose.internals import activation_stats, choose_lora_layers, head_importance

__all__ = ["PAIR_KINDS", "diagnose", "finding_keys", "target_labels"]


def diagnose(loaded: M.Loaded, results: pd.DataFrame, cfg: DiagnoseConfig, lora_layers: int,
             previous_keys: set[str], feedback: pd.DataFrame | None = None,
             rejections: list[dict] | None = None, evidence: pd.DataFrame | None = None) -> dict:
    """results: the version's eval rows on the selection part of the held-out set (example_id, text, label,
    predicted, confidence, correct); evidence: more rows of that shape from sources that are no gate row, each
    with its `source` (core.diagnose.evidence: label answers, traffic the view labels), diagnosed with them and
    attributed after them; feedback: people's corrections of its production predictions (text, served, label);
    rejections: findings from gates that rejected its earlier candidates (core.lessons). Rejections rank first,
    then feedback. Every finding's detail says what it rests on (`rests_on`: rows per source)."""
    results = pd.concat([results.assign(source="selection"), evidence], ignore_index=True) \
        if evidence is not None and len(evidence) else results.assign(source="selection")
    results = results.reset_index(drop=True)
    pairs = pair_findings(results, cfg.samples_per_error, cfg.top_findings)
    findings = pairs + class_findings(results, cfg.top_findings, pairs, cfg.samples_per_error)
    embeddings = M.embed_texts(loaded.tokenizer, loaded.model, results["text"].tolist(), loaded.max_length)
    clusters, coords = cluster_findings(results, embeddings, cfg.max_clusters, cfg.samples_per_error)
    findings += clusters
    if feedback is not None and len(feedback):
        findings += production_findings(feedback, cfg.samples_per_error, cfg.top_findings)
    findings += rejections or []
    attributions = attribution_rows(loaded, results, cfg.max_attributions, cfg.correct_attributions,
                                    n_steps=cfg.attribution_steps)
    # The tokens the model leaned on when it erred: evidence for each confused pair.
    wrong_attr = attributions[~attributions["correct"]] if len(attributions) else attributions
    special = set(loaded.tokenizer.all_special_tokens)
    for f in findings:
        if f["kind"] == "confusion_pair" and len(wrong_attr):
            ids = set(f["detail"]["example_ids"])
            rows = wrong_attr[wrong_attr["example_id"].isin(ids)]
            f["detail"]["top_tokens"] = [top_tokens(json.loads(t), json.loads(s), special=special)
                                         for t, s in zip(rows["tokens"], rows["scores"])][:5]
    failed = ~results["correct"].astype(bool).to_numpy()
    internals: dict = {"error_map": {"example_ids": [int(i) for i in results["example_id"]],
                                     "x": coords[:, 0].round(4).tolist(), "y": coords[:, 1].round(4).tolist(),
                                     "label": results["label"].tolist(), "correct": (~failed).tolist(),
                                     "predicted": results["predicted"].tolist(), "text": results["text"].tolist(),
                                     "source": results["source"].tolist()},
                       "rests_on": rests_on(results["source"])}
    activations = activation_stats(loaded, results["text"].tolist(), failed)
    internals["activations"] = activations.to_dict("records")
    choice = None
    if len(activations):
        weakest = activations.sort_values("ratio").iloc[0]
        internals["activations_summary"] = (f"layer {int(weakest['layer'])} fires weakest on failures "
                                            f"(failed/passed mean |activation| {weakest['ratio']:.3f}); units "
                                            + ", ".join(str(u["unit"]) for u in weakest["weak_units"]))
        layers, reason = choose_lora_layers(activations["auc"].to_numpy(), lora_layers,
                                            "units separating failures from successes", "AUC", "{:.2f}")
        choice = {"lora_layers": layers, "reason": reason, "source": "activations",
                  "units": {int(r["layer"]): r["separating_units"][:3] for _, r in activations.iterrows()
                            if int(r["layer"]) in layers}}
    if cfg.head_analysis:
        failing = sorted(set(results.loc[failed, "label"]))
        subset = results[results["label"].isin(failing)]
        index = {name: i for i, name in enumerate(loaded.labels)}
        heads = head_importance(loaded, subset["text"].tolist(), [index[x] for x in subset["label"]])
        if heads.size:
            per_layer = heads.sum(1)
            layers, reason = choose_lora_layers(per_layer, lora_layers, "most head importance for the failing "
                                                "classes", total=f"of {per_layer.sum():.3g}")
            flat = np.sort(heads.ravel())
            low = float(flat[max(0, int(len(flat) * 0.25) - 1)])
            internals["heads"] = {"importance": heads.round(6).tolist(), "failing_classes": failing,
                                  "low_signal": [[int(l), int(h)] for l, h in zip(*np.where(heads <= low))],
                                  "lora_layers": layers, "reason": reason}
            if choice is None and layers:
                choice = {"lora_layers": layers, "reason": reason, "source": "heads"}
    if choice and choice["lora_layers"]:
        internals["lora_choice"] = choice  # read by core.cycle when it sets up the next training
    return {"findings": rank(findings, previous_keys), "attributions": attributions, "internals": internals}


def finding_keys(rows: pd.DataFrame) -> set[str]:
    keys = set()
    for detail in rows.get("detail", []):
        d = json.loads(detail)
        if d.get("trend") != "fixed" and "key" in d:
            keys.add(d["key"])
    return keys
