"""Self-diagnosis from the production model's held-out errors: weak classes and confused pairs, ranked."""
from __future__ import annotations

import json

import pandas as pd

COLUMNS = ["rank", "kind", "subject", "severity", "detail", "action"]


def confusion_findings(results: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """results: eval rows with label (truth), predicted, correct, text. Severity = held-out errors explained."""
    errors = results[~results["correct"].astype(bool)]
    rows = []
    pairs = errors.groupby(["label", "predicted"]).agg(n=("text", "size"), examples=("text", list))
    for (truth, pred), row in pairs.sort_values("n", ascending=False).head(top).iterrows():
        rows.append({"kind": "confusion_pair", "subject": f"{truth} -> {pred}", "severity": float(row["n"]),
                     "detail": json.dumps({"true": truth, "predicted": pred, "examples": row["examples"][:5]}),
                     "action": f"curate samples separating '{truth}' from '{pred}'"})
    recall = results.groupby("label")["correct"].mean()
    for label, value in recall[recall < 1.0].sort_values().head(top).items():
        misses = int((~results.loc[results["label"] == label, "correct"].astype(bool)).sum())
        rows.append({"kind": "weak_class", "subject": label, "severity": float(misses),
                     "detail": json.dumps({"recall": float(value)}),
                     "action": f"raise the share of '{label}' in curated data"})
    frame = pd.DataFrame(rows, columns=COLUMNS[1:])
    frame = frame.sort_values("severity", ascending=False, kind="stable").reset_index(drop=True)
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def target_labels(findings: pd.DataFrame) -> set[str]:
    """Classes the curation should favour: both sides of every confused pair and every weak class."""
    labels: set[str] = set()
    for _, row in findings.iterrows():
        detail = json.loads(row["detail"])
        if row["kind"] == "confusion_pair":
            labels.update([detail["true"], detail["predicted"]])
        else:
            labels.add(row["subject"])
    return labels
