"""Presets: a skill made one command (`init --preset NAME`, `demo --preset NAME`).

`sql-migrations`: route a schema migration to what running it would do (safe, fails, loses_data,
breaks_queries, rewrites_table). The seed and held-out migrations are the hand-written ones shipped in data/
(the held-out file is stored as the held-out set, read only by evaluation and the gates, as for any --heldout
file). The unlabeled traffic is written at init by the sql_migrations grammar with its labels thrown away
(POOL_SIZE migrations, a fixed seed, none equal to a seed or held-out text): production traffic this skill has
not seen. The config turns on the generator and the execution verifier: a throwaway PostgreSQL cluster when its
server binaries are installed, else the embedded DuckDB fallback, which cannot observe locks or rewrites and so
drops samples claiming safe or rewrites_table as unverifiable (say so, loudly).
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parent.parent / "data"
POOL_SIZE = 400
POOL_SEED = 20260
PRESETS = ("sql-migrations",)


def sandbox_backend() -> tuple[str, str | None]:
    """("local", None) when PostgreSQL's server binaries are here, else ("duckdb", why)."""
    from core.sandbox.postgres import PostgresMissing, find_bindir

    try:
        find_bindir()
        return "local", None
    except PostgresMissing as err:
        return "duckdb", (f"{err}; using the embedded DuckDB sandbox instead, which cannot observe locks or "
                          "rewrites: samples claiming safe or rewrites_table are dropped as unverifiable. Install "
                          "PostgreSQL and `config set curate.sandbox local` for the full skill")


def sql_pool(n: int, seed: int, exclude: set[str]) -> list[str]:
    """n grammar migrations at every label and level, labels discarded: unlabeled traffic."""
    from core.curate import sql_migrations as G
    from core.sandbox import LABELS

    rng, out, seen = random.Random(seed), [], set(exclude)
    for _ in range(n * 20):
        if len(out) >= n:
            break
        sql, _ = G.generate(rng.choice(LABELS), rng.randrange(4), rng)
        if sql not in seen and G.parses(sql):
            seen.add(sql)
            out.append(sql)
    return out


def sql_migrations_config(config, backend: str) -> None:
    """The skill's settings on top of whatever the caller chose (policy, base model)."""
    config.curate.generators = ["self_label", "sql_migrations", "feedback"]
    config.curate.sandbox = backend
    # More written migrations per class than the generic default: the first cycle reached 61.2% on the held-out
    # migrations with 80 per class and a cap of 300, against 56.7% with 40 and 200 (bench/README, two runs each).
    config.curate.sql_migrations_per_class, config.curate.max_per_class = 80, 300
    # Perturbing SQL (a word dropped, two swapped, a typo) makes another migration, not the same one reworded.
    config.curate.perturbed_views = 0
    # The 95th percentile of a generated migration is 60 tokens, the longest about 100.
    config.model.max_length = 96
    # Execution-verified migrations are most of what curation keeps; the one-generator-share check guards against
    # a generator's unverified text flooding the kept set, which the sandbox rules out here.
    config.gates.data_review.max_generator_share = 1.0
    # From a 70-row seed the first candidates change many answers on purpose (the baseline is right on about a
    # third of the held-out migrations); measured: cycle 1 flipped 41% of the held-out answers and 46% of traffic,
    # KL 0.62, while going from 31% to 57%. The promotion gate's margin and forgetting test still judge them.
    config.drift.max_flip_rate, config.drift.max_kl = 0.6, 2.0


def init_preset(root: Path, name: str, config=None, base_model: str | None = None, adjust=None,
                guardrails: Path | None = None):
    """Create a workspace for a preset; returns (workspace, notes for the person who asked). adjust: called on
    the preset's config before it is written (a benchmark's overrides), returning the config to use;
    guardrails: a probes CSV, checked and stored as init_workspace does without a preset."""
    from core.config import Config
    from core.setup import init_workspace

    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    config = config or Config()
    backend, why = sandbox_backend()
    sql_migrations_config(config, backend)
    if adjust is not None:
        config = adjust(config)
    seed, held = DATA / "sql_migrations_seed.csv", DATA / "sql_migrations_heldout.csv"
    known = set(pd.read_csv(seed)["text"]) | set(pd.read_csv(held)["text"])
    with tempfile.TemporaryDirectory(prefix="evolab-preset-") as tmp:
        pool = Path(tmp) / "unlabeled.csv"
        pd.DataFrame({"text": sql_pool(POOL_SIZE, POOL_SEED, known)}).to_csv(pool, index=False)
        ws = init_workspace(Path(root), seed, pool, held, base_model=base_model, config=config,
                            guardrails=guardrails)
    notes = [f"preset sql-migrations: execution verifier curate.sandbox = \"{backend}\""
             + (" (a throwaway PostgreSQL cluster per curation)" if backend == "local" else ""),
             f"unlabeled traffic: {POOL_SIZE} migrations written by the sql_migrations grammar, labels discarded"]
    if why:
        notes.append(f"note: {why}")
    return ws, notes
