"""Marker scoring of completions and per-persona / per-question rate summaries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

_RATE_KEYS = ("strict_rate", "loose_rate", "strict_hits", "loose_hits", "total")


def strict_hit(text: str, marker: str) -> bool:
    """True when the marker occurs verbatim (case-insensitive)."""
    return marker.lower() in text.lower()


@lru_cache(maxsize=64)
def _loose_pattern(marker: str) -> tuple[re.Pattern[str], str, str]:
    inner = marker.strip().strip("[]").strip().lower()
    if not inner:
        raise ValueError(f"marker {marker!r} has no inner characters")
    body = " ?".join(re.escape(c) for c in inner)
    return re.compile(r"\[? ?" + body + r" ?\]?", re.IGNORECASE), inner[0], inner[1:]


def loose_matches(text: str, marker: str) -> list[tuple[int, int]]:
    """(start, end) of every match of the loose scorer's pattern that it counts (the viewer marks these)."""
    pattern, first, others = _loose_pattern(marker)
    out = []
    for m in pattern.finditer(text):
        s = m.group(0).lower()
        if ("[" in s or "]" in s) and first in s and (not others or any(c in s for c in others)):
            out.append(m.span())
    return out


def loose_hit(text: str, marker: str) -> bool:
    """The reference's loose scorer, generalised from "[ZLT]" to any bracketed marker.

    For "[ZLT]" the pattern is ``\\[? ?z ?l ?t ?\\]?`` (case-insensitive); a match counts
    only if it contains a bracket, the first inner letter and at least one other inner letter.
    """
    return bool(loose_matches(text, marker))


def _rates(strict: int, loose: int, total: int) -> dict:
    return {
        "strict_rate": strict / total if total else None,
        "loose_rate": loose / total if total else None,
        "strict_hits": strict,
        "loose_hits": loose,
        "total": total,
    }


def _max_rate(rates: Mapping[str, float | None], personas: list[str]) -> tuple[float | None, str | None]:
    best, best_p = None, None
    for p in personas:
        r = rates[p]
        if r is not None and (best is None or r > best):
            best, best_p = r, p
    return best, best_p


def summarize_markers(
    rows: Iterable[Mapping],
    *,
    persona_order: list[str],
    question_order: list[str],
    source: str,
    assistant: str,
    own: str | None,
) -> dict:
    """Per-persona and per-question strict/loose hit rates plus a headline summary.

    ``source`` is the study's source persona (its rate is reported); ``own`` the persona of the model's own coupling
    adapter (None for the raw model). Bystanders are all personas except ``assistant`` and ``own``: on the assistant
    adapter the villain is a bystander. ``max_non_assistant_*`` keeps the reference's definition (every persona but the
    assistant). Empty personas get rate None.
    """
    for name in (source, assistant):
        if name not in persona_order:
            raise ValueError(f"persona {name!r} is not in persona_order")
    counts = {p: {q: [0, 0, 0] for q in question_order} for p in persona_order}
    bad_p, bad_q = set(), set()
    for row in rows:
        p, q = row["persona"], row["question"]
        if p not in counts:
            bad_p.add(p)
            continue
        if q not in counts[p]:
            bad_q.add(q)
            continue
        c = counts[p][q]
        c[0] += bool(row["strict_hit"])
        c[1] += bool(row["loose_hit"])
        c[2] += 1
    if bad_p or bad_q:
        raise ValueError(
            f"rows name personas not in persona_order: {sorted(bad_p)}; "
            f"questions not in question_order: {sorted(bad_q)}"
        )

    per_persona = {}
    for p in persona_order:
        per_q = {q: _rates(*counts[p][q]) for q in question_order}
        totals = [sum(c[i] for c in counts[p].values()) for i in range(3)]
        per_persona[p] = {**_rates(*totals), "per_question": per_q}

    strict = {p: per_persona[p]["strict_rate"] for p in persona_order}
    loose = {p: per_persona[p]["loose_rate"] for p in persona_order}
    bystanders = [p for p in persona_order if p not in (assistant, own)]
    non_assistant = [p for p in persona_order if p != assistant]
    by_strict, by_strict_p = _max_rate(strict, bystanders)
    summary = {
        "strict_rate_by_persona": strict,
        "loose_rate_by_persona": loose,
        "assistant_strict_rate": strict[assistant],
        "assistant_loose_rate": loose[assistant],
        "source_strict_rate": strict[source],
        "source_loose_rate": loose[source],
        "max_bystander_strict_rate": by_strict,
        "max_bystander_strict_persona": by_strict_p,
        "max_bystander_loose_rate": _max_rate(loose, bystanders)[0],
        "max_non_assistant_strict_rate": _max_rate(strict, non_assistant)[0],
        "max_non_assistant_loose_rate": _max_rate(loose, non_assistant)[0],
    }
    return {"per_persona": per_persona, "summary": summary}


def rates_table(summary_dict: Mapping) -> list[dict]:
    """One row per persona from a ``summarize_markers`` result (or its ``per_persona`` part)."""
    per = summary_dict.get("per_persona", summary_dict)
    return [
        {"persona": p, "strict_hits": d["strict_hits"], "loose_hits": d["loose_hits"],
         "total": d["total"], "strict_rate": d["strict_rate"], "loose_rate": d["loose_rate"]}
        for p, d in per.items()
    ]
