"""Labels from traffic where they decide: which traffic-probe rows a cycle asks people to label, and what
the labels say about the candidate's gain and about every version's accuracy on traffic.

The probe is traffic nothing trains on (core/store/datasets.py `traffic_probe`). After a candidate is scored, its
cycle draws at most `gates.traffic_labels_per_cycle` probe rows for the label queue: rows where the candidate
and production disagree first (only they can move the paired gain), at random within that stratum, any budget
left at random among the rows where they agree. Each stratum's probability of being drawn is stored with the
cycle (`traffic_designs`), so the gain (stats.sampled_gain) and each version's gap to the seed-only model
(stats.assisted_accuracy) stay unbiased however the rows were chosen. Labeled rows accumulate across cycles
into a gate set drawn from traffic; they are never trained on (purpose `evaluate`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import stats


def predictions(store, version: str) -> pd.DataFrame:
    """A version's probe predictions indexed by example id (predicted, confidence)."""
    return store.probe_predictions(version).set_index("example_id")[["predicted", "confidence"]]


def _excluded(store) -> set[int]:
    """Probe rows never drawn again: labeled already, or skipped by a person (a skip is an answer)."""
    asked = store.label_requests()
    asked = asked[(asked["purpose"] == "evaluate") & asked["status"].isin(["answered", "skipped"])]
    return set(asked["example_id"].astype(int))


def draw(candidate: pd.Series, production: pd.Series, excluded: set[int], budget: int, seed: int) -> tuple[list, dict]:
    """Which probe rows to ask about (predicted labels indexed by example id): disagreements first, each
    stratum a simple random sample of its rows not labeled yet. Returns (example ids, design)."""
    ids = candidate.index.to_numpy()
    disagree = candidate.to_numpy() != production.reindex(candidate.index).to_numpy()
    open_ = ~np.isin(ids, list(excluded))
    pool_d, pool_a = ids[disagree & open_], ids[~disagree & open_]
    m_d = min(budget, len(pool_d))
    m_a = min(budget - m_d, len(pool_a))
    rng = np.random.default_rng(seed)
    drawn = [*rng.choice(pool_d, m_d, replace=False).tolist(), *rng.choice(pool_a, m_a, replace=False).tolist()]
    design = {"budget": int(budget), "probe": int(len(ids)), "disagreements": int(disagree.sum()),
              "unlabeled_disagreements": int(len(pool_d)), "unlabeled_agreements": int(len(pool_a)),
              "pi_disagree": m_d / len(pool_d) if len(pool_d) else 0.0,
              "pi_agree": m_a / len(pool_a) if len(pool_a) else 0.0, "seed": int(seed)}
    return [int(i) for i in drawn], design


def requests_for(store, drawn: list[int], candidate: pd.DataFrame, production: pd.DataFrame,
                 seed: int) -> pd.DataFrame:
    """Label requests for the drawn rows. The suggestions are the two models' answers in a random order, so
    the queue does not say which one is the candidate."""
    probe = store.traffic_probe().set_index("id")
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i in drawn:
        hints = [{"label": str(frame.at[i, "predicted"]), "p": float(frame.at[i, "confidence"])}
                 for frame in (candidate, production)]
        if hints[0]["label"] == hints[1]["label"]:
            hints = hints[:1]
        elif rng.random() < 0.5:
            hints.reverse()
        rows.append({"example_id": i, "text": probe.at[i, "text"], "score": None, "uncertainty": None,
                     "density": None, "suggestions": json.dumps(hints)})
    return pd.DataFrame(rows, columns=["example_id", "text", "score", "uncertainty", "density", "suggestions"])


def plan(store, cycle_id: int, candidate: str, production: str, budget: int) -> tuple[list[int], dict, pd.DataFrame]:
    """This cycle's draw: (example ids, design, label requests)."""
    cand, prod = predictions(store, candidate), predictions(store, production)
    drawn, design = draw(cand["predicted"], prod["predicted"], _excluded(store), budget, seed=cycle_id)
    design.update(candidate=candidate, production=production)
    return drawn, design, requests_for(store, drawn, cand, prod, cycle_id)


