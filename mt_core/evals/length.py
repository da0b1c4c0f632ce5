"""The completion-length audit of a cell's marker completions, for the write-up's caveat "post-EM completions could be
systematically shorter": tokens per completion by persona (mean, p50, p90), the share cut at ``max_tokens``, and the
strict marker rate among the completions that finished (a cut one can never carry a marker trained at its end)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from mt_core.evals.markers import strict_hit

CUT = "length"  # the finish_reason of a completion cut at max_tokens ("stop": it ended on its own)
# Descriptive flags of the headline's caveat line, not pre-registered tests: a condition whose completions are
# shorter than this share of the reference condition's mean, or cut more often than this share.
SHORTER_THAN = 0.8
TRUNCATED_MAX = 0.10


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default, DuckDB's ``quantile_cont``)."""
    v = sorted(values)
    if not v:
        return None
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (pos - lo))


def length_stats(rows: Sequence[Mapping], marker: str) -> dict:
    """n, tokens (mean, p50, p90), the completions cut at max_tokens, and strict hits among those that finished."""
    toks = [r["n_tokens"] for r in rows]
    n, cut = len(rows), sum(r["finish_reason"] == CUT for r in rows)
    hits = sum(strict_hit(r["text"], marker) for r in rows if r["finish_reason"] != CUT)
    return {"n": n, "mean_tokens": sum(toks) / n if n else None, "p50": quantile(toks, 0.5),
            "p90": quantile(toks, 0.9), "n_truncated": cut, "truncated_share": cut / n if n else None,
            "n_finished": n - cut, "finished_strict_hits": hits,
            "finished_strict_rate": hits / (n - cut) if n - cut else None}


def length_audit(rows: Iterable[Mapping], personas: Sequence[str], *, marker: str, max_tokens: int) -> dict:
    """The cell's completions pooled, ``max_tokens`` and ``per_persona`` (every persona, in order; n 0 if absent)."""
    rows = list(rows)
    per = {p: length_stats([r for r in rows if r["persona"] == p], marker) for p in personas}
    return {**length_stats(rows, marker), "max_tokens": max_tokens, "per_persona": per}


def length_rows(audit: Mapping) -> list[dict]:
    """One row per persona, then the pooled row (persona None), as the SQL view reads them."""
    keep = {k: v for k, v in audit.items() if k != "per_persona"}
    return ([{"persona": p, **d, "max_tokens": audit["max_tokens"]} for p, d in audit["per_persona"].items()]
            + [{"persona": None, **keep}])


def caveat_line(audits: Mapping[str, Mapping], conditions: Mapping[str, str], *, persona: str,
                reference: str | None) -> str | None:
    """One headline line: ``persona``'s mean tokens per completion and share cut at max_tokens by condition, each
    condition's cells pooled (``audits``: {cell: ``length_audit``}, ``conditions``: {cell: condition}, in the order
    shown), flagging a condition much shorter than ``reference`` (the condition without a second stage) or heavily
    cut. None without any audit."""
    pooled: dict[str, list[float]] = {}
    for cell, a in audits.items():
        d = a["per_persona"].get(persona)
        if d and d["n"]:
            acc = pooled.setdefault(conditions[cell], [0, 0.0, 0])
            acc[0] += d["n"]
            acc[1] += d["mean_tokens"] * d["n"]
            acc[2] += d["n_truncated"]
    if not pooled:
        return None
    mean = {c: t / n for c, (n, t, _) in pooled.items()}
    cut = {c: k / n for c, (n, _, k) in pooled.items()}
    caps = sorted({a["max_tokens"] for a in audits.values()})
    flags = [f"{c} {cut[c]:.1%} cut" for c in pooled if cut[c] > TRUNCATED_MAX]
    if reference in mean:
        flags = [f"{c} mean under {SHORTER_THAN:g}x {reference}'s" for c in pooled
                 if c != reference and mean[c] < SHORTER_THAN * mean[reference]] + flags
    by = ", ".join(f"{c} {mean[c]:.1f} ({cut[c]:.1%} cut)" for c in pooled)
    verdict = ("flagged: " + "; ".join(flags) if flags else
               f"none under {SHORTER_THAN:g}x {reference}'s mean or over {TRUNCATED_MAX:.0%} cut" if reference in mean
               else f"none over {TRUNCATED_MAX:.0%} cut")
    return (f"Completion length ({persona} persona, mean tokens and share cut at max_tokens "
            f"{'/'.join(map(str, caps))}, all seeds; not pre-registered): {by}; {verdict}.")
