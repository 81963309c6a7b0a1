"""The diagnosis page: findings with their trends, the error map, attributions and the confusion matrix."""
from __future__ import annotations

import json

import pandas as pd

from app.queries.shared import _cached, _store, labels


@_cached
def diagnoses(ws: str, cycle_id: int) -> pd.DataFrame:
    return _store(ws).diagnoses(int(cycle_id))


@_cached
def diagnosis_internals(ws: str, cycle_id: int) -> dict:
    return _store(ws).diagnosis_internals(int(cycle_id))


@_cached
def attributions(ws: str, cycle_id: int) -> pd.DataFrame:
    return _store(ws).attributions(int(cycle_id))


@_cached
def confusion(ws: str, version: str) -> pd.DataFrame:
    """Held-out counts: rows are true labels, columns predicted labels, every label on both axes."""
    results = _store(ws).eval_results(version)
    names = labels(ws)
    if results.empty:
        return pd.DataFrame(0, index=names, columns=names)
    table = pd.crosstab(results["label"], results["predicted"])
    return table.reindex(index=names, columns=names, fill_value=0)


@_cached
def confused_pairs(ws: str, version: str) -> pd.DataFrame:
    """Off-diagonal cells of the held-out confusion, most examples first: label, predicted, n, share of
    the label's held-out examples."""
    matrix = confusion(ws, version)
    support = matrix.sum(axis=1)
    rows = [{"label": t, "predicted": p, "n": int(matrix.loc[t, p]),
             "share": matrix.loc[t, p] / support[t] if support[t] else None}
            for t in matrix.index for p in matrix.columns if t != p and matrix.loc[t, p] > 0]
    frame = pd.DataFrame(rows, columns=["label", "predicted", "n", "share"])
    return frame.sort_values(["n", "label"], ascending=[False, True]).reset_index(drop=True)


def token_html(tokens: list[str], scores: list[float]) -> str:
    """Tokens as coloured text: green pushed toward the target class, red pushed away."""
    import html

    peak = max((abs(s) for s in scores), default=1.0) or 1.0
    spans = []
    for token, value in zip(tokens, scores):
        if token in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        alpha = min(1.0, abs(value) / peak)
        rgb = "34,139,34" if value >= 0 else "205,38,38"
        text = html.escape(token[2:] if token.startswith("##") else " " + token)
        spans.append(f'<span style="background: rgba({rgb},{alpha:.2f}); border-radius: 3px" '
                     f'title="{value:+.3f}">{text}</span>')
    return "".join(spans)


# -- findings and their trends ---------------------------------------------------------------------------------
FINDING_KINDS = {"confusion_pair": "Confused pair", "weak_class": "Weak class", "error_cluster": "Error cluster",
                 "production_error": "Production error", "gate_rejection": "Gate rejection"}
TREND_BADGES = {"new": "● new", "persisting": "↻ persisting", "fixed": "✓ fixed"}


def finding_trends(current: pd.DataFrame, previous: pd.DataFrame) -> pd.DataFrame:
    """Each finding of `current` with its trend: new, persisting or fixed (in `previous`, gone now).

    The diagnosis stores each finding's trend (clusters match on shared terms, and it lists the fixed ones
    itself); a diagnosis stored before trends existed is compared with the previous one on (kind, subject)."""
    details = [json.loads(d) if isinstance(d, str) else dict(d or {}) for d in current.get("detail", [])]
    frame = current.assign(detail=details).reset_index(drop=True)
    stored = [d.get("trend") for d in details]
    if len(frame) and all(stored):
        return frame.assign(trend=stored)
    before = {(k, s) for k, s, d in zip(previous.get("kind", []), previous.get("subject", []),
                                         previous.get("detail", []))
              if json.loads(d or "{}").get("trend") != "fixed"}
    now = set(zip(frame.get("kind", []), frame.get("subject", [])))
    frame = frame.assign(trend=["persisting" if pair in before else "new"
                                for pair in zip(frame.get("kind", []), frame.get("subject", []))])
    fixed = pd.DataFrame([{"kind": k, "subject": s, "severity": 0.0, "detail": {"trend": "fixed"},
                           "action": "none: fixed since the last diagnosis", "trend": "fixed"}
                          for k, s in sorted(before - now)])
    if fixed.empty:
        return frame
    fixed.insert(0, "rank", range(len(frame) + 1, len(frame) + len(fixed) + 1))
    return pd.concat([frame, fixed], ignore_index=True)


def _evidence(kind: str, detail: dict, trend: str) -> str:
    """One line a person reads for what the finding rests on (the detail panel shows the rest)."""
    if trend == "fixed":
        return "in the previous diagnosis, not in this one"
    if kind == "weak_class":
        recall = detail.get("recall")
        return (f"recall {100 * recall:.1f}% of {detail.get('support', '?')} examples"
                if recall is not None else "")
    if kind == "error_cluster":
        labels = ", ".join(f"{k} ({v})" for k, v in (detail.get("labels") or {}).items())
        return f"true classes: {labels}" if labels else ""
    if kind in ("confusion_pair", "production_error"):
        tokens = list(dict.fromkeys(t for row in detail.get("top_tokens") or [] for t in row))[:6]
        return f"model leaned on: {', '.join(tokens)}" if tokens else f"{detail.get('n', '?')} example(s)"
    if kind == "gate_rejection":
        return detail.get("reason", "")
    return ""


# (one, many) per source of evidence (core/diagnose/evidence.py)
SOURCES = {"selection": ("selection row", "selection rows"),
           "label_answers": ("label answer the version did not train on", "label answers the version did not train on"),
           "traffic_view": ("traffic text labeled by the seed's neighbours", "traffic texts labeled by the seed's neighbours"),
           "production": ("correction in production", "corrections in production")}


