"""The demo's template generator is not the generator that wrote the demo's data: its sentences are its own, and
nothing it can write is a held-out or traffic row, or near enough to one for the contamination guard."""
import itertools
import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest

from core import demo
from core.config import CurateConfig
from core.curate import filters
from core.curate.registry import Context
from core.curate.templates import templates as generate
from data import generate_tickets as data_generator
from tests.conftest import DATA

SLOT = re.compile(r"\{(\w+)\}")


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> tuple[dict, object]:
    """(templates.json as the demo writes it, the folder it is in)."""
    root = tmp_path_factory.mktemp("demo")
    demo.write_templates(root / "templates.json")
    return json.loads((root / "templates.json").read_text(encoding="utf-8")), root


def _every_fill(template: str, slots: dict) -> list[str]:
    names = SLOT.findall(template)
    return [SLOT.sub(lambda m, words=iter(words): next(words), template)
            for words in itertools.product(*(slots[n] for n in names))]


def test_the_demo_template_bank_shares_no_sentence_with_the_data(bank):
    spec, _ = bank
    written = [t for items in spec["templates"].values() for t in items]
    data = [t for bank_ in (data_generator.TEMPLATES, data_generator.MIXINS) for items in bank_.values() for t in items]
    data += data_generator.BACKSTORY
    assert set(spec["templates"]) == set(data_generator.TEMPLATES) and all(spec["templates"].values())
    assert not set(map(filters.normalize, written)) & set(map(filters.normalize, data))
    vec, _ = filters.char_vectors(written + data)
    nearest, similarity = filters.nearest(filters.char_vectors(written, vec)[1], filters.char_vectors(data, vec)[1])
    worst = similarity.argmax()
    assert similarity[worst] < CurateConfig().contamination_similarity, (written[worst], data[nearest[worst]])


def test_no_demo_template_text_is_a_demo_heldout_or_traffic_text(bank):
    spec, root = bank
    fills = sorted({text for items in spec["templates"].values() for t in items
                    for text in _every_fill(t, spec["slots"])})
    rows = pd.concat([pd.read_csv(DATA / f"tickets_{name}.csv")["text"] for name in ("heldout", "unlabeled")])
    rows = rows.tolist()
    assert not set(map(filters.normalize, fills)) & set(map(filters.normalize, rows))
    vec, _ = filters.char_vectors(fills + rows)
    nearest, similarity = filters.nearest(filters.char_vectors(fills, vec)[1], filters.char_vectors(rows, vec)[1])
    worst = similarity.argmax()
    assert similarity[worst] < CurateConfig().contamination_similarity, (fills[worst], rows[nearest[worst]])

    # and the generator itself writes from that bank: every class, nothing outside the fills checked above
    ctx = Context(loaded=SimpleNamespace(labels=list(spec["templates"])), seed=pd.DataFrame(), pool=pd.DataFrame(),
                  pairs=[], favoured=set(), cfg=CurateConfig(difficulty_control=False), root=root)  # no model
    made = generate(ctx)
    assert set(made["label"]) == set(spec["templates"]) and set(made["text"]) <= set(fills)