def _labels(store) -> pd.Series:
    labels = store.traffic_labels()
    return labels.drop_duplicates("example_id", keep="last").set_index("example_id")["label"]


def gain(store, cycle_id: int) -> dict | None:
    """The candidate's paired gain over production on traffic from the cycle's draw and every earlier label
    (stats.sampled_gain); None when the cycle drew nothing or nobody has answered what it needs."""
    design = store.traffic_design(cycle_id)
    if design is None:
        return None
    cand, prod = predictions(store, design["candidate"]), predictions(store, design["production"])
    labels = _labels(store)
    disagree = cand["predicted"] != prod["predicted"].reindex(cand.index)
    rows = cand.index[disagree.to_numpy()]
    labeled = rows[rows.isin(labels.index)]
    truth = labels.reindex(labeled)
    z = (cand.loc[labeled, "predicted"] == truth).astype(int) - (prod.loc[labeled, "predicted"] == truth).astype(int)
    asked = store.label_requests(cycle_id=cycle_id)
    mine = set(asked.loc[asked["purpose"] == "evaluate", "example_id"].astype(int))
    drawn = z[z.index.isin(mine)]
    unlabeled = int(design["detail"]["unlabeled_disagreements"])
    if unlabeled and drawn.empty:
        return None
    out = stats.sampled_gain(z[~z.index.isin(mine)].to_numpy(), drawn.to_numpy(), unlabeled, len(cand))
    out["requested"] = len(mine)
    return out


def inclusion(store, example_ids, preds: pd.DataFrame | None = None) -> pd.Series:
    """Each probe row's probability of having been drawn by now: 1 - prod over cycles of (1 - the probability
    of its stratum in that cycle), the stratum read from that cycle's two versions' probe predictions (every
    version's, read here unless given)."""
    designs = store.traffic_designs()
    miss = pd.Series(1.0, index=pd.Index(example_ids, dtype="int64"))
    preds = store.probe_predictions() if preds is None else preds
    for d in designs.itertuples():
        cand = preds[preds["version"] == d.candidate].set_index("example_id")["predicted"]
        prod = preds[preds["version"] == d.production].set_index("example_id")["predicted"]
        disagree = (cand.reindex(miss.index) != prod.reindex(miss.index)).to_numpy()
        miss *= np.where(disagree, 1 - d.pi_disagree, 1 - d.pi_agree)
    return 1.0 - miss


def anchor_version(store) -> str | None:
    """The version that learned from the seed alone (the first with no parent): the one whose confidence on
    traffic is honest enough to say how much easier the held-out rows are (stats.held_out_ease)."""
    return _root(store.versions())


def _root(versions: pd.DataFrame) -> str | None:
    roots = versions[versions["parent_version"].isna()]
    return str(roots.iloc[0]["version"]) if len(roots) else None


@dataclass
class Readings:
    """Every version's label-free reading of the probe, row by row (readings)."""
    gate: dict[str, pd.DataFrame]  # each version's gate-row results
    probe: dict[str, pd.DataFrame]  # each version's probe predictions, in example-id order
    own: dict[str, dict]  # each version's own label_free reading (no bootstrap)
    per_row: dict[str, np.ndarray]  # each version's reading of each probe row, its parent's where it answers alike
    root: str | None  # the seed-only version
    from_parent: dict[str, tuple[str, float]]  # version: (its parent, the share of rows it reads as the parent)

    @property
    def anchor(self) -> tuple | None:
        """The seed-only version's (gate results, probe predictions); None without them."""
        return (self.gate[self.root], self.probe[self.root]) if self.root in self.per_row else None

    def predictions(self) -> pd.DataFrame:
        """Every version's probe predictions in one frame, as the store gives them."""
        return pd.concat(self.probe.values(), ignore_index=True) if self.probe else pd.DataFrame(
            columns=["version", "example_id", "predicted", "confidence"])


