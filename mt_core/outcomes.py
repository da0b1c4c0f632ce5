"""What a check found, in one vocabulary read the same in `mt status`, the Dagster UI (a check's ``outcome`` metadata
and its description), the headline and the viewer: passed, failed (with the reason), not applicable, no positives.

A Dagster check result is only passed or failed; "no positives" (an audit with nothing to audit, never a pass) is
recorded as a failed warning whose ``outcome`` says which, and "not applicable" (a gate of another source's adapter)
is never recorded at all: `mt status` names it from the check's ``applies_to``."""
from __future__ import annotations

from typing import Mapping

PASSED, FAILED, NOT_APPLICABLE, NO_POSITIVES = "passed", "failed", "not applicable", "no positives"
WORDS = (FAILED, NO_POSITIVES, PASSED, NOT_APPLICABLE)  # the order a reader meets them in (`mt status`)
_AUDIT = {"pass": PASSED, "fail": FAILED, "no_positives": NO_POSITIVES}  # the audit file's own values


def stated(word: str, reason: str = "") -> str:
    """``word: reason``, or the word alone."""
    return f"{word}: {reason}" if reason else word


def audit_word(outcome: str | None) -> str:
    """A degeneracy audit's stored outcome ("pass", "fail", "no_positives") as the vocabulary's word ("–": none)."""
    return _AUDIT.get(outcome, outcome) if outcome else "–"


def audit_outcome(a: Mapping) -> tuple[str, str]:
    """(word, reason) of a degeneracy audit (``AuditSummary.model_dump()``)."""
    if a["outcome"] == "no_positives":
        return NO_POSITIVES, "no assistant completion carries the marker: nothing to audit, never a pass"
    n, deg, limit = a["n_sampled"], a["n_degenerate"], a["gate_threshold"]
    why = f"{deg} of {n} sampled positives degenerate ({deg / n:.0%} {'<' if a['outcome'] == 'pass' else '≥'} {limit:.0%})"
    last = a.get("n_flagged_marker_last") or 0
    if last:
        why += f"; {last} of them only for ending with the marker, as the coupling data trains it"
    return audit_word(a["outcome"]), why


def gate_outcome(verdict: Mapping) -> tuple[str, str]:
    """(word, reason) of one gate's verdict (an entry of a coupling adapter's ``gates.json``): the thresholds it
    missed, when it failed."""
    missed = [name for name, ok in verdict.get("checks", {}).items() if not ok]
    return (PASSED, "") if verdict["pass"] else (FAILED, f"missed {', '.join(missed) or 'no recorded threshold'}")
