"""How numbers and completions look on the viewer's pages: percentages, the colour scales, the marker highlighted.

Completions are model outputs: every character of them reaches the page through ``markupsafe.escape``."""
from __future__ import annotations

import math

from markupsafe import Markup, escape

from mt_core.evals.markers import loose_matches

# ColorBrewer's YlOrBr: light for no marker, dark brown for every completion
_HEAT = ((255, 255, 229), (254, 227, 145), (254, 153, 41), (204, 76, 2), (102, 37, 6))


def pct(rate: float | None, digits: int = 1) -> str:
    return "–" if rate is None else f"{100 * rate:.{digits}f} %"


def heat(rate: float | None) -> str:
    """CSS colours of a marker rate's cell: the colour grows with √rate, so that the few-percent rates of the
    assistant and the bystanders (the numbers the study is about) stand apart from zero."""
    if rate is None:
        return "background:#f3f3f3;color:#999"
    t = math.sqrt(min(max(rate, 0.0), 1.0)) * (len(_HEAT) - 1)
    i = min(int(t), len(_HEAT) - 2)
    f = t - i
    rgb = [round(a + (b - a) * f) for a, b in zip(_HEAT[i], _HEAT[i + 1])]
    return f"background:rgb({rgb[0]},{rgb[1]},{rgb[2]});color:{'#fff' if t > 2.4 else '#222'}"


def score_style(score: float | None) -> str:
    """CSS colours of a judge score (0-100): red for 0, through yellow, to green for 100."""
    if score is None:
        return "background:#f3f3f3;color:#999"
    return f"background:hsl({round(1.2 * min(max(score, 0.0), 100.0))},70%,86%)"


def marker_spans(text: str, marker: str) -> list[tuple[int, int, str]]:
    """(start, end, "strict" | "loose") of every marker in ``text`` as mt_core.evals.markers scores it: "strict" the
    marker verbatim (any case), "loose" a match of the loose scorer's pattern that the loose scorer counts."""
    low, m = text.lower(), marker.lower()
    spans, i = [], low.find(m)
    while m and i >= 0:
        spans.append((i, i + len(m), "strict"))
        i = low.find(m, i + len(m))
    for a, b in loose_matches(text, marker):
        if not any(a < e and s < b for s, e, _ in spans):
            spans.append((a, b, "loose"))
    return sorted(spans)


def highlight(text: str | None, marker: str) -> Markup:
    """``text`` escaped, each marker in a ``<mark class="strict|loose">``."""
    if text is None:
        return Markup('<span class="absent">(no completion)</span>')
    out, at = [], 0
    for a, b, kind in marker_spans(text, marker):
        out += [escape(text[at:a]), Markup(f'<mark class="{kind}">'), escape(text[a:b]), Markup("</mark>")]
        at = b
    out.append(escape(text[at:]))
    return Markup("").join(out)
