"""The only package that writes SQL: a DuckDB file owned by named read and write functions.

`Store` is one class made of one mixin per concern: base.py (the connection policy: one short transaction
per call, lock conflicts with other processes retried with backoff; errors and helpers), schema.py
(migrations), audit.py (the keyed audit chain, config history), users.py (users, sign-in failures, API
tokens), datasets.py (splits, held-out parts, traffic probe), cycles.py (cycles, stages, overview,
diagnosis), samples.py (samples, reviews, label requests), traffic.py (traffic labels, production logs),
registry.py (metrics, versions, aliases, evaluations), scaffolds.py, gates.py (gates, guardrails, drift).
"""
from __future__ import annotations

from core.store.audit import GENESIS_HASH, AuditMixin, entry_hash, entry_mac
from core.store.base import LOCK_TIMEOUT_S, BaseStore, SchemaError, StoreBusy, StoreConflict, utcnow
from core.store.cycles import END_STATUSES, CyclesMixin
from core.store.datasets import DatasetsMixin
from core.store.gates import EXPIRED, GatesMixin
from core.store.registry import RegistryMixin
from core.store.samples import SamplesMixin
from core.store.scaffolds import ScaffoldsMixin
from core.store.schema import HELDOUT_PARTS, MIGRATIONS, SCHEMA_VERSION, SchemaMixin
from core.store.traffic import TrafficMixin
from core.store.users import ALL_NAMES, UsersMixin

__all__ = ["ALL_NAMES", "END_STATUSES", "EXPIRED", "GENESIS_HASH", "HELDOUT_PARTS", "LOCK_TIMEOUT_S", "MIGRATIONS",
           "SCHEMA_VERSION", "SchemaError", "Store", "StoreBusy", "StoreConflict", "entry_hash", "entry_mac",
           "utcnow"]


class Store(BaseStore, SchemaMixin, AuditMixin, UsersMixin, DatasetsMixin, CyclesMixin, SamplesMixin,
            TrafficMixin, RegistryMixin, ScaffoldsMixin, GatesMixin):
    """All database access for one workspace file."""
