"""Mutation operators: each takes a spec and a random generator and returns a variant and what it changed.

insert, remove or reorder steps; change a numeric parameter (k, thresholds, weights, temperature); change
a prompt template's text. Every variant is validated again, so a mutation never produces a broken program.
"""
from __future__ import annotations

import copy
import math
import random

from core.scaffolds import spec as S
from core.scaffolds.steps import STEPS

# Prompt texts a mutation may switch between; each keeps the {text} placeholder.
PROMPTS = [
    S.STEPS["llm"].params["prompt"].default,
    "Which of these labels fits this text? Labels: {labels}.\nText: {text}\nReply with the label name only.",
    "Text: {text}\nLikely labels: {candidates}. All labels: {labels}.\nThink about what the text is about, "
    "then answer with one label name only.",
    "Labeled examples:\n{examples}\nLabels: {labels}.\nText: {text}\nLabel:",
]


def _insert(spec: dict, rng: random.Random, llm: bool) -> str | None:
    if len(spec["steps"]) >= S.MAX_STEPS:
        return None
    kinds = sorted(k for k, t in STEPS.items() if llm or not t.needs_llm)
    kind = rng.choice(kinds)
    at = rng.randint(0, len(spec["steps"]))
    spec["steps"].insert(at, {"type": kind})
    return f"insert {kind} at {at + 1}"


def _remove(spec: dict, rng: random.Random, llm: bool) -> str | None:
    if len(spec["steps"]) < 2:
        return None
    at = rng.randrange(len(spec["steps"]))
    removed = spec["steps"].pop(at)
    return f"remove {removed['type']} from {at + 1}"


def _reorder(spec: dict, rng: random.Random, llm: bool) -> str | None:
    steps = spec["steps"]
    if len(steps) < 2:
        return None
    i = rng.randrange(len(steps) - 1)
    if steps[i] == steps[i + 1]:
        return None
    steps[i], steps[i + 1] = steps[i + 1], steps[i]
    return f"swap steps {i + 1} and {i + 2}"


def _numeric(spec: dict, rng: random.Random, llm: bool) -> str | None:
    choices = [(i, name, p) for i, s in enumerate(spec["steps"])
               for name, p in STEPS[s["type"]].params.items() if p.kind != "text"]
    if not choices:
        return None
    i, name, p = rng.choice(choices)
    old = spec["steps"][i][name]
    if p.kind == "int":
        new = int(min(p.hi, max(p.lo, old + rng.choice([-3, -2, -1, 1, 2, 3]))))
    elif name == "temperature":
        new = round(min(p.hi, max(p.lo, old * math.exp(rng.gauss(0, 0.5)))), 3)
    else:
        new = round(min(p.hi, max(p.lo, old + rng.gauss(0, 0.2 * (p.hi - p.lo)))), 3)
    if new == old:
        return None
    spec["steps"][i][name] = new
    return f"{spec['steps'][i]['type']}.{name} {old:g} -> {new:g} (step {i + 1})"


def _prompt(spec: dict, rng: random.Random, llm: bool) -> str | None:
    found = [i for i, s in enumerate(spec["steps"]) if s["type"] == "llm"]
    if not found:
        return None
    i = rng.choice(found)
    others = [p for p in PROMPTS if p != spec["steps"][i]["prompt"]]
    spec["steps"][i]["prompt"] = rng.choice(others)
    return f"llm.prompt rewritten (step {i + 1})"


OPERATORS = {"insert": _insert, "remove": _remove, "reorder": _reorder, "numeric": _numeric, "prompt": _prompt}
# Parameter changes are the most common useful move; structure changes keep the search exploring.
WEIGHTS = {"insert": 2, "remove": 2, "reorder": 1, "numeric": 5, "prompt": 1}


def mutate(parent: dict, rng: random.Random, llm: bool = False, tries: int = 20) -> tuple[dict, str]:
    """A valid variant of parent and a one-line description of the change."""
    names = list(OPERATORS)
    for _ in range(tries):
        op = rng.choices(names, weights=[WEIGHTS[n] for n in names])[0]
        child = copy.deepcopy(parent)
        what = OPERATORS[op](child, rng, llm)
        if what is None:
            continue
        try:
            return S.parse(child), what
        except S.ScaffoldError:
            continue
    raise S.ScaffoldError("no mutation applies to this scaffold")
