"""Every read the dashboard makes: short-lived, cached for a moment, shaped for the pages.

Pages hold layout only; they read through these functions and act through `core`. Each call opens the
store, reads and closes (the Store retries while the engine holds the file), so the dashboard never
blocks the engine for longer than one read. Results are cached for TTL_S seconds per workspace, which
keeps reruns cheap and the figures at most a couple of seconds old; `clear()` drops them after an action.
Every function copes with an empty workspace: no cycles, no versions, no samples.

One module per page of `pages/` (overview, training, diagnosis, synthetic_data, approvals, scaffolds, models,
audit), and `shared` for which workspace, the cache and the reads several pages make. A page imports its own
module and `shared`; every read is also here under its old name, for tests and scripts, except the overview's
`overview()`: `app.queries.overview` is the page's module, and the read is `app.queries.overview.overview`.
"""
from __future__ import annotations

from app.queries.shared import (BUSY_PATIENCE_S, ENV_VAR, TTL_S, alias, clear, cycle, cycles, evaluation,
                                evaluations, labels, pending_counts, pending_gates, workspace, workspace_from_args,
                                workspace_path, yield_report)
from app.queries.overview import (LIVE_REFRESH_S, STUCK_AFTER_S, cycle_running, problems, production_traffic,
                                  story)
from app.queries.training import live_run, metric_curves, replayed, train_events, train_runs
from app.queries.diagnosis import (CORRECT, FINDING_KINDS, TREND_BADGES, UNCLUSTERED, attributions, confused_pairs,
                                   confusion, diagnoses, diagnosis_internals, error_map, finding_trends, findings,
                                   token_html)
from app.queries.synthetic_data import (answer_label_request, execution_evidence, export_bytes, is_sql, label_queue,
                                        review_samples, sample_facets, sample_page)
from app.queries.approvals import approvers, decided_gates, drift_report, recall_comparison, scaffold_trial
from app.queries.scaffolds import scaffold_overview
from app.queries.models import alias_history, aliases, lineage, rollback_targets, version_detail, versions
from app.queries.audit import CHAIN_CASES, audit_chain, audit_check, audit_log
from app.queries import overview  # noqa: F401  the page's module (named like its read, which it shadows)
