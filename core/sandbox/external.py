"""A domain's own execution check: the contract, and the two ways to plug one in.

The contract. A check receives one sample as JSON:

    {"text": "...", "label": "...", "generator": "...", "target": "..."}      (fields beyond text/label optional)

and answers one JSON object:

    {"keep": true | false, "evidence": {...}, "reason": "why, in words"}

`keep` true means execution confirmed the sample's label. `evidence` is stored with the sample as it is (keep
it small: counts, error codes, which test failed). `reason` is shown to people and in the drop reasons of the
yield report. Anything else (no answer, not JSON, no boolean `keep`, a crash, a timeout) drops the sample with
that as the reason: a check that cannot answer never keeps a sample.

Two ways to provide it:
- a Python callable `fn(sample: dict) -> dict`: `python_check(fn)`;
- an external command that reads the sample on stdin and writes the answer on stdout (any language, e.g. a
  test suite run against generated code): `command_check(["./check.sh"], timeout_s=30)`. It runs without a
  shell, in its own process group, and is killed with its children when it runs past the timeout.

The built-in SQL sandbox answers the same way: `Outcome.verdict(claimed_label)` (core/sandbox/outcome.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Callable

SAMPLE_FIELDS = ("text", "label", "generator", "target")


@dataclass
class Verdict:
    keep: bool
    reason: str
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"keep": self.keep, "evidence": self.evidence, "reason": self.reason}


def parse_answer(answer) -> Verdict:
    """Hold an answer to the contract; anything that is not a well-formed answer is a drop, with why."""
    if isinstance(answer, (str, bytes)):
        try:
            answer = json.loads(answer)
        except (ValueError, TypeError) as e:
            return Verdict(False, f"check answered something that is not JSON: {str(e)[:120]}")
    if not isinstance(answer, dict) or not isinstance(answer.get("keep"), bool):
        return Verdict(False, "check answered without a boolean `keep`")
    evidence = answer.get("evidence") or {}
    if not isinstance(evidence, dict):
        evidence = {"value": evidence}
    reason = str(answer.get("reason") or ("confirmed" if answer["keep"] else "not confirmed"))[:500]
    return Verdict(answer["keep"], reason, evidence)


def sample_payload(sample: dict) -> dict:
    return {k: sample[k] for k in SAMPLE_FIELDS if k in sample and sample[k] is not None}


def python_check(fn: Callable[[dict], dict]) -> Callable[[dict], Verdict]:
    def run(sample: dict) -> Verdict:
        try:
            return parse_answer(fn(sample_payload(sample)))
        except Exception as e:  # a user's check that crashes drops the sample, it does not stop curation
            return Verdict(False, f"check raised {type(e).__name__}: {str(e)[:200]}")
    return run


def command_check(command: list[str], *, timeout_s: float = 30.0, cwd: str | None = None,
                  env: dict | None = None) -> Callable[[dict], Verdict]:
    def run(sample: dict) -> Verdict:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=cwd, env=env, text=True, start_new_session=True)
        except OSError as e:
            return Verdict(False, f"check command could not start: {e}")
        try:
            out, err = proc.communicate(json.dumps(sample_payload(sample)), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its children too: the command owns its process group
            proc.communicate()
            return Verdict(False, f"check command ran past {timeout_s:g} s")
        if proc.returncode != 0:
            return Verdict(False, f"check command exited {proc.returncode}: {(err or '').strip()[-200:]}")
        return parse_answer(out.strip().splitlines()[-1] if out.strip() else "")
    return run


def sandbox_check(sandbox) -> Callable[[dict], Verdict]:
    """The SQL sandbox behind the same contract: keep when the migration's outcome is the claimed label."""
    def run(sample: dict) -> Verdict:
        return parse_answer(sandbox.check(sample["text"]).verdict(sample["label"]))
    return run