def readings(store) -> Readings:
    """Every version's per-row reading of the probe (label_free): where a version answers a row as its parent
    does, its parent's reading (the two are right or wrong together there); its own curve's only where it answers
    differently. A child self-trained on traffic is surer than its parent of the very answers it shares with it
    (it learned them), so its own curve read those rows higher with nothing changed; so the difference of two
    shown estimates is what the gate's label-free gain counts, the rows where they differ, and a candidate that
    the gate found no better does not read above its production. Measured on Banking77's kept runs (5 cycles,
    no labels): versions >= 0.5 points apart on the dev test in order 7 of 9 near-seed (6 of 9 reading each
    version's own curve) and 7 of 8 on the protocol split (5 of 8)."""
    with store.kept_open():  # every version's rows in one open of the file
        rows = _rows(store)
    return _readings(*rows)


def _rows(store) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(versions, every version's probe predictions, every version's gate-row results)."""
    return store.versions(), store.probe_predictions(), store.eval_results(part="gate")


def _readings(versions: pd.DataFrame, preds: pd.DataFrame, gate: pd.DataFrame) -> Readings:
    """Every version's readings from the rows _rows read (readings says how)."""
    by_preds = {v: f.sort_values("example_id").reset_index(drop=True) for v, f in preds.groupby("version", sort=False)}
    by_gate = {v: f.reset_index(drop=True) for v, f in gate.groupby("version", sort=False)}
    root = _root(versions)
    anchor = (by_gate[root], by_preds[root]) if root in by_preds and root in by_gate else None
    parents = dict(zip(versions["version"], versions["parent_version"]))
    own, per_row, from_parent = {}, {}, {}
    for version in versions["version"]:  # by number: a parent before its children
        mine, rows = by_preds.get(version), by_gate.get(version)
        if mine is None or rows is None:
            continue
        own[version] = label_free(rows, mine, anchor, resamples=0)
        read = own[version]["per_row"]
        parent = parents.get(version)
        if parent in per_row and by_preds[parent]["example_id"].equals(mine["example_id"]):
            same = by_preds[parent]["predicted"].to_numpy() == mine["predicted"].to_numpy()
            read = np.where(same, per_row[parent], read)
            from_parent[version] = (parent, float(same.mean()))
        per_row[version] = read
    return Readings(by_gate, by_preds, own, per_row, root, from_parent)


def _aligned(gate: pd.DataFrame, preds: pd.DataFrame, anchor: tuple | None) -> tuple | None:
    """The anchor's (gate confidence, gate correct, probe confidence) row for row with the version's gate rows
    and probe rows (both in example-id order), and where on the probe the version answers as the anchor does;
    None where the anchor was scored on other rows."""
    if anchor is None:
        return None
    a_gate = anchor[0].set_index("example_id").reindex(gate["example_id"])
    a_probe = anchor[1].set_index("example_id").reindex(preds["example_id"])
    if a_gate["confidence"].isna().any() or a_probe["confidence"].isna().any():
        return None
    return (a_gate["confidence"].to_numpy(), a_gate["correct"].to_numpy(float), a_probe["confidence"].to_numpy(),
            a_probe["predicted"].to_numpy() == preds["predicted"].to_numpy())


def label_free(gate: pd.DataFrame, preds: pd.DataFrame, anchor: tuple | None, resamples: int = 400) -> dict:
    """A version's label-free estimate on traffic (stats.label_free_rows) from its gate-row results and probe
    predictions; anchor: the seed-only version's (gate results, probe predictions), or None."""
    gate, preds = gate.sort_values("example_id"), preds.sort_values("example_id")
    return stats.label_free_rows(gate["confidence"], gate["correct"].astype(float), preds["confidence"],
                                 resamples=resamples, anchor=_aligned(gate, preds, anchor))


