"""Filters that need no model: sanity, exact and near duplicates, contamination of held-out and probe texts, and
written text unlike anything the workspace holds."""
from __future__ import annotations

import math
import random
import re
import unicodedata
from collections import Counter

import numpy as np
import pandas as pd

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def sanity_reason(text: str, min_chars: int, max_chars: int) -> str | None:
    stripped = text.strip()
    if len(stripped) < min_chars:
        return f"sanity: shorter than {min_chars} characters"
    if len(stripped) > max_chars:
        return f"sanity: longer than {max_chars} characters"
    printable = sum(ch.isprintable() for ch in stripped) / len(stripped)
    letters = sum(ch.isalpha() for ch in stripped) / len(stripped)
    if printable < 0.95:
        return "sanity: control characters"
    if letters < 0.3:
        return "sanity: too few letters"
    return None


def char_vectors(texts: list[str], fitted=None):
    """Character 3-5-gram TF-IDF: robust to the typos and small edits that separate near-duplicates."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = fitted or TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=1, sublinear_tf=True)
    matrix = vec.transform(texts) if fitted else vec.fit_transform(texts)
    return vec, matrix


def nearest(query, reference, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the most similar reference row and the cosine (rows are L2-normalised)."""
    best_sim = np.zeros(query.shape[0], dtype=np.float32)
    best_idx = np.full(query.shape[0], -1, dtype=np.int64)
    if reference.shape[0] == 0:
        return best_idx, best_sim
    for start in range(0, query.shape[0], chunk):
        sims = (query[start:start + chunk] @ reference.T).toarray()
        best_idx[start:start + chunk] = sims.argmax(1)
        best_sim[start:start + chunk] = sims.max(1)
    return best_idx, best_sim


def protected(heldout: pd.DataFrame, probe: pd.DataFrame) -> pd.DataFrame:
    """The texts no sample may copy, each with what it is: held-out texts, and the traffic probe's, whose
    confidences estimate accuracy on traffic and so must stay unseen like the held-out rows."""
    return pd.concat([heldout[["text"]].assign(kind="held-out"), probe[["text"]].assign(kind="traffic probe")],
                     ignore_index=True)


def near_protected(texts: list[str], protected_texts: pd.DataFrame, similarity: float) -> np.ndarray:
    """Which texts copy a protected one (`protected`): the same text normalized, or as similar as `similarity`
    by character n-gram cosine, the contamination guard `apply` holds new samples to."""
    texts = list(texts)
    if not texts or protected_texts.empty:
        return np.zeros(len(texts), dtype=bool)
    reference = list(protected_texts["text"])
    vec, _ = char_vectors(texts + reference)
    _, sim = nearest(char_vectors(texts, vec)[1], char_vectors(reference, vec)[1])
    same = set(map(normalize, reference))
    return (sim >= similarity) | np.array([normalize(t) in same for t in texts])


def mark(frame: pd.DataFrame, i, status: str, reason: str) -> None:
    """One sample's status and reason. Two scalar writes: `.loc[i, [cols]] = [...]` costs milliseconds a row,
    which made curation quadratic in practice (measured: 37 s of a 100-class test's 52 s of curation)."""
    frame.at[i, "status"] = status
    frame.at[i, "reason"] = reason


