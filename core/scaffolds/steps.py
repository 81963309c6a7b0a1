"""The steps a scaffold is made of, registered by type with their parameters' defaults and bounds.

A step reads and updates a State: class probabilities for each text (None until a scoring step ran) and
which texts are routed to a person. Scoring steps blend their evidence into the probabilities with a
weight, so `retrieve(weight=1)` then `classify(weight=0.7)` means 0.3 kNN vote + 0.7 model.
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Param:
    default: float | int | str
    lo: float = 0.0
    hi: float = 1.0
    kind: str = "float"  # float, int or text


@dataclass
class State:
    batch: object  # core.scaffolds.run.Batch: the texts and memoized model outputs
    probs: np.ndarray | None = None
    abstained: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def scored(self) -> np.ndarray:
        """The probabilities so far; the model's own when no scoring step has run yet."""
        if self.probs is None:
            self.probs = self.batch.model_probs().copy()
        return self.probs

    def blend(self, evidence: np.ndarray, weight: float, rows: np.ndarray | None = None) -> None:
        if self.probs is None and rows is None:
            self.probs = evidence.copy()
            return
        probs = self.scored()
        mask = np.ones(len(probs), dtype=bool) if rows is None else rows
        probs[mask] = (1.0 - weight) * probs[mask] + weight * evidence[mask]


@dataclass(frozen=True)
class StepType:
    name: str
    params: dict[str, Param]
    fn: Callable[..., None]
    needs_llm: bool = False


STEPS: dict[str, StepType] = {}


def step(name: str, needs_llm: bool = False, **params: Param):
    def wrap(fn):
        STEPS[name] = StepType(name, params, fn, needs_llm)
        return fn
    return wrap


def _temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    if temperature == 1.0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, None)) / temperature  # log p differs from the logits by a row constant
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


@step("classify", temperature=Param(1.0, 0.05, 20.0), weight=Param(1.0))
def classify(state: State, temperature: float, weight: float) -> None:
    """Execute: the model's scores, optionally re-tempered (the scale abstention thresholds read)."""
    state.blend(_temper(state.batch.model_probs(), temperature), weight)


@step("retrieve", k=Param(5, 1, 50, "int"), weight=Param(0.3))
def retrieve(state: State, k: int, weight: float) -> None:
    """Retrieve the k nearest labeled examples and blend their label votes in."""
    state.blend(state.batch.vote(k), weight)


@step("reflect", threshold=Param(0.6), views=Param(2, 1, 8, "int"), weight=Param(0.5),
      second_opinion_k=Param(5, 1, 50, "int"))
def reflect(state: State, threshold: float, views: int, weight: float, second_opinion_k: int) -> None:
    """Look again where confidence is low or the kNN second opinion disagrees: perturbed views plus the vote."""
    probs = state.scored()
    vote = state.batch.vote(second_opinion_k)
    rows = (probs.max(1) < threshold) | (vote.argmax(1) != probs.argmax(1))
    if not rows.any():
        return
    evidence = sum(state.batch.view_probs(i) for i in range(views)) + vote
    state.blend(evidence / (views + 1), weight, rows)
    state.notes.append(f"reflect looked again at {int(rows.sum())} of {len(rows)}")


@step("abstain", threshold=Param(0.0))
def abstain(state: State, threshold: float) -> None:
    """Route to a person when the top probability is below the threshold."""
    low = state.scored().max(1) < threshold
    state.abstained = low if state.abstained is None else (state.abstained | low)


# {examples}: a few of the workspace's seed texts for each of the candidates, one "- [label] text" a line.
PROMPT_FIELDS = {"text", "labels", "candidates", "examples"}
DEFAULT_PROMPT = ("Label this text with exactly one of these labels: {labels}.\n"
                  "The most likely ones are: {candidates}. Examples of them:\n{examples}\n"
                  "Text: {text}\nAnswer with the label name only.")


def check_prompt(prompt: str) -> str | None:
    """None when the template is usable, else what is wrong with it."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(prompt) if f is not None}
    except ValueError as err:
        return f"bad prompt template ({err})"
    if "text" not in fields:
        return "the prompt template needs a {text} placeholder"
    unknown = fields - PROMPT_FIELDS
    if unknown:
        return (f"unknown prompt placeholder(s) {', '.join(sorted(unknown))} "
                "(use {text}, {labels}, {candidates}, {examples})")
    return None


def parse_label(answer: str, labels: list[str]) -> int | None:
    """The label an LLM answered: an exact name on its first line, else the one name it mentions."""
    first = answer.strip().splitlines()[0].strip().strip(".'\"` ").lower() if answer.strip() else ""
    lowered = [label.lower() for label in labels]
    if first in lowered:
        return lowered.index(first)
    named = [i for i, label in enumerate(lowered) if label in answer.lower()]
    return named[0] if len(named) == 1 else None


@step("llm", needs_llm=True, prompt=Param(DEFAULT_PROMPT, kind="text"), threshold=Param(1.0), weight=Param(1.0))
def llm(state: State, prompt: str, threshold: float, weight: float) -> None:
    """A prompt template with the same interface: an OpenAI-compatible LLM answers for low-confidence texts."""
    probs = state.scored()
    labels = state.batch.labels
    rows = probs.max(1) < threshold if threshold < 1.0 else np.ones(len(probs), dtype=bool)
    evidence = np.zeros_like(probs)
    answered = np.zeros(len(probs), dtype=bool)
    for i in np.flatnonzero(rows):
        top = [labels[j] for j in np.argsort(-probs[i])[:3]]
        shown = "\n".join(f"- [{label}] {text}" for label in top for text in state.batch.bank.examples.get(label, []))
        answer = state.batch.ask(prompt.format(text=state.batch.texts[i], labels=", ".join(labels),
                                               candidates=", ".join(top), examples=shown or "(none)"))
        picked = parse_label(answer, labels) if answer is not None else None
        if picked is not None:
            evidence[i, picked], answered[i] = 1.0, True
    state.blend(evidence, weight, answered)
    state.notes.append(f"llm answered {int(answered.sum())} of {int(rows.sum())}")