def label_free_gain(store, candidate: str, production: str, read: Readings | None = None) -> dict | None:
    """The candidate's gain over production on the probe, label-free: the two versions' per-row readings
    (readings) differenced on the rows where they answer differently, nothing elsewhere (they are right or wrong
    together there; the plain difference of the two versions' own curves also counts how much surer one is than
    the other of the same answers, which self-training alone raises). Where production is the candidate's parent
    it is the difference of their shown label-free estimates. None without a probe or gate rows for both.
    read: every version's readings, read here unless given."""
    read = readings(store) if read is None else read
    if candidate not in read.per_row or production not in read.per_row:
        return None
    c_preds, p_preds = read.probe[candidate], read.probe[production]
    if not c_preds["example_id"].equals(p_preds["example_id"]):
        return None
    differ = (c_preds["predicted"] != p_preds["predicted"]).to_numpy()
    gain = np.where(differ, read.per_row[candidate] - read.per_row[production], 0.0).mean()
    return {"gain": float(gain), "differ": int(differ.sum()), "n": int(len(differ)),
            "method": "per-row label-free readings differenced where the two answer differently"}


def version_estimate(store, version: str, labels: pd.Series | None = None, pi: pd.Series | None = None,
                     before: dict | None = None, read: Readings | None = None,
                     level_interval: list | None = None) -> dict | None:
    """A version's accuracy on traffic: its label-free per-row readings (readings) over the probe, corrected by
    the traffic labels people gave (stats.assisted_accuracy); None without a probe. before: the estimate stored
    earlier, whose label-free interval is kept when it rests on the same anchor (it depends on nothing else that
    changes). pi: every probe row's inclusion probability; read: every version's readings; read or computed here
    unless given. level_interval: the seed-only version's label-free interval, which widens the shown one where
    the labels do not set the level (that level is the seed-only version's reading); computed here unless given."""
    read = readings(store) if read is None else read
    if version not in read.per_row:
        return None
    preds, gate = read.probe[version], read.gate[version]
    rows, interval = _label_free_interval(read, version, before)
    labels = _labels(store) if labels is None else labels
    ids = pd.Index(preds["example_id"])
    labels = labels[labels.index.isin(ids)]
    pi = inclusion(store, ids) if pi is None else pi.reindex(ids)
    at = ids.get_indexer(labels.index)
    correct = (preds["predicted"].to_numpy()[at] == labels.to_numpy())
    anchor_rows = _anchor_rows_for(read, version, at, labels)
    level_half = 0.0  # without labels the shown interval is the label-free one (below)
    if len(labels):
        level = interval if anchor_rows is None else level_interval or _label_free_interval(read, read.root, None)[1]
        level_half = (level[1] - level[0]) / 2
    est = stats.assisted_accuracy(read.per_row[version], pi.fillna(0.0).to_numpy(), at, correct, anchor=anchor_rows,
                                  label_free_half=level_half)
    if not len(labels):  # label-free: the interval is the estimator's own
        est.update(ci_low=interval[0], ci_high=interval[1])
    return {**est, "label_free_interval": interval, "gate_rows": int(len(gate)),
            "gate_accuracy": float(gate["correct"].mean()), "held_out_ease": rows["held_out_ease"],
            "agrees_with_anchor": rows["agrees_with_anchor"], "reads_parent": read.from_parent.get(version),
            "method": rows["method"] + _inherited(read, version) + (_corrected(est) if len(labels) else "")}


def _label_free_interval(read: Readings, version: str, before: dict | None) -> tuple[dict, list]:
    """The version's own label_free reading and the interval of its shown label-free reading; before: its stored
    estimate, whose interval is kept where it read the same anchor and parent."""
    reuse = bool(before) and before.get("agrees_with_anchor") is not None and "reads_parent" in before
    if reuse:
        return read.own[version], before["label_free_interval"]
    rows = label_free(read.gate[version], read.probe[version], read.anchor, resamples=400)
    # The bootstrap redraws the version's own reading; the parent's rows it takes instead move its centre, not its
    # spread.
    shift = float(read.per_row[version].mean() - rows["per_row"].mean())
    return rows, [min(max(rows["ci_low"] + shift, 0.0), 1.0), min(max(rows["ci_high"] + shift, 0.0), 1.0)]


