"""The stored scaffolds: built-ins, additions, and which one is in production."""
from __future__ import annotations

from core.scaffolds import spec as S
from core.store import Store


def ensure_builtins(store: Store, actor: str = "engine") -> dict[str, str]:
    """Store the built-in scaffolds once, under their names as ids; name -> id."""
    return {name: store.add_scaffold(name, s, S.digest(s), actor, scaffold_id=name)[0]
            for name, s in ((n, S.builtin(n)) for n in S.BUILTINS)}


def add(store: Store, raw: str | dict, actor: str, parent_id: str | None = None, operator: str | None = None,
        cycle_id: int | None = None) -> tuple[str, bool]:
    """Validate and store a scaffold; the same steps again return the existing id. (id, new?)"""
    spec = S.parse(raw)
    return store.add_scaffold(spec["name"], spec, S.digest(spec), actor, parent_id, operator, cycle_id)


def get(store: Store, scaffold_id: str) -> dict:
    row = store.scaffold(scaffold_id)
    if row is None and scaffold_id in S.BUILTINS:  # built-ins answer by name before they are first stored
        return S.builtin(scaffold_id)
    if row is None:
        raise KeyError(f"no scaffold '{scaffold_id}' (list them with `python -m core scaffolds --workspace W`)")
    return S.parse(row["spec"])


def production_id(store: Store) -> str:
    """Id of the production scaffold: the default built-in until one is adopted."""
    return store.production_scaffold() or S.DEFAULT


def production(store: Store) -> tuple[str, dict]:
    """(id, spec) of the production scaffold. Reading never writes (a built-in's id is its name, stored or
    not), so a server can call it per request."""
    scaffold_id = production_id(store)
    return scaffold_id, get(store, scaffold_id)
