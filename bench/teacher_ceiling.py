"""How far can self-training go on this data? Measure the teacher, and the pseudo-label accuracy a target needs.

Self-training is bounded by its teacher: a student trained on pseudo-labels rarely beats the labels it
learns from. This bench takes the same protocol split as bench/banking77.py (seed, held-out, unlabeled
pool, development test set) and, on frozen embeddings from an encoder (the base model, or a version an
evolution run produced), prints:

1. the seed-only baseline: logistic regression on the seed, scored on the development test set;
2. each teacher the curation stage can use, scored on the pool (the pool's true labels are read here
   for scoring only, the engine never sees them): the model alone, label propagation alone, and
   propagation seeded by the model (the default teacher);
3. the ceiling curve: a student (logistic regression on seed + the whole pool) trained on the default
   teacher's pseudo-labels with 0%, 25%, 50%, 75% and 100% of the teacher's mistakes corrected, scored
   on the development test set. Reading it off says how accurate pseudo-labels must be for a target
   (e.g. the 90% headline of issue 4), and so whether more cycles of the same teacher can get there.

    python bench/teacher_ceiling.py
    python bench/teacher_ceiling.py --workspace /tmp/run/workspace --version v2

Any dataset folder with a train.csv (text,category) works via --data.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.banking77 import DEFAULT_DATA, DEV_SIZE, BenchError, split_protocol  # noqa: E402

FIX_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def encode(args, frames: dict, labels: list[str]) -> tuple[dict, dict | None, str]:
    """Embeddings per split, and the model's class probabilities when a trained version is used."""
    from core import model as M
    from core.config import BUNDLED_MODEL

    if args.version:
        from core import registry
        from core.workspace import open_workspace

        loaded = registry.load(open_workspace(args.workspace), args.version)
        pairs = {name: M.embed_and_proba(loaded, df.text.tolist(), progress=True) for name, df in frames.items()}
        order = {label: i for i, label in enumerate(loaded.labels)}
        return ({n: e for n, (e, _) in pairs.items()},
                {n: p[:, [order[label] for label in labels]] for n, (_, p) in pairs.items()},
                f"{args.version} of {args.workspace}")
    base = args.model or BUNDLED_MODEL
    tokenizer, encoder = M.load_base(base)
    return ({n: M.embed_texts(tokenizer, encoder, df.text.tolist(), args.max_length, progress=True)
             for n, df in frames.items()}, None, f"base model {base} (frozen)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder with train.csv (default {DEFAULT_DATA})")
    p.add_argument("--seed", type=int, default=0, help="seed of the dev-test hold-out (as bench/banking77.py)")
    p.add_argument("--dev-size", type=int, default=DEV_SIZE)
    p.add_argument("--model", help="base model: Hugging Face id or local folder (default: the bundled MiniLM)")
    p.add_argument("--workspace", type=Path, help="workspace holding --version")
    p.add_argument("--version", help="use this trained version's encoder and head instead of the base model")
    p.add_argument("--teacher-model", help="a frozen second view (curate.teacher_encoder): its graph carries the "
                   "first view's scores; e.g. all-mpnet-base-v2 (requirements-encoders.txt)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "evolab" / "bench",
                   help="where the teacher view's embeddings are kept between runs")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--k", type=int, default=10, help="neighbours in the propagation graph (curate.knn_k)")
    args = p.parse_args(argv)
    if bool(args.workspace) != bool(args.version):
        print("teacher_ceiling: --workspace and --version go together", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (BenchError, OSError, ValueError) as err:
        print(f"teacher_ceiling: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from core.curate.propagate import propagate

    start = time.time()
    seed_df, _, pool_df, dev_df = split_protocol(args.data / "train.csv", args.seed, args.dev_size, pool_labels=True)
    labels = sorted(seed_df.label.unique())  # every label: the protocol's seed takes each label's first rows
    index = {label: i for i, label in enumerate(labels)}
    frames = {"seed": seed_df, "pool": pool_df, "dev": dev_df}
    y = {n: df.label.map(index).to_numpy() for n, df in frames.items()}
    emb, proba, source = encode(args, frames, labels)
    k = len(labels)

    def fit(x, target):
        return LogisticRegression(C=10, max_iter=3000).fit(x, target)

    def acc(scores, truth):
        return float((scores.argmax(1) == truth).mean())

    seed_lr = fit(emb["seed"], y["seed"])
    model_pool = proba["pool"] if proba is not None else seed_lr.predict_proba(emb["pool"])
    teachers = {
        "model alone": model_pool,
        "propagation alone": propagate(emb["seed"], y["seed"], emb["pool"], k, k=args.k),
        "propagation seeded by the model (default)": propagate(emb["seed"], y["seed"], emb["pool"], k, k=args.k,
                                                              prior=model_pool),
    }
    if args.teacher_model:
        from core.curate import views

        # the engine's own frozen view, its cache beside the data's other bench outputs: encoded once per text
        teacher = views.for_config(args.teacher_model, args.cache)
        view = {n: teacher.embed(df.text.tolist(), progress=True) for n, df in frames.items()}
        view_lr = fit(view["seed"], y["seed"])
        teachers[f"{args.teacher_model} alone: seed-only logistic regression"] = view_lr.predict_proba(view["pool"])
        teachers[f"{args.teacher_model} alone: propagation"] = propagate(view["seed"], y["seed"], view["pool"], k,
                                                                         k=args.k)
        teachers[f"propagation over {args.teacher_model}'s graph seeded by the model"] = propagate(
            view["seed"], y["seed"], view["pool"], k, k=args.k, prior=model_pool)
        both = {n: np.hstack([emb[n], view[n]]) / np.sqrt(2) for n in frames}
        teachers["propagation over both views' graph seeded by the model"] = propagate(
            both["seed"], y["seed"], both["pool"], k, k=args.k, prior=model_pool)
    print(f"data      {args.data}: {k} labels; seed {len(seed_df):,}, pool {len(pool_df):,}, dev test {len(dev_df):,}")
    print(f"encoder   {source}")
    print(f"baseline  seed-only logistic regression, dev test: {acc(seed_lr.predict_proba(emb['dev']), y['dev']):.2%}")
    if proba is not None:
        print(f"          the version's own head, dev test: {acc(proba['dev'], y['dev']):.2%}")
    print("teachers  pseudo-label accuracy on the pool:")
    for name, scores in teachers.items():
        print(f"          {acc(scores, y['pool']):7.2%}  {name}")

    pseudo = teachers["propagation seeded by the model (default)"].argmax(1)
    wrong = np.flatnonzero(pseudo != y["pool"])
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(wrong)
    x = np.vstack([emb["seed"], emb["pool"]])
    print("ceiling   student = logistic regression on seed + whole pool, scored on the dev test:")
    print("          teacher errors fixed   pseudo-label acc   student dev acc")
    for frac in FIX_FRACTIONS:
        fixed = pseudo.copy()
        chosen = shuffled[:int(round(frac * len(wrong)))]
        fixed[chosen] = y["pool"][chosen]
        student = fit(x, np.concatenate([y["seed"], fixed]))
        print(f"          {frac:20.0%}   {float((fixed == y['pool']).mean()):16.2%}   "
              f"{float((student.predict(emb['dev']) == y['dev']).mean()):15.2%}", flush=True)
    print(f"time      {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
