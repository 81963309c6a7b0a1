"""Every action a person takes, once: the CLI, the dashboard and the server call these, so the credential
check, the rule and the audit entry are the same whoever calls.

Each takes a `Principal` (core.auth): the CLI makes one from a name and password for each command, the
dashboard keeps one for a signed-in session. Actions that change what ships or what trains need an approver.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from core import auth
from core.auth import AuthError, Principal
from core.config import ConfigError, parse_config
from core.workspace import Workspace, flatten

# Gates whose failed checks mean the candidate must not ship: approving one anyway is an explicit override.
HARD_GATES = ("promotion", "scaffold_adoption")


def decide_gate(ws: Workspace, who: Principal, gate_id: int, approved: bool, comment: str = "",
                override: bool = False) -> dict:
    store = ws.store
    auth.require_role(store, who, f"gate:{gate_id}")
    gate = store.gate(gate_id)
    if gate is None:
        raise KeyError(f"no gate {gate_id}")
    comment = (comment or "").strip()
    if approved and gate["kind"] in HARD_GATES and not (gate["checks"] or {}).get("passed", True):
        if not override:
            raise ValueError(f"gate {gate_id}'s checks failed ({'; '.join(gate['checks'].get('reasons', []))}); "
                             "approving it anyway needs --override and a --comment giving the reason")
        if not comment:
            raise ValueError("an override needs a written reason (--comment)")
    elif override:
        raise ValueError(f"gate {gate_id} needs no override: "
                         + ("a rejection is never an override" if not approved else "its checks passed"))
    return store.decide_gate(gate_id, approved, who.name, comment, automatic=False, override=override)


def abandon_cycle(ws: Workspace, who: Principal, cycle_id: int, reason: str) -> dict:
    """Close a stuck open cycle where it stands: its pending gates are rejected and nothing it made ships.
    Refused while an engine is running, so no stage is cut off halfway by a decision it cannot see."""
    from core.workspace import WorkspaceError, engine_lock

    store = ws.store
    auth.require_role(store, who, f"cycle:{cycle_id}")
    reason = (reason or "").strip() or "no reason given"
    cycle = store.cycle(cycle_id)
    if cycle is None:
        raise KeyError(f"no cycle {cycle_id}")
    if cycle["status"] not in ("running", "waiting"):
        raise ValueError(f"cycle {cycle_id} is already {cycle['status']}; only an open cycle can be abandoned")
    try:
        with engine_lock(ws):
            store.abandon_cycle(cycle_id, who.name, reason)
    except WorkspaceError:
        raise WorkspaceError(f"an engine is running cycle {cycle_id} now; stop it first (SIGTERM stops it at the "
                             "next stage boundary), then abandon") from None
    return store.cycle(cycle_id)


def rollback_targets(store) -> list[str]:
    """Versions that have been production before and are not production now: the only valid rollbacks."""
    history = store.alias_history()
    current = store.alias("production")
    seen = history[(history["name"] == "production") & history["version"].notna()]["version"].tolist()
    return [v for v in dict.fromkeys(seen) if v != current]


def rollback(ws: Workspace, who: Principal, version: str) -> str | None:
    from core import registry  # here, not at the top: the dashboard imports this module and need not load torch

    store = ws.store
    auth.require_role(store, who, f"rollback:{version}")
    if store.version(version) is None:
        raise registry.NoModelError(f"no model version '{version}' in this workspace")
    if version not in rollback_targets(store):
        raise ValueError(f"{version} has never been production (or is production now); roll back only to one of: "
                         + (", ".join(rollback_targets(store)) or "none yet"))
    return registry.rollback(ws, version, actor=who.name)


def review_samples(ws: Workspace, who: Principal, ids: list[int] | None, action: str, label: str | None = None,
                   comment: str = "", filters: dict | None = None) -> int:
    """Approve, reject or relabel samples; ids=None means every sample the filters match."""
    store = ws.store
    auth.require_role(store, who, f"samples:{action}")
    if ids is None:
        ids = store.sample_query(**(filters or {}))["id"].astype(int).tolist()
    return store.review_samples(ids, action, who.name, label=label if action == "relabel" else None, comment=comment)


# What an answer is for: a `train` request's label is trained on, an `evaluate` one (a traffic-probe row) grades.
LABEL_USE = {"train": "it counts as seed from the next cycle",
             "evaluate": "it grades candidates on traffic and is never trained on"}


def answer_label_request(ws: Workspace, who: Principal, request_id: int, label: str | None = None,
                         skip: bool = False) -> dict:
    """A person's label for a text curation asked about (or a skip): an approver or a labeler. It counts as
    seed from the next cycle on and wins over any teacher's pseudo-label for that text."""
    auth.require_role(ws.store, who, f"label_request:{request_id}", roles=("approver", "labeler"))
    if skip == bool(label):
        raise ValueError("give a label (--label L) or --skip, not both" if skip else "give --label L or --skip")
    return ws.store.answer_label_request(request_id, None if skip else label.strip(), who.name, skip=skip)