def apply(candidates: pd.DataFrame, labeled: pd.DataFrame, heldout: pd.DataFrame, cfg) -> pd.DataFrame:
    """Set status/reason for samples that fail a model-free filter; candidates are in priority order.
    heldout: the texts no sample may copy (`protected`; without a `kind` column they count as held-out).
    Statuses are kept in lists and written back once: a pandas write per sample cost 0.2 ms, seconds a cycle."""
    out = candidates.copy()
    labels, texts = list(out.index), out["text"].tolist()
    status, reason = out["status"].tolist(), out["reason"].tolist()

    def drop(pos: int, why: str) -> None:
        status[pos], reason[pos] = "dropped", why

    def alive() -> list[int]:
        return [pos for pos, s in enumerate(status) if s == "candidate"]

    for pos in alive():
        why = sanity_reason(texts[pos], cfg.min_chars, cfg.max_chars)
        if why:
            drop(pos, why)
    labeled_norm = set(labeled["text"].map(normalize))
    seen: dict[str, object] = {}
    for pos in alive():
        key = normalize(texts[pos])
        if key in labeled_norm:
            drop(pos, "exact duplicate of a labeled example")
        elif key in seen:
            drop(pos, f"exact duplicate of sample #{seen[key]}")
        else:
            seen[key] = labels[pos]
    rest = alive()
    if rest:
        vec, _ = char_vectors([texts[p] for p in rest] + list(labeled["text"]) + list(heldout["text"]))
        cand = char_vectors([texts[p] for p in rest], vec)[1]
        held_idx, held_sim = nearest(cand, char_vectors(list(heldout["text"]), vec)[1])
        lab_idx, lab_sim = nearest(cand, char_vectors(list(labeled["text"]), vec)[1])
        held_texts = heldout["text"].tolist()
        held_kinds = heldout["kind"].tolist() if "kind" in heldout else ["held-out"] * len(held_texts)
        for k, pos in enumerate(rest):
            if held_sim[k] >= cfg.contamination_similarity:
                j = held_idx[k]
                drop(pos, f"contamination: {held_sim[k]:.2f} similar to {held_kinds[j]} text {held_texts[j][:60]!r}")
            elif lab_sim[k] >= cfg.near_duplicate_similarity:
                drop(pos, f"near-duplicate ({lab_sim[k]:.2f}) of a labeled example")
        # Near-duplicates among the candidates themselves: the first (highest priority) one stays.
        rest = alive()
        if len(rest) > 1:
            mat = char_vectors([texts[p] for p in rest], vec)[1]
            for start in range(0, len(rest), 1000):
                sims = (mat[start:start + 1000] @ mat.T).toarray()
                for row in range(sims.shape[0]):
                    k = start + row
                    if status[rest[k]] != "candidate":
                        continue
                    earlier = [e for e in np.nonzero(sims[row, :k] >= cfg.near_duplicate_similarity)[0]
                               if status[rest[e]] == "candidate"]
                    if earlier:
                        drop(rest[k], f"near-duplicate ({sims[row, earlier[0]]:.2f}) of sample "
                                      f"#{labels[rest[earlier[0]]]}")
    out["status"], out["reason"] = status, reason
    return out


class CharModel:
    """Bits a character under an interpolated character n-gram model of some texts: how unlike them a text reads.
    Each order's estimate is mixed with the shorter one's by c / (c + strength), c the context's count."""

    def __init__(self, texts: list[str], order: int = 3, strength: float = 5.0):
        self.order, self.strength = order, strength
        self.counts: Counter = Counter()  # every n-gram of length 1..order
        for text in texts:
            padded = self._pad(text)
            for i in range(order - 1, len(padded)):
                for n in range(1, order + 1):
                    self.counts[padded[i - n + 1:i + 1]] += 1
        singles = [g for g in self.counts if len(g) == 1]
        self.total = sum(self.counts[g] for g in singles)
        self.alphabet = len(singles) + 1  # an unseen character shares the floor

    def _pad(self, text: str) -> str:
        return "\x02" * (self.order - 1) + normalize(text) + "\x03"

    def bits(self, text: str) -> float:
        padded, total = self._pad(text), 0.0
        for i in range(self.order - 1, len(padded)):
            p = 1.0 / self.alphabet
            for n in range(1, self.order + 1):
                gram = padded[i - n + 1:i + 1]
                seen = self.total if n == 1 else self.counts[gram[:-1]]
                if seen:
                    weight = seen / (seen + self.strength)
                    p = weight * self.counts[gram] / seen + (1 - weight) * p
            total -= math.log2(p)
        return total / (len(padded) - self.order + 1)


MIN_TRAFFIC = 20  # traffic texts the bar needs; with fewer, no written text is judged unlike
REFERENCE_TEXTS = 2000  # traffic texts scored for the bar, at most


def unlike_reasons(texts: list[str], labeled: list[str], traffic: list[str], ratio: float,
                   seed: int = 0) -> list[str | None]:
    """For written texts: a reason for each whose characters surprise a model of the labeled texts more than
    `ratio` times the traffic's 99th percentile does, else None. Real text of the workspace's kind, traffic
    included, costs about the same bits a character; random characters cost about twice as many, whatever the
    domain. ratio 0, or too little traffic to set the bar: no reasons."""
    if ratio <= 0 or len(traffic) < MIN_TRAFFIC or not texts:
        return [None] * len(texts)
    model = CharModel(labeled)
    reference = random.Random(seed).sample(traffic, min(len(traffic), REFERENCE_TEXTS))
    bar = ratio * float(np.percentile([model.bits(t) for t in reference], 99))
    reasons = []
    for text in texts:
        bits = model.bits(text)
        reasons.append(f"unlike the workspace's texts: {bits:.1f} bits a character, over {bar:.1f} "
                       f"({ratio:g}x traffic's 99th percentile)" if bits > bar else None)
    return reasons