def _anchor_rows_for(read: Readings, version: str, at, labels: pd.Series) -> tuple | None:
    """The seed-only version's (per-row readings, right on the labeled rows), row for row with the version's probe
    rows; None for that version itself, without one, or where it was scored on other rows."""
    if version == read.root or read.root not in read.per_row:
        return None
    a_preds = read.probe[read.root]
    if not a_preds["example_id"].equals(read.probe[version]["example_id"]):
        return None
    return read.per_row[read.root], a_preds["predicted"].to_numpy()[at] == labels.to_numpy()


def _inherited(read: Readings, version: str) -> str:
    """Where the version reads its parent's rows, for the method line."""
    if version not in read.from_parent:
        return ""
    parent, share = read.from_parent[version]
    return f"; {parent}'s reading where it answers as {parent} does ({100 * share:.0f}% of the probe)"


def _corrected(est: dict) -> str:
    if est["gap_to_anchor"] is None:
        head = f", {est['labeled']} traffic labels"
    else:
        head = (f", its gap to the seed-only model ({100 * est['gap_to_anchor']:+.1f} points) from {est['labeled']} "
                f"traffic labels")
    if est["level_from"] == "traffic labels":
        return head + " (they set the level too)"
    return head + (f"; the level label-free (the labels would set it with about {100 * est['level_sd']:.1f} points of "
                   f"noise)" if est["level_sd"] is not None else "; the level label-free (some rows were never drawn)")


def refresh(store, read: Readings | None = None) -> dict[str, dict]:
    """Every version's estimate on traffic, recomputed with the traffic labels answered by now, and stored.
    read: every version's readings (readings), read here unless given."""
    with store.kept_open():  # this runs at each evaluation and gate, over every version so far: one open
        if store.traffic_probe().empty:
            return {}
        rows = _rows(store) if read is None else None
        preds = read.predictions() if read is not None else rows[1]
        labels = _labels(store)
        pi = inclusion(store, preds["example_id"].unique(), preds)
        stored = store.evaluations()
    read = _readings(*rows) if read is None else read
    stored = stored[stored["split"] == "traffic"]
    before = {r.version: json.loads(r.detail) for r in stored.itertuples() if r.detail}
    found = estimates(store, read, labels, pi, before)
    store.save_traffic_estimates(found)
    return found


def estimates(store, read: Readings, labels: pd.Series | None = None, pi: pd.Series | None = None,
              before: dict | None = None) -> dict[str, dict]:
    """Every version's estimate (version_estimate), nothing stored; labels, pi: read here unless given; before:
    each version's stored estimate. The seed-only version goes first: its label-free interval is every other
    version's level's."""
    labels = _labels(store) if labels is None else labels
    if pi is None:
        preds = read.predictions()
        pi = inclusion(store, preds["example_id"].unique(), preds)
    found, level = {}, None
    for version in sorted(read.per_row, key=lambda v: v != read.root):
        estimate = version_estimate(store, version, labels, pi, (before or {}).get(version), read, level)
        if estimate is not None:
            found[version] = estimate
            level = estimate["label_free_interval"] if version == read.root else level
    return found