def export_samples(ws: Workspace, who: Principal, out: Path, filters: dict, destination: str | None = None) -> int:
    """Kept samples (or those the filters match) to .parquet or .jsonl. Exports leave the workspace with its
    data: approvers only, audited with how many, which filters and where to (`destination`, else the file)."""
    from core.curate.export import export_samples as write

    auth.require_role(ws.store, who, "export:samples")
    out = Path(out)
    chosen = {k: v for k, v in filters.items() if v is not None and v != ""}
    return write(ws.store, out, lambda count: ws.store.audit(who.name, "samples_exported", "samples", {
        "count": count, "filters": chosen, "to": destination or str(out.resolve())}), **filters)


def add_guardrails(ws: Workspace, who: Principal, path: Path) -> int:
    """Must-hold probes from a CSV: they feed the drift gate, so adding them needs an approver."""
    from core.setup import add_guardrails as store_probes

    auth.require_role(ws.store, who, "guardrails")
    return store_probes(ws, Path(path), actor=who.name)


def add_scaffold(ws: Workspace, who: Principal, raw: str) -> tuple[str, bool]:
    """A person's scaffold in the archive, where a trial can adopt it: an approver. (id, new?)"""
    from core.scaffolds import archive

    auth.require_role(ws.store, who, "scaffold:add")
    return archive.add(ws.store, raw, who.name)


# -- users ------------------------------------------------------------------------------------------------
def add_user(ws: Workspace, who: Principal | None, name: str, role: str, password: str) -> None:
    """The first approver of a workspace needs no credential; after that, only an approver adds users."""
    store = ws.store
    if store.approver_count():
        if who is None:
            raise AuthError("this workspace has approvers: adding a user needs an approver's --by NAME and password")
        auth.require_role(store, who, f"user:{name}")
    auth.add_user(store, name, role, password, actor=who.name if who else "first-user")


def set_role(ws: Workspace, who: Principal, name: str, role: str) -> str:
    if role not in auth.ROLES:
        raise ValueError(f"role must be one of {', '.join(auth.ROLES)}, not '{role}'")
    auth.require_role(ws.store, who, f"user:{name}")
    return ws.store.set_role(name, role, who.name)


def remove_user(ws: Workspace, who: Principal, name: str) -> None:
    auth.require_role(ws.store, who, f"user:{name}")
    ws.store.remove_user(name, who.name)


# -- tokens -----------------------------------------------------------------------------------------------
def add_token(ws: Workspace, who: Principal, name: str) -> str:
    auth.require_role(ws.store, who, f"token:{name}")
    return auth.new_token(ws.store, name, who.name)


def revoke_token(ws: Workspace, who: Principal, name: str) -> None:
    auth.require_role(ws.store, who, f"token:{name}")
    ws.store.revoke_token(name, who.name)


# -- configuration ----------------------------------------------------------------------------------------
def parse_value(text: str):
    """A TOML value when it parses as one (2, 0.5, true, "auto", ["a"]), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def config_set(ws: Workspace, who: Principal, key: str, value: str) -> tuple:
    """Set one key of config.toml, validated; audited with the old and the new value. (old, new)"""
    auth.require_role(ws.store, who, f"config:{key}")
    raw = ws.config().model_dump()
    parts = [p.strip() for p in key.split(".")]
    node = raw
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            raise ConfigError(f"unknown config key '{key}'")
    if not parts[-1] or parts[-1] not in node or isinstance(node[parts[-1]], dict):
        raise ConfigError(f"unknown config key '{key}'")
    old = node[parts[-1]]
    node[parts[-1]] = parse_value(value)
    config = parse_config(raw)
    if parts[0] == "model":  # LoRA layers and targets must exist in the (new) base model: checked before writing
        from core.model import check_lora_layers  # here: the dashboard imports this module without torch

        check_lora_layers(config.model)
    new = flatten(config.model_dump())[key]
    # only this key is vouched for: a governed hand edit elsewhere in the file stays held
    ws.save_config(config, actor=who.name, accept=frozenset({key}))
    return old, new


def accept_config(ws: Workspace, who: Principal) -> dict:
    """Accept the hand edits of governed keys in config.toml (workspace.GOVERNED_PREFIXES), so the engine
    runs again; audited as `config_accepted` with each key's old and new value. {key: {"from", "to"}}"""
    from core.workspace import audit_config, held_config

    auth.require_role(ws.store, who, "config:accept")
    held = held_config(ws)
    if not held:
        raise ValueError("no hand edit of config.toml waits for an approver")
    audit_config(ws, who.name, accept=frozenset(held), action="config_accepted")
    return held


def make_autonomous(config) -> None:
    """The recorded autonomous mode: every gate decides by its own checks (`init --policy auto`)."""
    for name in ("data_review", "drift_review", "promotion", "scaffold_adoption"):
        getattr(config.gates, name).policy = "auto"
    # Nobody is waited for: traffic labels are still asked for, and count from whenever a person answers.
    config.gates.traffic_labels_wait_hours = 0.0

