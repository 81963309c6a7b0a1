"""Creating a workspace from a user's CSV files: validate everything first, write nothing half-done."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from core import auditkey
from core import data as D
from core.config import Config
from core.store import Store
from core.workspace import Workspace, audit_config, staging


def check_base_model(name: str) -> None:
    from transformers import AutoConfig

    from core.model import resolve_base

    try:
        AutoConfig.from_pretrained(resolve_base(name))
    except Exception as err:  # any reason the weights cannot be found is the same problem to the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise D.DataError(f"base model '{name}' cannot be loaded: {first}") from None


def init_workspace(root: Path, labeled: Path, unlabeled: Path | None = None, heldout: Path | None = None,
                   text_col: str = "text", label_col: str = "label", base_model: str | None = None,
                   config: Config | None = None, guardrails: Path | None = None) -> Workspace:
    config = config or Config()
    config.data.text_col, config.data.label_col = text_col, label_col
    if base_model:
        config.model.base_model = base_model
    limits = {"max_text_chars": config.data.max_text_chars, "max_file_bytes": config.data.max_file_bytes}
    seed = D.read_csv(labeled, text_col, label_col, **limits)
    labels = sorted(set(seed.frame["label"]))
    if len(labels) < 2:
        raise D.DataError(f"{labeled}: needs at least two labels, found {len(labels)}")
    if heldout:
        held = D.read_csv(heldout, text_col, label_col, **limits)
        D.check_known_labels(held, set(labels), "the held-out file")
        seed_frame, held_frame, held_source, held_sha = seed.frame, held.frame, held.source, held.sha256
    else:
        seed_frame, held_frame = D.stratified_split(seed.frame, config.data.heldout_fraction, config.data.seed)
        held_source, held_sha = f"{seed.source} (stratified {config.data.heldout_fraction:.0%})", seed.sha256
        if held_frame.empty:
            raise D.DataError(f"{labeled}: too few rows per label to hold any out; pass --heldout")
    pool = D.read_csv(unlabeled, text_col, None, **limits) if unlabeled else None
    probes = read_guardrails(guardrails, labels, config) if guardrails else None
    check_base_model(config.model.base_model)
    from core.model import check_lora_layers

    check_lora_layers(config.model)  # LoRA settings the base model cannot take: refused before any file is written

    parts = [("seed", seed.source, seed.sha256, seed_frame), ("heldout", held_source, held_sha, held_frame)]
    if pool is not None:
        parts.append(("unlabeled", pool.source, pool.sha256, pool.frame))
    with staging(Path(root)) as ws:
        ws.save_config(config)
        workspace_id = Store(ws.db).start_audit_key()  # before the first entry, so the whole log is keyed
        Store(ws.db).load_datasets(labels, parts, "cli", {
            "labels": len(labels), "rows": {split: len(frame) for split, _, _, frame in parts},
            "base_model": config.model.base_model}, config.data)
        if probes is not None:
            Store(ws.db).add_guardrails(probes, "cli", str(Path(guardrails).resolve()))
        audit_config(ws, "cli")
        staged = ws.db
    # The marker names where the workspace lives now, not the staging folder it was built in. A marker left by
    # an earlier workspace at this path is replaced: staging refused to build over one that still exists.
    final = Workspace(Path(root))
    auditkey.write_marker(final.db, workspace_id, replace=True)
    auditkey.forget_marker(staged)
    return final


def read_predict_input(path: Path, text_col: str, config: Config) -> pd.DataFrame:
    table = D.read_csv(path, text_col, None, max_text_chars=config.data.max_text_chars,
                       max_file_bytes=config.data.max_file_bytes, keep_extra=True)
    return table.frame.drop(columns=["row_num"])


def read_guardrails(path: Path, labels: list[str], config: Config) -> pd.DataFrame:
    """Must-hold probes: `text,expected_label[,note]`, every expected label one the model knows."""
    table = D.read_csv(path, "text", "expected_label", max_text_chars=config.data.max_text_chars,
                       max_file_bytes=config.data.max_file_bytes, keep_extra=True)
    frame = table.frame
    unknown = sorted(set(frame["expected_label"].astype(str).str.strip()) - set(labels))
    if unknown:
        raise D.DataError(f"{path}: guardrail expected_label(s) not among the model's labels: "
                          + ", ".join(f"'{u}'" for u in unknown[:5]))
    notes = frame["note"].astype(str) if "note" in frame else ""
    return pd.DataFrame({"text": frame["text"], "expected_label": frame["expected_label"].str.strip(),
                         "note": notes})


def add_guardrails(ws: Workspace, path: Path, actor: str) -> int:
    """Low level: no credential check. core.actions.add_guardrails is the guarded path every caller uses."""
    probes = read_guardrails(path, ws.store.labels(), ws.config())
    return ws.store.add_guardrails(probes, actor, str(Path(path).resolve()))
