"""The workspace schema: its migrations, one per version, and the upgrade every connection runs first."""
from __future__ import annotations

import duckdb

from core.store.base import SchemaError

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR);
    CREATE TABLE labels(idx INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE);
    CREATE TABLE datasets(id INTEGER PRIMARY KEY, split VARCHAR NOT NULL, source VARCHAR,
        n_rows INTEGER, sha256 VARCHAR, created_at TIMESTAMP);
    CREATE TABLE examples(id BIGINT PRIMARY KEY, dataset_id INTEGER, split VARCHAR NOT NULL,
        text VARCHAR NOT NULL, label VARCHAR, row_num INTEGER);
    CREATE TABLE cycles(id INTEGER PRIMARY KEY, kind VARCHAR NOT NULL, status VARCHAR NOT NULL,
        stage VARCHAR NOT NULL, parent_version VARCHAR, candidate_version VARCHAR, error VARCHAR,
        created_at TIMESTAMP, updated_at TIMESTAMP, finished_at TIMESTAMP);
    CREATE TABLE stage_runs(cycle_id INTEGER, stage VARCHAR, started_at TIMESTAMP,
        seconds DOUBLE, peak_rss_mb DOUBLE, detail JSON, PRIMARY KEY(cycle_id, stage));
    CREATE TABLE train_metrics(run_id VARCHAR, step INTEGER, name VARCHAR, value DOUBLE,
        epoch DOUBLE, "at" TIMESTAMP, PRIMARY KEY(run_id, step, name));
    CREATE TABLE train_events(run_id VARCHAR, step INTEGER, kind VARCHAR, detail VARCHAR,
        "at" TIMESTAMP, PRIMARY KEY(run_id, step, kind));
    CREATE TABLE model_versions(version VARCHAR PRIMARY KEY, num INTEGER NOT NULL UNIQUE,
        created_at TIMESTAMP, cycle_id INTEGER, parent_version VARCHAR, base_model VARCHAR,
        path VARCHAR, files JSON, lineage JSON);
    CREATE TABLE evaluations(version VARCHAR, split VARCHAR, accuracy DOUBLE, n INTEGER,
        per_class JSON, "at" TIMESTAMP, PRIMARY KEY(version, split));
    CREATE TABLE eval_results(version VARCHAR, example_id BIGINT, predicted VARCHAR,
        confidence DOUBLE, correct BOOLEAN, PRIMARY KEY(version, example_id));
    CREATE TABLE aliases(name VARCHAR PRIMARY KEY, version VARCHAR, updated_at TIMESTAMP);
    CREATE TABLE alias_history(id INTEGER PRIMARY KEY, name VARCHAR, version VARCHAR,
        previous VARCHAR, actor VARCHAR, reason VARCHAR, "at" TIMESTAMP);
    CREATE TABLE synthetic_samples(id BIGINT PRIMARY KEY, cycle_id INTEGER, generator VARCHAR,
        parent_id BIGINT, text VARCHAR, label VARCHAR, confidence DOUBLE, difficulty INTEGER,
        scores JSON, status VARCHAR, reason VARCHAR, created_at TIMESTAMP);
    CREATE INDEX samples_cycle ON synthetic_samples(cycle_id);
    CREATE TABLE diagnoses(cycle_id INTEGER, rank INTEGER, kind VARCHAR, subject VARCHAR,
        severity DOUBLE, detail JSON, action VARCHAR, PRIMARY KEY(cycle_id, rank));
    CREATE TABLE gates(id INTEGER PRIMARY KEY, cycle_id INTEGER, kind VARCHAR, status VARCHAR,
        policy VARCHAR, checks JSON, created_at TIMESTAMP, deadline TIMESTAMP,
        decided_at TIMESTAMP, decided_by VARCHAR, comment VARCHAR, automatic BOOLEAN,
        UNIQUE(cycle_id, kind));
    CREATE TABLE audit_log(seq BIGINT PRIMARY KEY, "at" TIMESTAMP, actor VARCHAR,
        action VARCHAR, subject VARCHAR, detail JSON, prev_hash VARCHAR, hash VARCHAR);
    """,
    """
    CREATE TABLE users(name VARCHAR PRIMARY KEY, role VARCHAR NOT NULL, password_hash VARCHAR NOT NULL,
        created_at TIMESTAMP);
    """,
    """
    CREATE TABLE guardrails(id INTEGER PRIMARY KEY, text VARCHAR NOT NULL, expected_label VARCHAR NOT NULL,
        note VARCHAR, created_at TIMESTAMP);
    CREATE TABLE drift_reports(cycle_id INTEGER PRIMARY KEY, candidate VARCHAR, production VARCHAR,
        passed BOOLEAN, report JSON, created_at TIMESTAMP);
    """,
    """
    CREATE TABLE attributions(cycle_id INTEGER, version VARCHAR, example_id BIGINT, label VARCHAR,
        predicted VARCHAR, correct BOOLEAN, target VARCHAR, tokens JSON, scores JSON, baseline VARCHAR,
        delta DOUBLE, PRIMARY KEY(cycle_id, example_id));
    CREATE TABLE diagnosis_internals(cycle_id INTEGER, kind VARCHAR, data JSON, PRIMARY KEY(cycle_id, kind));
    """,
    """
    ALTER TABLE synthetic_samples ADD COLUMN reviewed_by VARCHAR;
    ALTER TABLE synthetic_samples ADD COLUMN original_label VARCHAR;
    """,
    # v6: scaffolds (inference programs), their evaluations and A/B trials
    """
    CREATE TABLE scaffolds(id VARCHAR PRIMARY KEY, num INTEGER NOT NULL UNIQUE, name VARCHAR, parent_id VARCHAR,
        operator VARCHAR, spec JSON NOT NULL, spec_sha256 VARCHAR NOT NULL UNIQUE, cycle_id INTEGER,
        created_at TIMESTAMP, created_by VARCHAR);
    CREATE TABLE scaffold_evals(scaffold_id VARCHAR, model_version VARCHAR, split VARCHAR, n INTEGER,
        accuracy DOUBLE, coverage DOUBLE, selective_accuracy DOUBLE, guardrail_pass DOUBLE, novelty DOUBLE,
        detail JSON, "at" TIMESTAMP, PRIMARY KEY(scaffold_id, model_version, split));
    CREATE TABLE scaffold_trials(cycle_id INTEGER PRIMARY KEY, model_version VARCHAR, budget INTEGER,
        production_id VARCHAR, candidate_id VARCHAR, result JSON, created_at TIMESTAMP, updated_at TIMESTAMP);
    CREATE TABLE scaffold_adoptions(id INTEGER PRIMARY KEY, scaffold_id VARCHAR NOT NULL, previous VARCHAR,
        cycle_id INTEGER, actor VARCHAR, reason VARCHAR, "at" TIMESTAMP);
    """,
    # v7: production logs of the server (predictions and human feedback)
    """
    CREATE TABLE predictions(id VARCHAR PRIMARY KEY, "at" TIMESTAMP, text VARCHAR NOT NULL, label VARCHAR,
        confidence DOUBLE, model_version VARCHAR, scaffold_version VARCHAR, latency_ms DOUBLE);
    CREATE INDEX predictions_text ON predictions(text);
    CREATE TABLE feedback(prediction_id VARCHAR PRIMARY KEY, label VARCHAR NOT NULL, "at" TIMESTAMP,
        actor VARCHAR);
    """,
    # v8: the held-out set's two parts: `selection` (checkpoints, early stopping, diagnosis) and `gate`
    # (the gates' estimates, nothing else); filled by assign_heldout_parts
    """
    CREATE TABLE heldout_parts(example_id BIGINT PRIMARY KEY, part VARCHAR NOT NULL);
    """,
    # v9: oversight: failed sign-ins per name and window, API tokens, decisions that override failed checks
    """
    CREATE TABLE auth_failures(name VARCHAR PRIMARY KEY, window_start TIMESTAMP, window_count INTEGER,
        consecutive INTEGER, locked_until TIMESTAMP);
    CREATE TABLE api_tokens(name VARCHAR PRIMARY KEY, token_hash VARCHAR NOT NULL, prefix VARCHAR NOT NULL,
        created_at TIMESTAMP, created_by VARCHAR, revoked_at TIMESTAMP, revoked_by VARCHAR);
    ALTER TABLE gates ADD COLUMN override BOOLEAN;
    """,
    # v10: tries of the cycle's current stage that began and did not finish (a raise or a dead process)
    """
    ALTER TABLE cycles ADD COLUMN tries INTEGER DEFAULT 0;
    """,
    # v11: the human budget: pool texts curation asks a person to label (curate.ask_humans_per_cycle), with
    # the model's suggestions, and the answers, which count as seed from the next cycle on
    """
    CREATE TABLE label_requests(id INTEGER PRIMARY KEY, cycle_id INTEGER NOT NULL, example_id BIGINT,
        text VARCHAR NOT NULL, score DOUBLE, uncertainty DOUBLE, density DOUBLE, suggestions JSON,
        status VARCHAR NOT NULL, label VARCHAR, answered_by VARCHAR, answered_at TIMESTAMP, created_at TIMESTAMP);
    """,
    # v12: the traffic probe: unlabeled rows set aside at init that nothing trains on or labels, whose
    # confidences carry the gate's held-out accuracy over to traffic (core/traffic.py); an
    # evaluation's detail holds that estimate and its interval
    """
    CREATE TABLE traffic_probe(example_id BIGINT PRIMARY KEY);
    ALTER TABLE evaluations ADD COLUMN detail JSON;
    """,
    # v13: labels from traffic where they decide (core/traffic.py): a label request is asked to train
    # (`train`, the human budget) or to grade (`evaluate`: a probe row, never trained on); each version's
    # predictions on the probe; each cycle's draw of probe rows, with the probabilities that keep the
    # traffic estimates unbiased
    """
    ALTER TABLE label_requests ADD COLUMN purpose VARCHAR DEFAULT 'train';
    CREATE TABLE probe_predictions(version VARCHAR, example_id BIGINT, predicted VARCHAR, confidence DOUBLE,
        PRIMARY KEY(version, example_id));
    CREATE TABLE traffic_designs(cycle_id INTEGER PRIMARY KEY, candidate VARCHAR, production VARCHAR,
        budget INTEGER, pi_disagree DOUBLE, pi_agree DOUBLE, detail JSON, created_at TIMESTAMP);
    """,
    # v14: after each promotion, the production scaffold re-tested against the plain model on the new production
    # version (core/scaffolds/stages.py), on a split of the selection rows of its own
    """
    CREATE TABLE scaffold_retests(cycle_id INTEGER PRIMARY KEY, model_version VARCHAR, production_id VARCHAR,
        result JSON, "at" TIMESTAMP);
    """,
    # v15: where a running stage's long work stands (core/executor.py's batches: texts encoded, samples executed,
    # locally or on Ray), for the Overview's stage line and for telling a slow stage from a stuck one
    """
    ALTER TABLE cycles ADD COLUMN progress_stage VARCHAR;
    ALTER TABLE cycles ADD COLUMN progress VARCHAR;
    ALTER TABLE cycles ADD COLUMN progress_at TIMESTAMP;
    """,
]
HELDOUT_PARTS = ("selection", "gate")
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaMixin:
    # Workspace files this process has already brought up to SCHEMA_VERSION.
    _migrated: set[str] = set()

    def _ensure_schema(self) -> None:
        key = str(self.path.resolve())
        if key in SchemaMixin._migrated:
            return
        if self._current_schema() == SCHEMA_VERSION:  # nothing to upgrade: no need to wait for a writer's turn
            SchemaMixin._migrated.add(key)
            return
        con = self._connect(read_only=False)
        try:
            con.execute("BEGIN TRANSACTION")
            has_meta = con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]
            current = 0
            if has_meta:
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                con.execute("ROLLBACK")
                raise SchemaError(f"workspace schema v{current} is newer than this Evolab (v{SCHEMA_VERSION})")
            for version in range(current, SCHEMA_VERSION):
                con.execute(MIGRATIONS[version])
            if 0 < current < 12:
                from core.config import DataConfig

                defaults = DataConfig()
                if current < 8:  # a workspace made before the held-out set had parts gets them now
                    self._assign_heldout_parts(con, defaults.selection_fraction, defaults.seed)
                # a probe only where nothing has trained on the pool yet: rows a version learned from would
                # read as easy traffic
                if not con.execute("SELECT count(*) FROM synthetic_samples").fetchone()[0]:
                    self._assign_traffic_probe(con, defaults)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            con.execute("COMMIT")
        finally:
            con.close()
        SchemaMixin._migrated.add(key)

    def _current_schema(self) -> int | None:
        """The file's schema version, read as a reader (the dashboard opening a workspace the engine writes, a
        template several test processes read): None where there is no file or no version yet."""
        if not self.path.exists():
            return None
        con = self._connect(read_only=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except duckdb.CatalogException:
            return None
        finally:
            con.close()
        return int(row[0]) if row else None

    def migrate(self) -> int:
        self._ensure_schema()
        return SCHEMA_VERSION

    def schema_version(self) -> int:
        return int(self._read("SELECT value FROM meta WHERE key = 'schema_version'").iloc[0, 0])

