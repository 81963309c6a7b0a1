"""Template and slot generation, for domains that ship templates (the demo's live in data/).

The workspace's templates file holds {"templates": {label: ["... {slot} ..."]}, "slots": {slot: [...]}}.
A class gets what the diagnosis asked for it (else templates_per_class) at its requested difficulty mix: a template
cannot choose its difficulty, so three times as many are filled and the model's measure picks each level's share.
"""
from __future__ import annotations

import json
import random
import re

from core.curate.registry import Context, candidates, register

SLOT = re.compile(r"\{(\w+)\}")


def fill(template: str, slots: dict[str, list[str]], rng: random.Random) -> str | None:
    def pick(match):
        options = slots.get(match.group(1))
        if not options:
            raise KeyError(match.group(1))
        return rng.choice(options)

    try:
        return SLOT.sub(pick, template)
    except KeyError:
        return None


@register("templates")
def templates(ctx: Context):
    path = ctx.root / ctx.cfg.templates_file
    if not path.is_file():
        ctx.notes["templates"] = f"no {ctx.cfg.templates_file} in the workspace"
        return candidates("templates", [])
    spec = json.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(ctx.seed_value)
    rows = []
    known = set(ctx.loaded.labels)
    for label, items in spec.get("templates", {}).items():
        if label not in known or not items:
            continue
        target = f"class:{label}"
        default = ctx.cfg.templates_per_class * (2 if label in ctx.favoured else 1)
        want = min(ctx.asks.get(target, default), ctx.cfg.templates_max_per_class)
        written = [{"parent_id": None, "text": text, "label": label, "target": target if target in ctx.asks else None}
                   for text in (fill(rng.choice(items), spec.get("slots", {}), rng) for _ in range(want * 3)) if text]
        # a template cannot choose its difficulty: of three times what is wanted, the requested levels are kept
        rows += ctx.at_levels("templates", written, label, want) if ctx.cfg.difficulty_control else written
    return candidates("templates", rows)
