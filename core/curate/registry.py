"""Generators register here; the curation pipeline asks each enabled one for candidates."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core import model as M

CANDIDATE_COLUMNS = ["generator", "parent_id", "text", "label"]


@dataclass
class Context:
    loaded: M.Loaded  # the current production model
    seed: pd.DataFrame  # labeled examples: id, text, label
    pool: pd.DataFrame  # unlabeled traffic: id, text
    pairs: list[tuple[str, str, int]]  # diagnosed confusions: (true, predicted, errors)
    favoured: set[str]  # classes the diagnosis asks for more of
    cfg: object  # CurateConfig
    root: Path  # the workspace, for generator resources such as templates.json
    seed_value: int = 0
    remedy: object = None  # core.lessons.Remedy: what earlier rejections ask of this curation
    feedback: pd.DataFrame | None = None  # people's corrections from production: text, label, actor
    notes: dict = field(default_factory=dict)  # per generator: what it did or why it did nothing
    view: object = None  # core.curate.views.FrozenView: the teacher encoder's frozen view, when configured
    # The diagnosis' actions as counts: "pair:TRUE->PREDICTED" or "class:LABEL" -> samples asked for.
    asks: dict = field(default_factory=dict)
    # The model's (embedding, probabilities) per text already computed in this run, so verification
    # does not run the encoder over the traffic a second time.
    seen: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict)  # results more than one step reads (the pool's teacher scores)
    # core.sandbox.check.ExecutionCheck, when one is configured: every candidate the filters let through is
    # executed, and its execution, not the model, decides whether its label holds.
    check: object = None
    # Normalized held-out and traffic-probe texts (filters.normalize), set by curate(): what a generator must never
    # show an outside endpoint, even where the seed repeats one.
    protected: frozenset = frozenset()
    # "TRUE->PREDICTED" -> the words the model leaned on in those errors (diagnose.leaned_on, from Captum's
    # attributions): what the counterfactual generator varies.
    leaned_on: dict = field(default_factory=dict)
    # the texts of each error cluster of the diagnosis (selection rows): the label queue asks nearest them first
    clusters: list = field(default_factory=list)
    # texts -> the model's (embeddings, probabilities): core.executor.model_encoder, batched on the configured
    # executor; None: computed here in one call.
    encoder: Callable | None = None
    # label -> the difficulty mix asked of it this cycle where the last curation's results moved it
    # (core.curate.difficulty.next_mixes); other labels get the configured mix
    mixes: dict = field(default_factory=dict)

    def requested_mix(self, label: str) -> list[float]:
        """The difficulty mix asked of a class (0 easy .. 3 hard, sums to 1): harder for diagnosed classes, and
        moved by the last curation's results where core.curate.difficulty.next_mixes moved it."""
        mix = self.mixes.get(label) or (self.cfg.weak_class_difficulty_mix if label in self.favoured
                                        else self.cfg.difficulty_mix)
        return [m / sum(mix) for m in mix]

    def levels_of(self, texts: list[str]):
        """Each text's difficulty for the model, 0 easy .. 3 hard (its top-1 minus top-2 probability, the
        measure the kept set is held to); encoded once, remembered for the verifiers."""
        from core.curate.verify import difficulty_level

        if not texts:
            return np.zeros(0, dtype=int)
        top2 = np.sort(self.encode(texts)[1], axis=1)[:, -2:]
        return difficulty_level(top2[:, 1] - top2[:, 0])

    def at_levels(self, generator: str, rows: list[dict], label: str, n: int, select: bool = True) -> list[dict]:
        """Up to n of rows written for label, at the class's requested levels: what a generator that cannot
        choose a text's difficulty keeps of what it wrote (it writes more than n). Each row gets the level it
        measures at; what was asked and made per level is counted for the curation report. select=False: every
        row is kept (what an outside endpoint wrote is stored, whatever its level) and only counted."""
        asked = self.level_counts(label, n)
        measured = self.levels_of([r["text"] for r in rows])
        if select:
            kept = [row for level, count in enumerate(asked)
                    for row in [{**r, "level": level} for r, m in zip(rows, measured) if m == level][:count]]
        else:
            kept = [{**r, "level": int(m)} for r, m in zip(rows, measured)]
        tally = self.memo.setdefault("levels", {}).setdefault(generator, {"requested": [0] * 4, "produced": [0] * 4})
        for level, count in enumerate(asked):
            tally["requested"][level] += int(count)
        for row in kept:
            tally["produced"][row["level"]] += 1
        return kept

    def level_counts(self, label: str, n: int) -> list[int]:
        """n samples split over the four levels by the class's requested mix (largest remainders)."""
        return split_counts(n, self.requested_mix(label))

    def model_outputs(self, texts: list[str], progress: bool = False):
        """The model's (embeddings, probabilities) for texts, computed afresh (no memo): perturbed views."""
        if self.encoder is not None:
            return self.encoder(texts, progress)
        return M.embed_and_proba(self.loaded, texts, progress=progress)

    def encode(self, texts: list[str]):
        """The model's stacked (embeddings, probabilities) for texts; only texts not seen yet are encoded."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.seen))
        if missing:
            emb, probs = self.model_outputs(missing)
            self.seen.update({t: (e, p) for t, e, p in zip(missing, emb, probs)})
        if not texts:
            return None
        return np.stack([self.seen[t][0] for t in texts]), np.stack([self.seen[t][1] for t in texts])


GENERATORS: dict[str, Callable[[Context], pd.DataFrame]] = {}


def register(name: str):
    def wrap(fn: Callable[[Context], pd.DataFrame]):
        GENERATORS[name] = fn
        return fn
    return wrap


def split_counts(n: int, shares: list[float]) -> list[int]:
    raw = [n * s for s in shares]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[:n - sum(counts)]:
        counts[i] += 1
    return counts


# Optional per row: `teacher`, the labeling teacher's confidence (0-1); `target`, the diagnosis ask it answers;
# `level`, the difficulty it was written or kept for (Context.at_levels; the SQL grammar writes at a level).
OPTIONAL_COLUMNS = ["teacher", "target", "level"]


def candidates(name: str, rows: list[dict]) -> pd.DataFrame:
    """rows: parent_id, text, label, and any of OPTIONAL_COLUMNS."""
    frame = pd.DataFrame(rows, columns=["parent_id", "text", "label", *OPTIONAL_COLUMNS])
    frame.insert(0, "generator", name)
    return frame[CANDIDATE_COLUMNS + OPTIONAL_COLUMNS]
