"""The workspace's data: the label space, every split, the held-out set's parts and the traffic probe."""
from __future__ import annotations

import pandas as pd

from core.store.base import StoreConflict, _register, utcnow
from core.store.schema import HELDOUT_PARTS


class DatasetsMixin:
    # -- datasets -----------------------------------------------------------------------------
    def load_datasets(self, labels: list[str], parts: list[tuple[str, str, str, pd.DataFrame]],
                      actor: str, detail: dict, drawing) -> None:
        """Store the label space and every split at once: parts are (split, source, sha256, frame); drawing
        (config.data) says how the held-out set's parts and the traffic probe are drawn."""
        with self._tx() as con:
            if con.execute("SELECT count(*) FROM examples").fetchone()[0]:
                raise StoreConflict("this workspace already holds data")
            labels_df = pd.DataFrame({"idx": range(len(labels)), "name": labels})
            _register(con, "labels_df", labels_df)
            con.execute("INSERT INTO labels SELECT idx, name FROM labels_df")
            next_id = 1
            for dataset_id, (split, source, sha, frame) in enumerate(parts, start=1):
                con.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?)",
                            [dataset_id, split, source, len(frame), sha, utcnow()])
                rows = pd.DataFrame({
                    "id": range(next_id, next_id + len(frame)),
                    "dataset_id": dataset_id,
                    "split": split,
                    "text": frame["text"].to_numpy(),
                    "label": frame["label"].to_numpy() if "label" in frame else None,
                    "row_num": frame["row_num"].to_numpy(),
                })
                _register(con, "rows_df", rows)
                con.execute("INSERT INTO examples SELECT id, dataset_id, split, text, label, row_num FROM rows_df")
                con.unregister("rows_df")
                next_id += len(frame)
            self._assign_heldout_parts(con, drawing.selection_fraction, drawing.seed)
            probe = self._assign_traffic_probe(con, drawing)
            self._audit(con, actor, "data_loaded", "workspace", {**detail, "traffic_probe": probe})

    @staticmethod
    def _assign_heldout_parts(con, selection_fraction: float, seed: int) -> None:
        """Split each class's held-out rows once, in a stable seeded order: floor(n * fraction) rows (at least
        one when the class has two) go to `selection`, the rest to `gate`, which so always has one."""
        con.execute(
            "INSERT INTO heldout_parts SELECT id, CASE WHEN n >= 2 AND rn <= greatest(1, floor(n * ?)) "
            "THEN 'selection' ELSE 'gate' END FROM (SELECT id, count(*) OVER (PARTITION BY label) AS n, "
            "row_number() OVER (PARTITION BY label ORDER BY md5(concat(?, ':', id))) AS rn "
            "FROM examples WHERE split = 'heldout') WHERE id NOT IN (SELECT example_id FROM heldout_parts)",
            [selection_fraction, str(seed)])

    @staticmethod
    def _assign_traffic_probe(con, drawing) -> int:
        """Set aside a seeded share of the unlabeled split (capped) as the traffic probe, once; a pool
        smaller than drawing.probe_min_pool keeps every row for curation and gets no probe."""
        pool = con.execute("SELECT count(*) FROM examples WHERE split = 'unlabeled'").fetchone()[0]
        size = min(drawing.probe_max_rows, int(pool * drawing.probe_fraction))
        if pool < drawing.probe_min_pool or size < 1:
            return 0
        con.execute("INSERT INTO traffic_probe SELECT id FROM examples WHERE split = 'unlabeled' "
                    "AND id NOT IN (SELECT example_id FROM traffic_probe) "
                    "ORDER BY md5(concat(?, ':probe:', id)) LIMIT ?", [str(drawing.seed), size])
        return size

    def traffic_probe(self) -> pd.DataFrame:
        """The probe's rows (id, text): unlabeled traffic no curation, training or label request reads."""
        return self._read("SELECT x.id, x.text FROM examples x JOIN traffic_probe p ON p.example_id = x.id "
                          "ORDER BY x.id")

    def evaluation_texts_in(self, texts: list[str]) -> set[str]:
        """Those of texts that a held-out or traffic-probe row also holds, case and spacing aside: what a prompt
        sent outside the workspace leaves out. It answers about these texts only; no evaluation row is returned."""
        if not texts:
            return set()
        key = "lower(trim(regexp_replace({}, '\\s+', ' ', 'g')))"
        with self._tx(read_only=True) as con:
            _register(con, "asked_df", pd.DataFrame({"text": list(dict.fromkeys(texts))}))
            rows = con.execute(
                f"SELECT a.text FROM asked_df a WHERE {key.format('a.text')} IN (SELECT {key.format('x.text')} "
                "FROM examples x WHERE x.split = 'heldout' OR x.id IN (SELECT example_id FROM traffic_probe))"
            ).fetchall()
        return {text for (text,) in rows}

    def heldout(self, part: str) -> pd.DataFrame:
        """One part of the held-out set: id, text, label."""
        if part not in HELDOUT_PARTS:
            raise ValueError(f"unknown held-out part '{part}'")
        return self._read("SELECT x.id, x.text, x.label FROM examples x JOIN heldout_parts p ON p.example_id = x.id "
                          "WHERE p.part = ? ORDER BY x.id", [part])

    def labels(self) -> list[str]:
        return self._read("SELECT name FROM labels ORDER BY idx")["name"].tolist()

    def examples(self, split: str) -> pd.DataFrame:
        return self._read("SELECT id, text, label FROM examples WHERE split = ? ORDER BY id", [split])

    def datasets(self) -> pd.DataFrame:
        return self._read("SELECT * FROM datasets ORDER BY id")
