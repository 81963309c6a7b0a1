"""Running a scaffold: a batch of texts with memoized model outputs, a retrieval bank, and the steps in order.

`run(spec, loaded, texts, bank)` is the whole interface the CLI and the server need. The retrieval bank
(the labeled seed embedded by the model) is computed once per workspace and model version and kept in
memory, so a one-text request costs one encoder pass (more only for reflect or llm steps).
"""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from core import model as M
from core.curate import llm as llm_client
from core.curate.filters import normalize
from core.curate.verify import knn_vote, perturb
from core.scaffolds.spec import ScaffoldError, parse
from core.scaffolds.steps import STEPS, State

LLM_SYSTEM = "You label texts{domain}: for each text you are given, answer with one label name from its list."


@dataclass(frozen=True)
class Bank:
    """Labeled examples in the model's embedding space: what retrieval and second opinions vote with."""
    version: str
    emb: np.ndarray
    label_idx: np.ndarray  # index into the model's labels, per bank row
    # A few seed texts per label, for an llm step's prompt: never a held-out or traffic-probe text.
    examples: dict[str, list[str]] = field(default_factory=dict)


_banks: dict[tuple[str, str], Bank] = {}
_banks_lock = threading.Lock()


def bank_for(ws, loaded: M.Loaded) -> Bank:
    """What retrieval votes with, cached per (workspace, version): the version's memory (every row it trained
    on, verified samples included) plus seed rows labeled since; the labeled seed alone for a version without one."""
    key = (str(ws.root.resolve()), loaded.version)
    with _banks_lock:
        if key not in _banks:
            seed = ws.store.seed_examples()  # with people's answers to label requests
            bank = make_bank(loaded, seed["text"].tolist(), seed["label"].tolist())
            if loaded.memory is not None:
                new = loaded.memory.rows_of(seed["text"].tolist()) < 0
                bank = Bank(loaded.version, np.vstack([loaded.memory.emb, bank.emb[new]]),
                            np.concatenate([loaded.memory.label_idx, bank.label_idx[new]]))
            _banks[key] = replace(bank, examples=prompt_examples(ws, seed, loaded.labels))
        return _banks[key]


def prompt_examples(ws, seed, labels: list[str]) -> dict[str, list[str]]:
    """scaffolds.llm.examples_per_label seed texts per label, none of them a held-out or traffic-probe text. The
    store answers which seed texts those are, so a scaffold never reads the gate's rows."""
    hidden = frozenset(map(normalize, ws.store.evaluation_texts_in(seed["text"].tolist())))
    k = ws.config().scaffolds.llm.examples_per_label
    return {label: llm_client.examples_of(seed, label, k, hidden, 0) for label in labels}


def make_bank(loaded: M.Loaded, texts: list[str], labels: list[str]) -> Bank:
    index = {name: i for i, name in enumerate(loaded.labels)}
    emb = M.embed_and_proba(loaded, texts)[0]  # a row the version trained on is not encoded again
    return Bank(loaded.version, emb, np.asarray([index[label] for label in labels], dtype=np.int64))


class Batch:
    """Texts and every model output a step may ask for, computed at most once however many scaffolds run."""

    def __init__(self, loaded: M.Loaded, texts: list[str], bank: Bank, ask: Callable[[str], str | None] | None = None,
                 seed: int = 0, encode: Callable | None = None):
        self.loaded, self.texts, self.bank, self._ask, self.seed = loaded, list(texts), bank, ask, seed
        # texts -> the model's (embeddings, probabilities): core.executor.model_encoder for `predict` over a file
        self._encode = encode or (lambda texts: M.embed_and_proba(loaded, texts))
        self.labels = list(loaded.labels)
        self._memo: dict = {}

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def _encoded(self) -> tuple[np.ndarray, np.ndarray]:
        return self._once("encoded", lambda: self._encode(self.texts))

    def model_probs(self) -> np.ndarray:
        return self._encoded()[1]

    def vote(self, k: int) -> np.ndarray:
        """Share of the k nearest bank examples with each label."""
        def compute():
            if not len(self.bank.emb) or not self.texts:
                return np.full((len(self.texts), len(self.labels)), 1.0 / len(self.labels))
            return knn_vote(self._encoded()[0], self.bank.emb, self.bank.label_idx, len(self.labels), k)
        return self._once(("vote", k), compute)

    def view_probs(self, i: int) -> np.ndarray:
        """The model's probabilities on the i-th perturbed view of every text (a word dropped, swapped, a typo)."""
        def compute():
            rng = random.Random(self.seed * 1000 + i)
            return self._encode([perturb(t, rng) for t in self.texts])[1]
        return self._once(("view", i), compute)

    def ask(self, prompt: str) -> str | None:
        if self._ask is None:
            raise ScaffoldError("this scaffold has an llm step but no LLM is configured "
                                "(scaffolds.llm.enabled, base_url and model)")
        return self._once(("ask", prompt), lambda: self._ask(prompt))


@dataclass
class Output:
    labels: list[str]
    predicted: np.ndarray  # label index per text
    confidence: np.ndarray
    abstained: np.ndarray
    notes: list[str]

    def records(self) -> list[dict]:
        names = np.asarray(self.labels, dtype=object)
        return [{"label": names[p], "confidence": round(float(c), 6), "abstained": bool(a)}
                for p, c, a in zip(self.predicted, self.confidence, self.abstained)]


def execute(spec: dict, batch: Batch) -> Output:
    state = State(batch)
    for s in spec["steps"]:
        STEPS[s["type"]].fn(state, **{k: v for k, v in s.items() if k != "type"})
    probs = state.scored()
    abstained = state.abstained if state.abstained is not None else np.zeros(len(probs), dtype=bool)
    return Output(batch.labels, probs.argmax(1), probs.max(1), abstained, state.notes)


def run(spec: dict, loaded: M.Loaded, texts: list[str], bank: Bank,
        ask: Callable[[str], str | None] | None = None, encode: Callable | None = None) -> list[dict]:
    """Label texts with a scaffold: one {label, confidence, abstained} per text. encode: where the model runs
    (core.executor.model_encoder); the steps themselves, and any LLM budget, stay in this process."""
    return execute(parse(spec), Batch(loaded, texts, bank, ask, encode=encode)).records()


def llm_asker(cfg) -> Callable[[str], str | None] | None:
    """A prompt -> answer function over the configured endpoint (scaffolds.llm), None when none is configured.

    Past max_requests it answers None, so a search cannot run up an unbounded bill."""
    found = llm_client.endpoint(cfg)
    if found is None:
        return None
    base_url, model, key = found
    system = LLM_SYSTEM.format(domain=f" ({cfg.domain.strip()})" if cfg.domain.strip() else "")
    sent = [0]

    def ask(prompt: str) -> str | None:
        if sent[0] >= cfg.max_requests:
            return None
        sent[0] += 1
        try:
            return llm_client.complete(base_url, model, key, prompt, cfg.timeout_s, system, temperature=0.0,
                                       max_tokens=cfg.max_tokens)
        except llm_client.LLMError:
            return None  # an unanswered text keeps the model's scores
    return ask
