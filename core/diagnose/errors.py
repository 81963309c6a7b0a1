"""Error patterns in held-out predictions: confused pairs, weak classes and clusters of failures.

Severity is the number of held-out errors a finding explains, so findings of every kind rank together;
errors people corrected in production (feedback) rank above all of them: they are real traffic.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

COLUMNS = ["rank", "kind", "subject", "severity", "detail", "action"]
KIND_ORDER = {"gate_rejection": -2, "production_error": -1, "confusion_pair": 0, "error_cluster": 1, "weak_class": 2}
PAIR_KINDS = ("production_error", "confusion_pair")  # findings naming a (true, predicted) pair


def _sourced(rows: pd.DataFrame, default: str = "selection") -> pd.DataFrame:
    """rows with a `source` column (core/diagnose/evidence.py): what each row of evidence is."""
    return rows if "source" in rows else rows.assign(source=default)


def rests_on(sources) -> dict[str, int]:
    """How many rows of each source a finding rests on, largest first."""
    return dict(Counter(sources).most_common())


def _pair_findings(errors: pd.DataFrame, predicted: str, ids: str, kind: str, key: str, top: int,
                   samples_per_error: int) -> list[dict]:
    """One finding per (true label, predicted) pair of the errors, most frequent first."""
    rows = []
    pairs = errors.groupby(["label", predicted]).agg(n=("text", "size"), examples=("text", list), ids=(ids, list),
                                                     sources=("source", list))
    for (truth, pred), row in pairs.sort_values("n", ascending=False).head(top).iterrows():
        n = int(row["n"])
        rows.append({"kind": kind, "subject": f"{truth} -> {pred}", "severity": float(n),
                     "key": f"{key}:{truth}->{pred}",
                     "detail": {"true": truth, "predicted": pred, "examples": row["examples"][:5], "n": n,
                                ids: row["ids"], "asked": n * samples_per_error, "rests_on": rests_on(row["sources"])},
                     "action": f"generate {n * samples_per_error} samples separating '{truth}' from '{pred}'"})
    return rows


def production_findings(feedback: pd.DataFrame, samples_per_error: int, top: int = 20) -> list[dict]:
    """feedback: prediction_id, text, served, label (the correction). Each (true, served) pair people
    corrected is one finding; its severity is how many production predictions they corrected."""
    errors = _sourced(feedback[feedback["served"] != feedback["label"]], "production")
    rows = _pair_findings(errors, "served", "prediction_id", "production_error", "production_error", top,
                          samples_per_error)
    for row in rows:
        row["detail"]["prediction_ids"] = row["detail"].pop("prediction_id")[:50]
        row["action"] += f" (corrected {row['detail']['n']}x in production)"
    return rows


def pair_findings(results: pd.DataFrame, samples_per_error: int, top: int = 20) -> list[dict]:
    results = _sourced(results)
    rows = _pair_findings(results[~results["correct"].astype(bool)], "predicted", "example_id", "confusion_pair",
                          "pair", top, samples_per_error)
    for row in rows:
        row["detail"]["example_ids"] = [int(i) for i in row["detail"].pop("example_id")]
    return rows


def class_findings(results: pd.DataFrame, top: int = 20, pairs: list[dict] | None = None,
                   samples_per_error: int = 20) -> list[dict]:
    """Severity counts the class's misses that no repeated confusion pair already explains, so the
    same error is not ranked twice: a class whose misses scatter is weak, one that leaks to one
    neighbour is a pair."""
    explained: dict[str, int] = {}
    for p in pairs or []:
        if p["severity"] >= 2:
            explained[p["detail"]["true"]] = explained.get(p["detail"]["true"], 0) + int(p["severity"])
    rows = []
    results = _sourced(results)
    for label, group in results.groupby("label"):
        correct = group["correct"].astype(bool)
        predicted_as = results["predicted"] == label
        precision = float((predicted_as & results["correct"].astype(bool)).sum() / predicted_as.sum()) \
            if predicted_as.any() else None
        misses = int((~correct).sum())
        residual = misses - explained.get(label, 0)
        if residual > 0:
            rows.append({"kind": "weak_class", "subject": label, "severity": float(residual),
                         "key": f"class:{label}",
                         "detail": {"recall": float(correct.mean()), "precision": precision,
                                    "support": len(group), "misses": misses, "asked": residual * samples_per_error,
                                    "rests_on": rests_on(group["source"])},
                         "action": f"generate {residual * samples_per_error} samples of '{label}' and raise its "
                                   "share in curated data"})
    return sorted(rows, key=lambda r: -r["severity"])[:top]


def distinctive_terms(docs: list[str], k: int = 3) -> list[list[str]]:
    """Class-based TF-IDF: each document is all the texts of one cluster."""
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        vec = CountVectorizer(stop_words="english", ngram_range=(1, 2), token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
        counts = vec.fit_transform(docs).toarray().astype(float)
    except ValueError:  # nothing but stop words
        return [[] for _ in docs]
    tf = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    avg_words = counts.sum() / max(len(docs), 1)
    idf = np.log(1 + avg_words / np.maximum(counts.sum(0), 1))
    scores = tf * idf
    vocab = np.asarray(vec.get_feature_names_out())
    return [list(vocab[np.argsort(-row)[:k]][row[np.argsort(-row)[:k]] > 0]) for row in scores]


def cluster_findings(results: pd.DataFrame, embeddings: np.ndarray, max_clusters: int,
                     samples_per_error: int) -> tuple[list[dict], np.ndarray]:
    """KMeans over the embeddings of failures, each cluster named by its distinctive terms.

    Returns the findings and 2-D coordinates (PCA over every held-out example) for the error map."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    coords = PCA(n_components=2, random_state=0).fit_transform(embeddings) if len(embeddings) >= 2 \
        else np.zeros((len(embeddings), 2))
    wrong = ~results["correct"].astype(bool).to_numpy()
    n_errors = int(wrong.sum())
    k = min(max_clusters, n_errors // 4)
    if k < 2:
        return [], coords
    labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(embeddings[wrong])
    errors = _sourced(results)[wrong].reset_index(drop=True)
    docs = [" ".join(errors.loc[labels == c, "text"]) for c in range(k)]
    names = distinctive_terms(docs)
    err_coords = coords[wrong]
    rows = []
    for c in range(k):
        members = errors[labels == c]
        terms = names[c] or [f"cluster {c}"]
        rows.append({"kind": "error_cluster", "subject": " / ".join(terms), "severity": float(len(members)),
                     "key": "cluster:" + "|".join(sorted(terms)),
                     "detail": {"terms": terms, "labels": members["label"].value_counts().to_dict(),
                                "predicted": members["predicted"].value_counts().to_dict(),
                                "asked": {str(k): int(v) * samples_per_error
                                          for k, v in members["label"].value_counts().items()},
                                "examples": members["text"].head(5).tolist(), "rests_on": rests_on(members["source"]),
                                "members": [{"example_id": int(e), "text": t, "x": float(x), "y": float(y)}
                                            for e, t, (x, y) in zip(members["example_id"], members["text"],
                                                                    err_coords[labels == c])]},
                     "action": f"generate {len(members) * samples_per_error} samples like '{' / '.join(terms)}' "
                               f"with their true labels ({', '.join(members['label'].unique()[:3])})"})
    return rows, coords


def _trend(row: dict, previous: set[str]) -> str:
    if row["key"].startswith("cluster:"):
        terms = set(row["key"][8:].split("|"))
        seen = any(terms & set(p[8:].split("|")) for p in previous if p.startswith("cluster:"))
        return "persisting" if seen else "new"
    return "persisting" if row["key"] in previous else "new"


def rank(findings: list[dict], previous_keys: set[str]) -> pd.DataFrame:
    """Rank by severity; mark each finding new or persisting, and add the earlier ones now fixed."""
    current = {f["key"] for f in findings}
    for f in findings:
        f["detail"] = {**f["detail"], "trend": _trend(f, previous_keys), "key": f["key"]}
    fixed = [{"kind": key.split(":", 1)[0].replace("pair", "confusion_pair").replace("class", "weak_class")
              .replace("cluster", "error_cluster"), "subject": key.split(":", 1)[1], "severity": 0.0, "key": key,
              "detail": {"trend": "fixed", "key": key}, "action": "none: fixed since the last diagnosis"}
             for key in sorted(previous_keys - current)
             if not (key.startswith("cluster:") and _trend({"key": key}, current) == "persisting")]
    # A gate's rejection first (the last candidate failed for it), then production errors (a person saw
    # the model fail on real traffic), then held-out errors by how many they explain.
    ordered = sorted(findings, key=lambda f: (min(KIND_ORDER[f["kind"]], 0), -f["severity"],
                                              KIND_ORDER[f["kind"]])) + fixed
    frame = pd.DataFrame([{"kind": f["kind"], "subject": f["subject"], "severity": f["severity"],
                           "detail": json.dumps(f["detail"], default=str), "action": f["action"]}
                          for f in ordered], columns=COLUMNS[1:])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return frame


def asks(findings: pd.DataFrame, samples_per_error: int) -> dict[str, int]:
    """How many samples the diagnosis' actions ask for, per target: "pair:TRUE->PREDICTED" for a confused
    pair, "class:LABEL" for a class (weak classes and error clusters' true labels). Generators are asked
    for these counts and the yield report shows asked against produced."""
    out: dict[str, int] = {}
    for _, row in findings.iterrows():
        detail = json.loads(row["detail"])
        if detail.get("trend") == "fixed":
            continue
        # a diagnosis stored before findings carried `asked`: its severity is the count of explained errors
        asked = detail.get("asked", row["severity"] * samples_per_error)
        if row["kind"] in PAIR_KINDS:
            wanted = {f"pair:{detail['true']}->{detail['predicted']}": asked}
        elif row["kind"] == "weak_class":
            wanted = {f"class:{row['subject']}": asked}
        elif row["kind"] == "error_cluster":
            per_label = detail.get("asked") or {k: v * samples_per_error for k, v in detail.get("labels", {}).items()}
            wanted = {f"class:{label}": n for label, n in per_label.items()}
        else:
            continue
        for key, n in wanted.items():
            out[key] = out.get(key, 0) + int(n)
    return out


def target_labels(findings: pd.DataFrame) -> set[str]:
    """Classes the curation should favour: both sides of every confused pair, weak classes, cluster labels."""
    labels: set[str] = set()
    for _, row in findings.iterrows():
        detail = json.loads(row["detail"])
        if detail.get("trend") == "fixed":
            continue
        if row["kind"] in PAIR_KINDS:
            labels.update([detail["true"], detail["predicted"]])
        elif row["kind"] == "weak_class":
            labels.add(row["subject"])
        elif row["kind"] == "error_cluster":
            labels.update(detail.get("labels", {}))
    return labels


def leaned_on(findings: pd.DataFrame, k: int = 3) -> dict[str, list[str]]:
    """Per confused pair ("TRUE->PREDICTED"), the words the model leaned on in those errors: the tokens Captum
    attributed most toward the wrong class (a confusion's `top_tokens`), most frequent first, whole words only
    (no "##" word piece, no punctuation, at least 3 letters, no stop word), at most k. The counterfactual generator varies them."""
    out: dict[str, list[str]] = {}
    for _, row in findings.iterrows():
        detail = json.loads(row["detail"])
        if row["kind"] != "confusion_pair" or detail.get("trend") == "fixed" or not detail.get("top_tokens"):
            continue
        counts = Counter(t.lower() for tokens in detail["top_tokens"] for t in tokens
                         if t.isalpha() and len(t) >= 3 and t.lower() not in ENGLISH_STOP_WORDS)
        if counts:
            out[f"{detail['true']}->{detail['predicted']}"] = [t for t, _ in counts.most_common(k)]
    return out


def cluster_texts(findings: pd.DataFrame, selection: pd.DataFrame) -> list[list[str]]:
    """The member texts of each error cluster the diagnosis found and that is not fixed (selection rows and traffic
    the view disagreed on). selection (id, text): for a diagnosis stored before members carried their text."""
    text = selection.set_index("id")["text"]
    out = []
    for _, row in findings.iterrows():
        detail = json.loads(row["detail"])
        if row["kind"] == "error_cluster" and detail.get("trend") != "fixed" and detail.get("members"):
            out.append([m["text"] if "text" in m else text[m["example_id"]] for m in detail["members"]
                        if "text" in m or m["example_id"] in text.index])
    return out