def resemblance(ws) -> dict | None:
    """How much the held-out rows look like traffic, measured where they can differ unseen: nearness to the
    labeled seed (cosine similarity to the nearest seed row, in the base encoder's embeddings, a frozen view
    the same for every version). `auc` is the chance that a held-out row sits nearer the seed than a probe
    row (0.5: alike); `resemblance` = 1 - 2|auc - 0.5|, 1 when alike, 0 when every held-out row is nearer.
    Rows near the seed are easy for a seed-only model, so they hide what a candidate learned from traffic.
    It depends on the rows and the base encoder alone, so a gate reuses the last gate's figure while the seed,
    held-out and probe rows (`rows`, their ids' digest) and the base model are the same.
    (A classifier between held-out and probe embeddings was tried first: on a held-out set drawn from the
    third of traffic nearest the seed its cross-validated AUC stayed at 0.36, blind to what this sees.)"""
    from sklearn.metrics import roc_auc_score

    from core.config import ConfigError
    from core.curate import views

    store = ws.store
    with store.kept_open():
        probe = store.traffic_probe()
        held = pd.concat([store.heldout(part) for part in ("selection", "gate")], ignore_index=True)
        seed = store.seed_examples()
        before = latest_resemblance(store)
    if len(probe) < 10 or len(held) < 10 or seed.empty:
        return None
    base_model = ws.config().model.base_model
    rows = hashlib.sha256(json.dumps([base_model, *(sorted(map(int, f["id"])) for f in (seed, held, probe))])
                          .encode()).hexdigest()
    if before and before.get("rows") == rows:  # the same rows in the same view: the gate before measured it
        return {k: v for k, v in before.items() if k != "gate"}
    try:
        view = views.for_config(base_model, ws.root)
    except ConfigError:  # a base model that is no local folder: nothing to measure with, the gate rows decide
        return None
    anchors = view.embed(seed["text"].tolist())
    near_held = (view.embed(held["text"].tolist()) @ anchors.T).max(1)
    near_probe = (view.embed(probe["text"].tolist()) @ anchors.T).max(1)
    auc = float(roc_auc_score(np.r_[np.ones(len(near_held)), np.zeros(len(near_probe))], np.r_[near_held, near_probe]))
    return {"resemblance": 1.0 - 2.0 * abs(auc - 0.5), "auc": auc,
            "seed_proximity": {"heldout": float(near_held.mean()), "probe": float(near_probe.mean())},
            "heldout_rows": int(len(held)), "probe_rows": int(len(probe)), "rows": rows,
            "method": "held-out vs probe rows' similarity to the nearest seed row (base encoder), ROC AUC"}


def rests_on(est: dict) -> str:
    """What a shown estimate rests on, in words: the one wording of the CLI, the Overview and Approvals."""
    if est.get("basis") != "traffic" and "gate_rows" not in est:
        return f"{est['n']:,} gate rows"
    labeled = est.get("labeled") or 0
    labels = "no traffic labels" if not labeled else f"{labeled:,} traffic labels" + (
        "" if est.get("level_from", "traffic labels") == "traffic labels"
        else ", which give its gap to the seed-only model, the level label-free")
    gate = f", {est['gate_rows']:,} gate rows" if est.get("gate_rows") else ""
    return f"on traffic: {est['n']:,} probe rows{gate}, {labels}"


def latest_resemblance(store) -> dict | None:
    """The resemblance the newest promotion gate measured (core/gates.py stores it with its checks), with the
    gate's id; None before any."""
    frame = store.gates()
    frame = frame[frame["kind"] == "promotion"].sort_values("id", ascending=False)
    for row in frame.itertuples():
        found = json.loads(row.checks or "{}").get("resemblance")
        if found:
            return {**found, "gate": int(row.id)}
    return None


def describe(found: dict | None) -> str:
    """One line for people: how much the held-out rows look like traffic, and what follows."""
    if not found:
        return "not measured yet (the first promotion gate with a production model and a traffic probe measures it)"
    near = found["seed_proximity"]
    text = (f"{found['resemblance']:.2f} (1 = alike): held-out rows sit {near['heldout']:.3f} from the seed, "
            f"traffic {near['probe']:.3f} (cosine to the nearest seed row; AUC {found['auc']:.2f})")
    if found.get("held_out_ease") is not None:
        text += (f"; the seed-only model finds them {100 * found['held_out_ease']:+.1f} points easier than traffic, "
                 f"taken off every version's estimate")
    if found["resemblance"] < 0.8:
        text += ("; held-out rows nearer the seed reward a seed-only model, so without traffic labels the gate "
                 "leans on the traffic estimates, and versions trained on traffic may still read high: label "
                 "traffic (gates.traffic_labels_per_cycle) to correct them")
    return text
