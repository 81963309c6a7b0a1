"""What a diagnosis rests on besides the selection rows, none of it a gate row.

- `label_answers`: pool texts people labeled through the label queue after the version was trained (what it
  trained on is no evidence of its errors);
- `traffic_view`: a draw of unlabeled traffic that the labeled examples' vote through the k-NN graph (the
  verifiers' view) labels with confidence; where the model's own label differs, the disagreement is a suspected
  error ("true" is the view's label). Traffic is where the model has to work, and on a few-shot workspace it
  gives hundreds of rows where the selection part has one per class.

Each row keeps its `source` (with "selection" and "production" for people's corrections), so every finding
can say what it rests on (core.diagnose.errors.rests_on; in words: app/queries/diagnosis.rests_on_words).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core import model as M
from core.curate.verify import nearest

def _scored(loaded: M.Loaded, texts: list[str], labels: list[str], source: str, first_id: int) -> pd.DataFrame:
    probs = M.predict_proba(loaded, texts)
    predicted = np.asarray(loaded.labels, dtype=object)[probs.argmax(1)]
    return pd.DataFrame({"example_id": np.arange(first_id, first_id - len(texts), -1, dtype=np.int64),
                         "text": texts, "label": labels, "predicted": predicted,
                         "confidence": probs.max(1), "correct": predicted == np.asarray(labels, dtype=object),
                         "source": source})


def answer_rows(loaded: M.Loaded, answers: pd.DataFrame) -> pd.DataFrame:
    """answers: text, label of people's answers the version did not train on. Ids are negative (no held-out row)."""
    known = answers[answers["label"].isin(loaded.labels)]
    return _scored(loaded, known["text"].tolist(), known["label"].tolist(), "label_answers", -1) if len(known) \
        else pd.DataFrame()


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
    seed_emb = M.embed_and_proba(loaded, known["text"].tolist())[0]
    index = {name: i for i, name in enumerate(loaded.labels)}
    seed_idx = np.asarray([index[x] for x in known["label"]])
    nn = nearest(emb, seed_emb, k)
    votes = np.zeros((len(texts), len(loaded.labels)))
    np.add.at(votes, (np.repeat(np.arange(len(texts)), nn.shape[1]), seed_idx[nn].ravel()), 1.0 / nn.shape[1])
    sure = votes.max(1) >= min_agreement
    names = np.asarray(loaded.labels, dtype=object)
    view, predicted = names[votes.argmax(1)], names[probs.argmax(1)]
    ids = np.arange(first_id, first_id - len(texts), -1, dtype=np.int64)
    return pd.DataFrame({"example_id": ids, "text": texts, "label": view, "predicted": predicted,
                         "confidence": probs.max(1), "correct": predicted == view, "source": "traffic_view"})[sure] \
        .reset_index(drop=True)


def gather(store, loaded: M.Loaded, cfg, draw_seed: int) -> pd.DataFrame:
    """Every row of evidence beyond the selection rows for diagnosing loaded's version (cfg: the workspace's
    Config): the label answers it did not train on, then the traffic the view labels."""
    with store.kept_open():  # the reads share one open; the encoder passes run after it is let go
        trained_in = (store.version(loaded.version) or {}).get("cycle_id")
        answers = store.human_labels()
        if trained_in is not None and len(answers):  # answers given before its cycle began are in its training set
            answers = answers[~answers["id"].isin(store.human_labels(before_cycle=int(trained_in))["id"])]
        traffic = cfg.diagnose.traffic_rows and (store.unlabeled_pool(), store.seed_examples())
        if traffic:  # logged production traffic may repeat an evaluation text: never evidence
            traffic = (traffic[0][~traffic[0]["text"].isin(store.evaluation_texts_in(traffic[0]["text"].tolist()))],
                       traffic[1])
    given = answer_rows(loaded, answers)
    if not traffic:
        return given
    return pd.concat([given, traffic_view_rows(loaded, *traffic, cfg.diagnose.traffic_rows, cfg.curate.knn_k,
                                               cfg.diagnose.traffic_min_agreement, draw_seed, -1 - len(given))],
                     ignore_index=True)
