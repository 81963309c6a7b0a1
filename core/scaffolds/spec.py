"""Scaffolds as data: `{"name": ..., "steps": [{"type": ..., <params>}, ...]}`, validated and made canonical.

A spec is checked against the step registry (unknown types, unknown or out-of-range parameters are refused
with one line naming the step), every parameter is filled in, and its identity is the sha256 of its steps,
so the same program is stored once whatever it is called.
"""
from __future__ import annotations

import hashlib
import json

from core.scaffolds.steps import STEPS, check_prompt

MAX_STEPS = 8


class ScaffoldError(ValueError):
    """A scaffold that cannot be used: malformed JSON, unknown step, bad parameter."""


def parse(raw: str | dict) -> dict:
    """A canonical spec from JSON text or a dict; raises ScaffoldError with one line on any problem."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ScaffoldError(f"scaffold is not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") \
                from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise ScaffoldError('a scaffold is a JSON object with a "steps" list (and an optional "name")')
    extra = set(raw) - {"name", "steps"}
    if extra:
        raise ScaffoldError(f"unknown scaffold key(s) {', '.join(sorted(extra))} (expected name, steps)")
    name = raw.get("name") or "custom"
    if not isinstance(name, str):
        raise ScaffoldError("a scaffold's name must be a string")
    if not 1 <= len(raw["steps"]) <= MAX_STEPS:
        raise ScaffoldError(f"a scaffold needs 1 to {MAX_STEPS} steps, this one has {len(raw['steps'])}")
    return {"name": name, "steps": [_step(i + 1, s) for i, s in enumerate(raw["steps"])]}


def _step(pos: int, raw) -> dict:
    if not isinstance(raw, dict) or "type" not in raw:
        raise ScaffoldError(f'step {pos}: expected an object with a "type"')
    kind = raw["type"]
    if kind not in STEPS:
        raise ScaffoldError(f"step {pos}: unknown step type '{kind}' (known: {', '.join(sorted(STEPS))})")
    params = STEPS[kind].params
    unknown = set(raw) - {"type"} - set(params)
    if unknown:
        raise ScaffoldError(f"step {pos} ({kind}): unknown parameter(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(params)) or 'none'})")
    out = {"type": kind}
    for name, p in params.items():
        value = raw.get(name, p.default)
        where = f"step {pos} ({kind}): {name}"
        if p.kind == "text":
            if not isinstance(value, str):
                raise ScaffoldError(f"{where} must be text")
            problem = check_prompt(value)
            if problem:
                raise ScaffoldError(f"{where}: {problem}")
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ScaffoldError(f"{where} must be a number, not {value!r}")
            if p.kind == "int":
                if value != int(value):
                    raise ScaffoldError(f"{where} must be a whole number, not {value}")
                value = int(value)
            else:
                value = float(value)
            if not p.lo <= value <= p.hi:
                raise ScaffoldError(f"{where} = {value} is outside [{p.lo:g}, {p.hi:g}]")
        out[name] = value
    return out


def digest(spec: dict) -> str:
    """Identity of the program: its steps only, canonically serialized."""
    return hashlib.sha256(json.dumps(spec["steps"], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def needs_llm(spec: dict) -> bool:
    return any(STEPS[s["type"]].needs_llm for s in spec["steps"])


def describe(spec: dict) -> str:
    """One line: `classify(temperature=1) -> abstain(threshold=0.3)`; prompts are shortened."""
    parts = []
    for s in spec["steps"]:
        args = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v[:24]!r}..."
                         for k, v in s.items() if k != "type")
        parts.append(f"{s['type']}({args})")
    return " -> ".join(parts)


# The three reasoning templates our users know, as programs.
BUILTINS: dict[str, dict] = {
    # analyze -> plan -> execute: classify directly; route to a person below a confidence threshold
    # (0 until a search calibrates it: adoption needs a significant A/B win).
    "analyze_plan_execute": {"steps": [{"type": "classify"}, {"type": "abstain", "threshold": 0.0}]},
    # execute -> reflect -> retry: classify, then look again where unsure or where the kNN vote disagrees.
    "execute_reflect_retry": {"steps": [{"type": "classify"}, {"type": "reflect", "threshold": 0.6, "views": 2,
                                                                "weight": 0.5, "second_opinion_k": 5}]},
    # retrieve examples -> adapt -> execute: the nearest labeled examples vote, the model's scores adapt it.
    "retrieve_adapt_execute": {"steps": [{"type": "retrieve", "k": 5, "weight": 1.0},
                                         {"type": "classify", "weight": 0.7}]},
}
DEFAULT = "analyze_plan_execute"  # production until a scaffold is adopted: plain argmax, as before scaffolds


def builtin(name: str) -> dict:
    return parse({"name": name, **BUILTINS[name]})
