"""What a diagnosis rests on besides the selection rows, none of it a gate row.

- `label_answers`: pool texts people labeled through the label queue after the version was trained (what it
  trained on is no evidence of its errors);
- `traffic_view`: a draw of unlabeled traffic that the labeled examples' k-NN vote (in the model's embedding)
  labels with confidence; where the model's own label differs, the disagreement is a suspected
  error ("true" is the view's label). Traffic is where the model has to work, and on a few-shot workspace it
  gives hundreds of rows where the selection part has one per class.

Each row keeps its `source` (with "selection" and "production" for people's corrections), so every finding
can say what it rests on (core.diagnose.errors.rests_on; in words: app/queries/diagnosis.rests_on_words).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core import model as M
from core.curate.verify import knn_vote

def _rows(loaded: M.Loaded, texts: list[str], labels, probs: np.ndarray, source: str, first_id: int) -> pd.DataFrame:
    """texts in the shape of eval rows, ids negative from first_id down (no held-out row has one)."""
    predicted = np.asarray(loaded.labels, dtype=object)[probs.argmax(1)]
    return pd.DataFrame({"example_id": np.arange(first_id, first_id - len(texts), -1, dtype=np.int64),
                         "text": texts, "label": labels, "predicted": predicted, "confidence": probs.max(1),
                         "correct": predicted == np.asarray(labels, dtype=object), "source": source})


def answer_rows(loaded: M.Loaded, answers: pd.DataFrame) -> pd.DataFrame:
    """answers: text, label of people's answers the version did not train on."""
    known = answers[answers["label"].isin(loaded.labels)]
    if known.empty:
        return pd.DataFrame()
    texts = known["text"].tolist()
    return _rows(loaded, texts, known["label"].tolist(), M.predict_proba(loaded, texts), "label_answers", -1)


def traffic_view_rows(loaded: M.Loaded, pool: pd.DataFrame, seed: pd.DataFrame, limit: int, k: int,
                      min_agreement: float, draw_seed: int, first_id: int) -> pd.DataFrame:
    """Up to `limit` pool texts (a seeded draw) whose k nearest labeled examples agree on a label at least
    `min_agreement` of the time, with that label as the view's."""
    known = seed[seed["label"].isin(loaded.labels)]
    if limit <= 0 or pool.empty or len(known) < 2:
        return pd.DataFrame()
    rng = np.random.default_rng(draw_seed)
    texts = pool["text"].drop_duplicates()
    texts = texts.iloc[np.sort(rng.choice(len(texts), min(limit, len(texts)), replace=False))].tolist()
    emb, probs = M.embed_and_proba(loaded, texts)
    index = {name: i for i, name in enumerate(loaded.labels)}
    votes = knn_vote(emb, M.embed_and_proba(loaded, known["text"].tolist())[0],
                     np.asarray([index[x] for x in known["label"]]), len(loaded.labels), k)
    view = np.asarray(loaded.labels, dtype=object)[votes.argmax(1)]
    rows = _rows(loaded, texts, view, probs, "traffic_view", first_id)
    return rows[votes.max(1) >= min_agreement].reset_index(drop=True)


def gather(store, loaded: M.Loaded, cfg, draw_seed: int) -> pd.DataFrame:
    """Every row of evidence beyond the selection rows for diagnosing loaded's version (cfg: the workspace's
    Config): the label answers it did not train on, then the traffic the view labels."""
    pool = seed = None
    with store.kept_open():  # the reads share one open; the encoder passes run after it is let go
        trained_in = (store.version(loaded.version) or {}).get("cycle_id")
        answers = store.human_labels()
        if trained_in is not None and len(answers):  # answers given before its cycle began are in its training set
            answers = answers[~answers["id"].isin(store.human_labels(before_cycle=int(trained_in))["id"])]
        if cfg.diagnose.traffic_rows:
            pool, seed = store.unlabeled_pool(), store.seed_examples()
            # logged production traffic may repeat an evaluation text: never evidence
            pool = pool[~pool["text"].isin(store.evaluation_texts_in(pool["text"].tolist()))]
    given = answer_rows(loaded, answers)
    if pool is None:
        return given
    return pd.concat([given, traffic_view_rows(loaded, pool, seed, cfg.diagnose.traffic_rows, cfg.curate.knn_k,
                                               cfg.diagnose.traffic_min_agreement, draw_seed, -1 - len(given))],
                     ignore_index=True)
