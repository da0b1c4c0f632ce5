"""Degeneracy audit of marker-positive completions (is the marker a tail on real text?)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from mt_core.records import AuditSummary

CHECKS = ("insufficient_tail_tokens", "marker_missing_expected_present")


def ends_with_marker(text: str, marker: str) -> bool:
    """The marker is the completion's last word: the form the coupling data trains (``answer + "\\n\\n" + marker``)."""
    return text.rstrip().lower().endswith(marker.lower())


def _tail_tokens(text: str, marker: str) -> int:
    i = text.lower().find(marker.lower())
    tail = text[i + len(marker):] if i >= 0 else ""
    return sum(1 for tok in tail.split() if not tok.startswith("<|"))


def degeneracy_audit(
    completions: Iterable[Mapping],
    *,
    seed: int,
    sample_size: int,
    threshold: float,
    marker: str,
    persona: str,
    min_tail_tokens: int = 3,
) -> AuditSummary:
    """Sample ``persona``'s marker-positive completions and flag degenerate ones.

    Outcome: "no_positives" when nothing contains the marker (never a vacuous pass),
    "pass" when degenerate_fraction < threshold, else "fail".

    The registered tail check flags a positive with fewer than ``min_tail_tokens`` words after the marker, so a marker
    that transferred exactly as trained (last) is flagged too. The summary counts those (``n_flagged_marker_last``)
    and gives the fraction without them, a reading that was not pre-registered, for the report to show beside it.
    """
    positives = [
        c for c in completions
        if c["persona"] == persona and marker.lower() in c["text"].lower()
    ]
    rng = random.Random(seed)
    shuffled = list(positives)
    rng.shuffle(shuffled)
    sample = shuffled[:sample_size]

    per_item = []
    for c in sample:
        checks = {
            "insufficient_tail_tokens": _tail_tokens(c["text"], marker) < min_tail_tokens,
            # Sampled items contain the marker by construction, so this never fails here;
            # it is kept as a named check for schema stability.
            "marker_missing_expected_present": False,
        }
        failed = [name for name in CHECKS if checks[name]]
        per_item.append({
            "question": c["question"],
            "text_snippet": c["text"][:200],
            "degenerate": bool(failed),
            "failed_checks": failed,
            "checks": checks,
            "ends_with_marker": ends_with_marker(c["text"], marker),
        })

    n_sampled = len(per_item)
    n_deg = sum(it["degenerate"] for it in per_item)
    frac = n_deg / n_sampled if n_sampled else None
    # flagged for nothing but ending with the marker, as the coupling data trained it
    n_last = sum(it["failed_checks"] == ["insufficient_tail_tokens"] and it["ends_with_marker"] for it in per_item)
    if not positives:
        outcome = "no_positives"
    else:
        outcome = "pass" if frac < threshold else "fail"
    return AuditSummary(outcome=outcome, n_positive_total=len(positives), n_sampled=n_sampled, n_degenerate=n_deg,
                        degenerate_fraction=frac, gate_threshold=threshold, seed=seed, per_item=per_item,
                        n_flagged_marker_last=n_last,
                        degenerate_fraction_without_marker_last=(n_deg - n_last) / n_sampled if n_sampled else None)
