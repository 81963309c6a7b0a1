"""What a rejection teaches: the reasons gates rejected earlier candidates of the same production model
become findings of the next diagnosis, each with a remedy that curation and training carry out.

A lesson shapes the next candidate's training, and the gate rows will grade that candidate, so a lesson is
not read off them where it can be helped: when the promotion gate finds a class forgotten, which classes were
forgotten is asked again of the selection rows, and only those are taught. Each finding's `evidence` says
what it rests on; the drift lesson rests on the gate rows and says so.

| rejected for | remedy |
|---|---|
| a forgotten class X (its selection rows flipped to Y) | hold back pseudo-labels and feedback for X and Y unless every verifier is sure; replay X's seed more |
| a failed guardrail (expected E, got G) | the same for E and G |
| drift (flip rate, KL, calibration) | keep half as many curated samples per class |
| label noise in the kept set | every verifier's bar raised |
| one class flooding the kept set | hold back that class's pseudo-labels |
| one generator flooding it | that generator sits the next cycle out |
| a person, with a comment | the comment, shown first; nothing automatic |
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from core import gates
from core.gates import TRAFFIC_LABELERS

KIND = "gate_rejection"
SEED_REPLAY = 3  # how many times a forgotten class's seed rows are replayed
CAP_FACTOR = 0.5


@dataclass
class Remedy:
    hold_back: set[str] = field(default_factory=set)  # labels whose unverified rows wait
    upweight: set[str] = field(default_factory=set)  # labels whose seed is replayed SEED_REPLAY times
    cap_factor: float = 1.0  # multiplies curate.max_per_class
    strict: bool = False  # every label gets the held-back bars
    skip_generators: set[str] = field(default_factory=set)


def _finding(cycle_id: int, gate: str, subject: str, reason: str, remedy: dict, action: str, severity: float,
             evidence: dict) -> dict:
    return {"kind": KIND, "subject": subject, "severity": float(severity),
            "key": f"{KIND}:{gate}:{subject}",
            "detail": {"cycle": cycle_id, "gate": gate, "reason": reason, "remedy": remedy, "evidence": evidence},
            "action": action}


def _held(labels: list[str]) -> str:
    return ", ".join(f"'{x}'" for x in labels)


def forgotten_on_selection(cycle_id: int, checks: dict, selection: pd.DataFrame | None) -> list[dict]:
    """The promotion gate found a class forgotten: the forgetting test under the gate's own settings, run again
    on the selection rows (both versions' results, paired), names the classes to teach, with those rows as the
    evidence. A class the gate rows alone show forgotten is not taught."""
    test = checks["forgetting"]
    found = gates.forgotten(selection, test["alpha"], test["max_recall_drop"]) \
        if selection is not None and len(selection) else {"flagged": [], "closest": []}
    out = []
    for row in found["flagged"]:
        labels = [row["label"], *row["flipped_to"]]
        mine = selection[selection["label_cand"] == row["label"]]
        broken = mine[mine["correct_prod"].astype(bool) & ~mine["correct_cand"].astype(bool)]
        out.append(_finding(cycle_id, "promotion", row["label"], f"forgot '{row['label']}' "
                            f"({row['broken']} of {row['production_right']} selection rows broken)",
                            {"hold_back": labels, "upweight": [row["label"]]},
                            f"hold back pseudo-labels and feedback for {_held(labels)} unless every verifier "
                            f"is sure; replay the seed of '{row['label']}' x{SEED_REPLAY}", row["broken"],
                            {"from": "selection rows", "example_ids": sorted(int(i) for i in broken["example_id"]),
                             "p_adjusted": row["p_adjusted"]}))
    if not out:
        closest = found["closest"][0] if found["closest"] else None
        out.append(_finding(cycle_id, "promotion", "forgetting", "the gate rows showed a class forgotten; the "
                            "selection rows show none" + (f" (closest: '{closest['label']}', adjusted p="
                                                          f"{closest['p_adjusted']:.3f})" if closest else ""),
                            {}, "nothing held back: only the selection rows may shape the next candidate", 1,
                            {"from": "selection rows", "example_ids": []}))
    return out


def from_rejection(cycle_id: int, gate: dict, drift_report: dict | None,
                   selection: pd.DataFrame | None = None) -> list[dict]:
    """Findings for one rejected gate (its row with parsed checks) of cycle `cycle_id`. selection: for a
    promotion gate, both versions' results on the selection rows (gates.paired_results)."""
    kind, checks = gate["kind"], gate["checks"] or {}
    out: list[dict] = []
    if kind == "promotion":
        if (checks.get("forgetting") or {}).get("flagged"):
            out += forgotten_on_selection(cycle_id, checks, selection)
    elif kind == "drift_review" and drift_report:
        guard = drift_report.get("guardrails") or {}
        failing: dict[str, set[str]] = {}
        for f in guard.get("failures", []):
            failing.setdefault(f["expected"], set()).add(f["candidate"])
        drop = (guard.get("pass_rate_production") or 0) - (guard.get("pass_rate_candidate") or 0)
        if failing and drop > 0:
            for expected, got in sorted(failing.items()):
                labels = [expected, *sorted(got)]
                out.append(_finding(cycle_id, kind, expected, f"guardrail probes of '{expected}' went to "
                                    f"{_held(sorted(got))}", {"hold_back": labels, "upweight": [expected]},
                                    f"hold back pseudo-labels and feedback for {_held(labels)} unless every "
                                    f"verifier is sure; replay the seed of '{expected}' x{SEED_REPLAY}",
                                    len(guard.get("failures", [])), {"from": "guardrail probes"}))
        other = [r for r in drift_report.get("reasons", []) if "guardrail" not in r]
        if other:
            # The drift report measures on the gate rows (and traffic): this lesson, a smaller cap for every class,
            # is shaped by rows that grade the next candidate, which its evidence records.
            out.append(_finding(cycle_id, kind, "behaviour drift", "; ".join(other), {"cap_factor": CAP_FACTOR},
                                f"keep at most {CAP_FACTOR:.0%} of curate.max_per_class curated samples per class",
                                len(other), {"from": "gate rows"}))
    elif kind == "data_review":
        if (checks.get("label_noise") or 0) > checks.get("max_label_noise", 1):
            out.append(_finding(cycle_id, kind, "label noise", checks["reasons"][0], {"strict": True},
                                "raise every verifier's bar for every class", 1, {"from": "kept samples"}))
        if (checks.get("class_shift") or 0) > checks.get("max_class_shift", 1):
            labels = list(checks.get("most_overrepresented", {}))
            out.append(_finding(cycle_id, kind, "class mix", f"class mix shift {checks['class_shift']:.2f}",
                                {"hold_back": labels}, f"hold back pseudo-labels for {_held(labels)} unless "
                                                       "every verifier is sure", 1, {"from": "kept samples"}))
        for name, share in (checks.get("generator_shares") or {}).items():
            if share > checks.get("max_generator_share", 1) and name not in TRAFFIC_LABELERS:
                out.append(_finding(cycle_id, kind, f"generator {name}", f"'{name}' wrote {share:.0%} of the kept set",
                                    {"skip_generators": [name]}, f"leave generator '{name}' out of the next cycle", 1,
                                    {"from": "kept samples"}))
    if not out and not gate.get("automatic"):
        who = gate.get("decided_by") or "a person"
        out.append(_finding(cycle_id, kind, f"{kind} rejected by {who}", gate.get("comment") or "no comment", {},
                            f"read {who}'s comment: {gate.get('comment') or '-'}", 1, {"from": "a person's comment"}))
    return out


def remedy(findings: pd.DataFrame) -> Remedy:
    """The remedies of a diagnosis' rejection findings, merged."""
    out = Remedy()
    for kind, detail in zip(findings.get("kind", []), findings.get("detail", [])):
        if kind != KIND:
            continue
        r = (json.loads(detail) if isinstance(detail, str) else detail).get("remedy", {})
        out.hold_back.update(r.get("hold_back", []))
        out.upweight.update(r.get("upweight", []))
        out.skip_generators.update(r.get("skip_generators", []))
        out.strict = out.strict or bool(r.get("strict"))
        out.cap_factor = min(out.cap_factor, float(r.get("cap_factor", 1.0)))
    return out
