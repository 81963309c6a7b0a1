"""The stored scaffolds: built-ins, additions, and which one is in production."""
from __future__ import annotations

from core.scaffolds import spec as S
from core.store import Store


def ensure_builtins(store: Store, actor: str = "engine") -> dict[str, str]:
    """Store the built-in scaffolds once; name -> id."""
    return {name: store.add_scaffold(name, s, S.digest(s), actor)[0]
            for name, s in ((n, S.builtin(n)) for n in S.BUILTINS)}


def add(store: Store, raw: str | dict, actor: str, parent_id: str | None = None, operator: str | None = None,
        cycle_id: int | None = None) -> tuple[str, bool]:
    """Validate and store a scaffold; the same steps again return the existing id. (id, new?)"""
    spec = S.parse(raw)
    return store.add_scaffold(spec["name"], spec, S.digest(spec), actor, parent_id, operator, cycle_id)


def get(store: Store, scaffold_id: str) -> dict:
    row = store.scaffold(scaffold_id)
    if row is None:
        raise KeyError(f"no scaffold '{scaffold_id}' (list them with `python -m core scaffolds --workspace W`)")
    return S.parse(row["spec"])


def production(store: Store) -> tuple[str, dict]:
    """(id, spec) of the production scaffold. Before any adoption it is the default built-in, named by its id
    once stored and by its name before that: reading never writes, so a server can call it per request."""
    adopted = store.production_scaffold()
    if adopted:
        return adopted, get(store, adopted)
    spec = S.builtin(S.DEFAULT)
    frame = store.scaffolds()
    found = frame.loc[frame["spec_sha256"] == S.digest(spec), "id"]
    return (found.iloc[0] if len(found) else S.DEFAULT), spec
