"""Curation's output: synthetic samples and people's reviews of them; the human budget: texts curation asks a
person to label, their answers, and the seed they make."""
from __future__ import annotations

import json

import pandas as pd

from core.store.base import StoreConflict, _first, _register, _where_equal, utcnow


class SamplesMixin:
    # -- samples: curation's output and people's reviews of it --------------------------------
    def save_samples(self, cycle_id: int, samples: pd.DataFrame, next_stage: str,
                     requests: pd.DataFrame | None = None) -> None:
        """The curate stage's output: its samples and the texts it asks people to label (example_id, text,
        score, uncertainty, density, suggestions), replacing an earlier run's; answered requests stay."""
        with self._tx() as con:
            self._save_label_requests(con, cycle_id, requests)
            con.execute("DELETE FROM synthetic_samples WHERE cycle_id = ?", [cycle_id])
            start = con.execute("SELECT coalesce(max(id), 0) + 1 FROM synthetic_samples").fetchone()[0]
            if len(samples):
                frame = samples.assign(id=range(start, start + len(samples)), cycle_id=cycle_id,
                                       created_at=utcnow())
                _register(con, "samples_df", frame)
                con.execute("INSERT INTO synthetic_samples SELECT id, cycle_id, generator, parent_id, text, "
                            "label, confidence, difficulty, scores, status, reason, created_at, NULL, NULL "
                            "FROM samples_df")
            self._set_stage(con, cycle_id, next_stage)

    REVIEW_ACTIONS = ("approve", "reject", "relabel")

    def review_samples(self, ids: list[int], action: str, by: str, label: str | None = None,
                       comment: str = "") -> int:
        """A person's decision on samples; it wins over every verifier and is audited."""
        if action not in self.REVIEW_ACTIONS:
            raise ValueError(f"unknown review action '{action}'")
        if not ids:
            raise ValueError("no samples selected")
        with self._tx() as con:
            found = con.execute("SELECT count(*) FROM synthetic_samples WHERE id IN (SELECT unnest(?))",
                                [ids]).fetchone()[0]
            if found != len(set(ids)):
                raise KeyError(f"{len(set(ids)) - found} of the selected sample ids do not exist")
            if action == "relabel":
                if label is None or not con.execute("SELECT 1 FROM labels WHERE name = ?", [label]).fetchone():
                    raise ValueError(f"unknown label '{label}'")
                con.execute("UPDATE synthetic_samples SET original_label = coalesce(original_label, label), "
                            "label = ?, status = 'approved', reason = ?, reviewed_by = ? "
                            "WHERE id IN (SELECT unnest(?))", [label, f"relabelled by {by}", by, ids])
            else:
                status = "approved" if action == "approve" else "rejected"
                con.execute("UPDATE synthetic_samples SET status = ?, reason = ?, reviewed_by = ? "
                            "WHERE id IN (SELECT unnest(?))", [status, f"{status} by {by}", by, ids])
            self._audit(con, by, f"samples_{action}", "samples", {"ids": sorted(set(ids))[:1000],
                                                                  "count": len(set(ids)), "label": label,
                                                                  "comment": comment})
            return len(set(ids))

    def reviewed_samples(self, before_cycle: int) -> pd.DataFrame:
        """The latest human decision per text from earlier cycles."""
        return self._read("SELECT text, label, status, reviewed_by FROM synthetic_samples "
                          "WHERE reviewed_by IS NOT NULL AND cycle_id < ? "
                          "QUALIFY row_number() OVER (PARTITION BY text ORDER BY cycle_id DESC, id DESC) = 1",
                          [before_cycle])

    def replayable_samples(self, before_cycle: int) -> pd.DataFrame:
        """What earlier cycles verified, for training to replay (core/curate/replay.py): samples kept or approved in
        a cycle before `before_cycle` whose data review let them train, one row per text (the newest cycle's), with
        people's latest decision on the text applied wherever they made it: a text a person rejected is left out,
        one a person relabelled carries their label. Columns: id, cycle_id, generator, text, label, status,
        scores."""
        return self._read(
            "WITH human AS (SELECT text, label, status FROM synthetic_samples WHERE reviewed_by IS NOT NULL "
            "  QUALIFY row_number() OVER (PARTITION BY text ORDER BY cycle_id DESC, id DESC) = 1) "
            "SELECT s.id, s.cycle_id, s.generator, s.text, coalesce(h.label, s.label) AS label, "
            "  coalesce(h.status, s.status) AS status, s.scores FROM synthetic_samples s "
            "JOIN gates g ON g.cycle_id = s.cycle_id AND g.kind = 'data_review' AND g.status = 'approved' "
            "LEFT JOIN human h ON h.text = s.text "
            "WHERE s.cycle_id < ? AND s.status IN ('kept', 'approved') AND coalesce(h.status, '') <> 'rejected' "
            "QUALIFY row_number() OVER (PARTITION BY s.text ORDER BY s.cycle_id DESC, s.id DESC) = 1 "
            "ORDER BY s.cycle_id, s.id", [int(before_cycle)])

    @staticmethod
    def _sample_filter(cycle_id=None, status=None, generator=None, label=None, search=None, difficulty=None,
                       min_confidence=None) -> tuple[str, list]:
        where, params = [], []
        if min_confidence is not None:
            where.append("confidence >= ?")
            params.append(float(min_confidence))
        for column, value in (("cycle_id", cycle_id), ("status", status), ("generator", generator),
                              ("label", label), ("difficulty", difficulty)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if search and search.strip():
            where.append("contains(lower(text), lower(?))")
            params.append(search.strip())
        return (f"WHERE {' AND '.join(where)}" if where else ""), params

    def sample_query(self, limit: int | None = None, offset: int = 0, **filters) -> pd.DataFrame:
        """Filtering and paging in SQL, so a million samples never pass through pandas whole."""
        clause, params = self._sample_filter(**filters)
        page = f"LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        return self._read(f"SELECT * FROM synthetic_samples {clause} ORDER BY id {page}", params)

    SAMPLE_PAGE_COLUMNS = ["id", "cycle_id", "generator", "status", "label", "confidence", "difficulty", "reason",
                           "text", "parent_id", "scores", "created_at"]

    def sample_page(self, page: int = 1, page_size: int = 50, **filters) -> tuple[pd.DataFrame, int, int]:
        """One page of matching samples: (rows, total matching, page actually shown), read in one transaction
        so the count and the page agree while the engine writes."""
        clause, params = self._sample_filter(**filters)
        page_size = max(1, int(page_size))
        with self._tx(read_only=True) as con:
            total = con.execute(f"SELECT count(*) FROM synthetic_samples {clause}", params).fetchone()[0]
            last = max(1, -(-total // page_size))
            page = min(max(1, int(page)), last)
            rows = con.execute(f"SELECT {', '.join(self.SAMPLE_PAGE_COLUMNS)} FROM synthetic_samples {clause} "
                               f"ORDER BY id LIMIT ? OFFSET ?", [*params, page_size, (page - 1) * page_size]).df()
        return rows, int(total), page

    def sample_facets(self) -> dict[str, list]:
        """The distinct values a sample browser can filter on."""
        with self._tx(read_only=True) as con:
            def distinct(column: str) -> list:
                return [r[0] for r in con.execute(f"SELECT DISTINCT {column} FROM synthetic_samples "
                                                  f"WHERE {column} IS NOT NULL ORDER BY 1").fetchall()]
            return {c: distinct(c) for c in ("cycle_id", "generator", "status", "label", "difficulty")}

    def samples(self, cycle_id: int | None = None, status: str | None = None) -> pd.DataFrame:
        clause, params = _where_equal(cycle_id=cycle_id, status=status)
        return self._read(f"SELECT * FROM synthetic_samples {clause} ORDER BY id", params)

    # -- the human budget: texts curation asks a person to label, and their answers -------------
    LABEL_REQUEST_COLUMNS = ["example_id", "text", "score", "uncertainty", "density", "suggestions"]

    def _save_label_requests(self, con, cycle_id: int, requests: pd.DataFrame | None, purpose: str = "train") -> None:
        # New ids start above every id before the delete, so a rerun never reuses a key in one transaction.
        start = con.execute("SELECT coalesce(max(id), 0) + 1 FROM label_requests").fetchone()[0]
        con.execute("DELETE FROM label_requests WHERE cycle_id = ? AND status = 'pending' AND purpose = ?",
                    [cycle_id, purpose])
        if requests is None or not len(requests):
            return
        asked = {r[0] for r in con.execute("SELECT text FROM label_requests").fetchall()}
        frame = requests[~requests["text"].isin(asked)][self.LABEL_REQUEST_COLUMNS].drop_duplicates("text")
        if not len(frame):
            return
        frame = frame.assign(id=range(start, start + len(frame)), cycle_id=cycle_id, created_at=utcnow(),
                             purpose=purpose)
        _register(con, "requests_df", frame)
        con.execute("INSERT INTO label_requests SELECT id, cycle_id, example_id, text, score, uncertainty, density, "
                    "suggestions, 'pending', NULL, NULL, NULL, created_at, purpose FROM requests_df")
        con.unregister("requests_df")
        self._audit(con, "engine", "labels_requested", f"cycle:{cycle_id}",
                    {"count": len(frame), "purpose": purpose, "ids": frame["id"].astype(int).tolist()})


    def label_requests(self, status: str | None = None, cycle_id: int | None = None) -> pd.DataFrame:
        """The labeling queue (every request when status is None), best-scored first within a cycle."""
        clause, params = _where_equal(status=status, cycle_id=cycle_id)
        return self._read(f"SELECT * FROM label_requests {clause} ORDER BY cycle_id, score DESC, id", params)

    def label_request(self, request_id: int) -> dict | None:
        row = _first(self._read("SELECT * FROM label_requests WHERE id = ?", [int(request_id)]))
        if row:
            row["suggestions"] = json.loads(row["suggestions"] or "[]")
        return row

    def answer_label_request(self, request_id: int, label: str | None, by: str, skip: bool = False) -> dict:
        """A person's label for one requested text (or a skip), once; refused whole for an unknown request or
        label or a request already answered. Audited in the same transaction."""
        with self._tx() as con:
            row = con.execute("SELECT status, cycle_id, text, label, answered_by, purpose FROM label_requests "
                              "WHERE id = ?", [int(request_id)]).fetchone()
            if row is None:
                raise KeyError(f"no label request {request_id}")
            if row[0] != "pending":
                raise StoreConflict(f"label request {request_id} was already {row[0]}"
                                    + (f" ({row[3]})" if row[3] else "") + f" by {row[4]}")
            if skip:
                label = None
            elif not label or not con.execute("SELECT 1 FROM labels WHERE name = ?", [label]).fetchone():
                names = [r[0] for r in con.execute("SELECT name FROM labels ORDER BY idx").fetchall()]
                shown = ", ".join(names[:12]) + (f", ... ({len(names)} labels)" if len(names) > 12 else "")
                raise ValueError(f"unknown label '{label}'; one of: {shown}")
            status = "skipped" if skip else "answered"
            con.execute("UPDATE label_requests SET status = ?, label = ?, answered_by = ?, answered_at = ? "
                        "WHERE id = ?", [status, label, by, utcnow(), int(request_id)])
            self._audit(con, by, "label_skipped" if skip else "label_answered", f"label_request:{request_id}",
                        {"cycle": row[1], "label": label, "purpose": row[5], "text": row[2][:200]})
            return {"id": int(request_id), "status": status, "label": label, "cycle_id": row[1], "by": by,
                    "purpose": row[5]}

    def human_labels(self, before_cycle: int | None = None) -> pd.DataFrame:
        """People's answers (id = the pool example's id, text, label, answered_by), never a held-out text;
        with before_cycle, only those answered before that cycle began: an answer counts from the next cycle."""
        where, params = "", []
        if before_cycle is not None:
            where, params = ("AND r.answered_at < (SELECT created_at FROM cycles WHERE id = ?)", [before_cycle])
        # A probe row's label grades models (purpose `evaluate`): it never counts as seed.
        return self._read(
            "SELECT r.example_id AS id, r.text, r.label, r.answered_by FROM label_requests r "
            "WHERE r.status = 'answered' AND r.purpose = 'train' "
            "AND r.text NOT IN (SELECT text FROM examples WHERE split = 'heldout') "
            "AND r.text NOT IN (SELECT x.text FROM examples x JOIN traffic_probe p ON p.example_id = x.id) "
            f"{where} ORDER BY r.answered_at, r.id", params)

    def seed_examples(self, before_cycle: int | None = None) -> pd.DataFrame:
        """What counts as labeled seed (id, text, label, source): the seed split, then people's answers to label
        requests (source `human_label`; answered before cycle `before_cycle` began, when given). A text a
        person labeled appears once, with their label."""
        seed = self.examples("seed").assign(source="seed")
        human = self.human_labels(before_cycle)
        if human.empty:
            return seed
        human = human[["id", "text", "label"]].assign(source="human_label")
        return pd.concat([seed[~seed["text"].isin(human["text"])], human], ignore_index=True)
