"""Traffic: each cycle's draw of probe rows for people to label, and the server's production logs (its
predictions and people's corrections)."""
from __future__ import annotations

import json

import pandas as pd

from core.store.base import StoreConflict, _columns, _first, _json, _register, utcnow


class TrafficMixin:
    # -- traffic labels: each cycle's draw of probe rows for people to label --------------------
    def save_traffic_design(self, cycle_id: int, design: dict, requests: pd.DataFrame,
                            next_stage: str | None) -> None:
        """A cycle's draw of probe rows to label (core/traffic.py) with its requests, in one transaction. An
        earlier cycle's evaluation requests still pending are withdrawn: their draw is over, and a person's
        budget goes to the rows this candidate is graded on."""
        with self._tx() as con:
            if con.execute("SELECT 1 FROM traffic_designs WHERE cycle_id = ?", [cycle_id]).fetchone():
                raise StoreConflict(f"cycle {cycle_id} already drew its traffic labels")
            con.execute("UPDATE label_requests SET status = 'withdrawn' WHERE purpose = 'evaluate' "
                        "AND status = 'pending' AND cycle_id <> ?", [cycle_id])
            con.execute("INSERT INTO traffic_designs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [cycle_id, design["candidate"], design["production"], design["budget"],
                         design["pi_disagree"], design["pi_agree"], _json(design), utcnow()])
            self._save_label_requests(con, cycle_id, requests, purpose="evaluate")
            if next_stage:
                self._set_stage(con, cycle_id, next_stage)

    def traffic_designs(self) -> pd.DataFrame:
        return self._read("SELECT * FROM traffic_designs ORDER BY cycle_id")

    def traffic_design(self, cycle_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM traffic_designs WHERE cycle_id = ?", [cycle_id]))
        if row:
            row["detail"] = json.loads(row["detail"] or "{}")
        return row

    def traffic_labels(self) -> pd.DataFrame:
        """Probe rows people labeled to grade models (example_id, text, label, cycle_id, answered_at): never
        trained on. Skipped and withdrawn requests are not labels."""
        return self._read("SELECT example_id, text, label, cycle_id, answered_at FROM label_requests "
                          "WHERE purpose = 'evaluate' AND status = 'answered' ORDER BY answered_at, id")

    # -- production logs (the server's predictions and people's corrections) ------------------
    PREDICTION_COLUMNS = ["id", "at", "text", "label", "confidence", "model_version", "scaffold_version",
                          "latency_ms"]
    FEEDBACK_COLUMNS = ["prediction_id", "label", "at", "actor"]

    def log_production(self, predictions: pd.DataFrame, feedback: pd.DataFrame) -> None:
        """One batch of the server's logs in one transaction. Predictions are written once (a retried
        batch is harmless); a later correction of the same prediction replaces the earlier one."""
        with self._tx() as con:
            if len(predictions):
                _register(con, "pred_df", predictions[self.PREDICTION_COLUMNS])
                con.execute(f"INSERT OR IGNORE INTO predictions SELECT {_columns(self.PREDICTION_COLUMNS)} "
                            "FROM pred_df")
            if len(feedback):
                latest = feedback[self.FEEDBACK_COLUMNS].drop_duplicates("prediction_id", keep="last")
                _register(con, "fb_df", latest)
                con.execute(f"INSERT OR REPLACE INTO feedback SELECT {_columns(self.FEEDBACK_COLUMNS)} "
                            "FROM fb_df")
                # one entry per batch and sender: who put corrections into the store, not one per row
                for actor, group in latest.groupby("actor"):
                    self._audit(con, str(actor), "feedback_received", "feedback",
                                {"count": len(group), "prediction_ids": group["prediction_id"].head(20).tolist()})

    def known_predictions(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        df = self._read("SELECT id FROM predictions WHERE id IN (SELECT unnest(?))", [list(ids)])
        return set(df["id"])

    def production_texts(self) -> pd.DataFrame:
        """Logged traffic as unlabeled texts (id, text, label=None), oldest first, each text once, and never
        a text of the held-out set or one already stored as an example. Ids are negative and stable
        (a hash of the text), so they never collide with example ids."""
        return self._read(
            "SELECT -(hash(text) % 4611686018427387903)::BIGINT - 1 AS id, text, NULL::VARCHAR AS label "
            "FROM predictions WHERE text NOT IN (SELECT text FROM examples) "
            "GROUP BY text ORDER BY min(\"at\"), text")

    def unlabeled_pool(self) -> pd.DataFrame:
        """What curation may self-label: the unlabeled split less the traffic probe, then logged production
        traffic."""
        pool = self._read("SELECT id, text, label FROM examples WHERE split = 'unlabeled' "
                          "AND id NOT IN (SELECT example_id FROM traffic_probe) ORDER BY id")
        traffic = self.production_texts()
        if traffic.empty or pool.empty:
            return pool if traffic.empty else traffic
        return pd.concat([pool, traffic], ignore_index=True)

    def production_feedback(self, version: str | None = None) -> pd.DataFrame:
        """People's corrections joined to what was served: prediction_id, text, served, label (the
        corrected one), confidence, model_version, at. Feedback on held-out or traffic-probe texts is left
        out, so a correction never leaks the rows that grade a model into its training."""
        where, params = ("AND p.model_version = ?", [version]) if version else ("", [])
        return self._read(
            "SELECT f.prediction_id, p.text, p.label AS served, f.label, p.confidence, p.model_version, "
            "p.scaffold_version, f.\"at\", f.actor FROM feedback f JOIN predictions p ON p.id = f.prediction_id "
            "WHERE p.text NOT IN (SELECT text FROM examples WHERE split = 'heldout' "
            f"OR id IN (SELECT example_id FROM traffic_probe)) {where} "
            "ORDER BY f.\"at\", f.prediction_id", params)

    def production_summary(self) -> dict:
        """Traffic figures for the dashboard: requests per version, feedback, corrected errors."""
        with self._tx(read_only=True) as con:
            total, first, last = con.execute("SELECT count(*), min(\"at\"), max(\"at\") FROM predictions").fetchone()
            fb, wrong = con.execute("SELECT count(*), count(*) FILTER (WHERE p.label <> f.label) FROM feedback f "
                                    "JOIN predictions p ON p.id = f.prediction_id").fetchone()
            by_version = con.execute("SELECT model_version, scaffold_version, count(*) AS predictions, "
                                     "avg(latency_ms) AS mean_latency_ms FROM predictions "
                                     "GROUP BY ALL ORDER BY min(\"at\")").df()
            pairs = con.execute("SELECT p.label AS served, f.label AS corrected, count(*) AS n FROM feedback f "
                                "JOIN predictions p ON p.id = f.prediction_id WHERE p.label <> f.label "
                                "GROUP BY ALL ORDER BY n DESC, served, corrected").df()
        return {"predictions": int(total), "first": first, "last": last, "feedback": int(fb),
                "corrected_errors": int(wrong), "by_version": by_version, "corrected_pairs": pairs}