def rests_on_words(counts: dict) -> str:
    """A finding's evidence in words: {"traffic_view": 41, "selection": 1} -> "41 traffic texts ..., 1 selection
    row"."""
    return ", ".join(f"{int(n)} {SOURCES.get(s, (s, s))[int(n) != 1]}" for s, n in counts.items())


def finding_effects(kind: str, subject: str, detail: dict, report: dict | None) -> list[str]:
    """What a finding made its cycle's curation do, in words, from the curate stage's report: the samples its
    ask got (asked, produced, kept), the words the counterfactuals varied for a confused pair, and the
    difficulty mixes that moved for its classes. Empty when the cycle has not curated yet."""
    if not report:
        return []
    out = []
    pair = f"{detail.get('true')}->{detail.get('predicted')}" if kind in ("confusion_pair", "production_error") \
        else None
    key = f"pair:{pair}" if pair else f"class:{subject}" if kind == "weak_class" else None
    ask = (report.get("asks") or {}).get(key) if key else None
    if ask:
        made = ", ".join(f"{g} {n}" for g, n in ask.get("by_generator", {}).items())
        out.append(f"asked for {ask['asked']} samples; the generators wrote {ask['produced']} ({made or 'none'}) "
                   f"and {ask['kept']} were kept")
    note = ((report.get("per_generator") or {}).get("counterfactual") or {}).get("note") or ""
    varied = [part.split(": varied ", 1)[1].split(" (")[0] for part in note.split("; ")
              if pair and part.startswith(f"{pair}: varied ")]
    if varied:
        out.append(f"the counterfactuals varied the words the model leaned on: {varied[0]}")
    labels = {detail.get("true"), detail.get("predicted"), subject}
    moved = (report.get("difficulty") or {}).get("moved") or {}
    out += [f"difficulty mix of {label} moved: {why}" for label, why in moved.items() if label in labels]
    return out


@_cached
def findings(ws: str, cycle_id: int) -> pd.DataFrame:
    """A cycle's findings for people: rank, trend badge, kind label, subject, errors explained, evidence,
    action, and the parsed detail (a dict) for the page's detail panel."""
    columns = ["rank", "trend", "badge", "kind", "kind_label", "subject", "severity", "evidence", "action",
               "detail"]
    store = _store(ws)
    current = store.diagnoses(int(cycle_id))
    _, previous = store.latest_diagnosis(before_cycle=int(cycle_id))
    if current.empty and (previous.empty or not store.diagnosis_internals(int(cycle_id))):
        return pd.DataFrame(columns=columns)  # nothing found, or the cycle has not diagnosed yet
    frame = finding_trends(current, previous)
    frame["badge"] = frame["trend"].map(lambda t: TREND_BADGES.get(t, t))
    frame["kind_label"] = frame["kind"].map(lambda k: FINDING_KINDS.get(k, str(k).replace("_", " ")))
    frame["evidence"] = [_evidence(k, d, t) for k, d, t in zip(frame["kind"], frame["detail"], frame["trend"])]
    return frame[columns]


# -- the error map ---------------------------------------------------------------------------------------------
CORRECT, UNCLUSTERED = "correct", "other errors"


def _hover_text(text, width: int = 60) -> str:
    import html
    import textwrap

    return "<br>".join(textwrap.wrap(html.escape(str(text or "")), width)[:6])


@_cached
def error_map(ws: str, cycle_id: int) -> pd.DataFrame:
    """The held-out (selection part) examples the diagnosis embedded, at its 2-D coordinates, each with its
    text, prediction and group: the error cluster it belongs to, "other errors" or "correct"; `terms` are the
    cluster's distinctive terms, `hover` the text wrapped for a chart's hover box."""
    columns = ["example_id", "x", "y", "label", "predicted", "correct", "text", "group", "terms", "hover"]
    stored = diagnosis_internals(ws, cycle_id).get("error_map")
    if not stored or not stored.get("example_ids"):
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame({"example_id": stored["example_ids"], "x": stored["x"], "y": stored["y"],
                          "label": stored["label"], "correct": [bool(c) for c in stored["correct"]]})
    store = _store(ws)
    if "text" in stored:  # rows of every source carry their text and prediction
        frame = frame.assign(predicted=stored["predicted"], text=stored["text"])
    else:  # a diagnosis stored before: selection rows only, read from the version's results
        version = (store.cycle(int(cycle_id)) or {}).get("parent_version")
        if not version:  # an on-demand diagnosis (cycle 0): its attributions name the version
            attr = store.attributions(int(cycle_id))
            version = attr["version"].iloc[0] if len(attr) else None
        results = store.eval_results(version, "selection") if version else \
            pd.DataFrame(columns=["example_id", "predicted", "text"])
        frame = frame.merge(results[["example_id", "predicted", "text"]], on="example_id", how="left")
    clusters = store.diagnoses(int(cycle_id))
    member_of: dict[int, tuple[str, str]] = {}
    for subject, detail in zip(clusters["subject"], clusters["detail"]):
        d = json.loads(detail or "{}")
        for m in d.get("members") or []:
            member_of[int(m["example_id"])] = (subject, ", ".join(d.get("terms") or []))
    frame["group"] = [CORRECT if ok else member_of.get(int(e), (UNCLUSTERED, ""))[0]
                      for e, ok in zip(frame["example_id"], frame["correct"])]
    frame["terms"] = [member_of.get(int(e), ("", "–"))[1] if not ok else "–"
                      for e, ok in zip(frame["example_id"], frame["correct"])]
    frame["hover"] = frame["text"].map(_hover_text)
    return frame[columns]
