"""The study report: one self-contained HTML file (``report.html`` of ``study_summary``) a researcher can attach to a
write-up, and the phrasing of rates and gates that it and the Dagster UI's metadata share.

Pure: dicts in, a string out, through the Jinja2 template ``templates/study_report.html`` (package data). Nothing
outside the file is referenced (the figure is embedded, the CSS inline), every input string is HTML-escaped, and the
same inputs give the same bytes (no clock, no paths, no run ids: a study resumed after a crash has other run ids and
the same artefacts, md5 for md5).
"""
from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from html import escape
from statistics import fmean

import jinja2
from markupsafe import Markup

from mt_core.report.stats import WELCH_RULE, decided_by, marker_last_note, wilson


def pct(x: float | None) -> str:
    """A rate as a reader compares it: ``61.6 %``."""
    return "–" if x is None else f"{100 * x:.1f} %"


def ci(hits: int | None, n: int | None) -> str:
    """The 95 % interval of hits/n (``stats.wilson``) as every view writes it: ``52.4–70.1 %``."""
    if not n:
        return "–"
    lo, hi = wilson(hits, n)
    return f"{100 * lo:.1f}–{pct(hi)}"


def rate(hits: int, n: int) -> str:
    """A pooled rate with its counts and its 95 % interval: ``61.6 % (69/112; 95 % CI 52.4–70.1 %)``."""
    if not n:
        return f"– ({hits}/{n})"
    return f"{pct(hits / n)} ({hits}/{n}; 95 % CI {ci(hits, n)})"


# the rate each gate threshold bounds: ``<what>_<max|min|range>`` -> the verdict's key for <what>
_GATE_RATES = {"assistant": "assistant_strict_rate", "source": "source_strict_rate",
               "max_bystander": "max_bystander_strict_rate"}


def gate_criteria(verdict: Mapping) -> list[dict]:
    """Each threshold of one gate's verdict (an entry of the coupling adapter's ``gates.json``) beside the rate it
    bounds: {criterion, measured, threshold, result}, as text."""
    out = []
    for name, bound in verdict.get("thresholds", {}).items():
        what, _, kind = name.rpartition("_")
        measured = verdict.get(_GATE_RATES.get(what, ""))
        if kind == "max":
            limit = f"≤ {100 * bound:g} %"
        elif kind == "min":
            limit = f"≥ {100 * bound:g} %"
        elif kind == "range":
            limit = f"{100 * bound[0]:g} – {100 * bound[1]:g} %"
        else:
            limit = str(bound)
        ok = verdict.get("checks", {}).get(name)
        out.append({"criterion": name, "measured": f"{what.replace('_', ' ')} {pct(measured)}" if what else "–",
                    "threshold": limit, "result": "–" if ok is None else "pass" if ok else "FAIL"})
    return out


def _table(head: Sequence[str], rows: Sequence[Sequence], classes: Sequence[str] = ()) -> dict:
    """A table for the template: its header and, per row, (value, css class) pairs (a missing class is none)."""
    cls = list(classes) + [""] * (len(head) - len(classes))
    return {"head": head, "rows": [list(zip(r, cls)) for r in rows]}


def _md_table(md: str) -> tuple[list[str], list[list[str]], list[str]]:
    """The header, rows and footnotes (the other lines) of a Markdown table (the headline's, ``stats.markdown_table``:
    the report shows the very numbers and words of ``headline.md``)."""
    lines = [ln.strip().strip("|").split("|") for ln in md.strip().splitlines() if ln.startswith("|")]
    head, *rows = [[c.strip() for c in ln] for ln in lines]
    return head, rows[1:], [ln for ln in md.strip().splitlines() if ln.strip() and not ln.startswith("|")]


def _inline(text: str) -> Markup:
    """Escaped text with the notes' Markdown `code` spans kept."""
    return Markup(re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text)))


def _outcome(o: str) -> str:
    return {"pass": "pass", "fail": "FAIL"}.get(o, o)


def _criterion_row(name: str, c: Mapping) -> list:
    if "mean_diff" in c:  # treated arm vs a control, on the assistant's rate
        w, e = c["welch"], c["exact"]
        measured = (f"{100 * c['mean_diff']:+.1f} pts ({pct(fmean(c['a_rates']))} vs {pct(fmean(c['b_rates']))}, "
                    f"mean of seeds); {decided_by(w)}; Fisher exact p {e['p']:.3g} "
                    f"({rate(e['a_hits'], e['a_n'])} vs {rate(e['b_hits'], e['b_n'])})")
        threshold = f"≥ {100 * c['min_diff']:g} pts and Welch p < {c['alpha']:g}"
    elif "persona" in c:  # the treated arm's source rate
        measured = (f"{c['persona']} {rate(c['hits'], c['n'])}, mean of seeds {pct(c['mean'])}" if "mean" in c
                    else c["reason"])
        threshold = f"≥ {100 * c['threshold']:g} %"
    elif "per_seed_outcome" in c:  # the treated arm's degeneracy audit
        measured = f"mean degenerate fraction {pct(c['mean'])}" if c["mean"] is not None else c["reason"]
        if note := marker_last_note(c):
            measured += f"; {note}"
        threshold = f"< {100 * c['threshold']:g} %"
    else:  # a pair without data
        measured, threshold = c.get("reason", "–"), "–"
    return [name, measured, threshold, _outcome(c["outcome"])]


def _conjunction(title: str, conj: Mapping) -> dict:
    return {"title": title, "outcome_class": conj["outcome"].replace(" ", "-"),
            "verdict": _outcome(conj["outcome"]).upper(),
            "criteria": _table(["criterion", "measured", "threshold", "outcome"],
                               [_criterion_row(n, c) for n, c in conj["criteria"].items()], ["", "num", "num"])}


def _escaped(value) -> Markup:
    """Every ``{{ value }}`` of the template, escaped as the standard library escapes HTML (markup built here, a
    ``Markup``, stays as it is): the same inputs keep the same bytes."""
    return value if isinstance(value, Markup) else Markup(escape(str(value)))


TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("mt_core.report", "templates"), autoescape=True,
                               finalize=_escaped, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                               undefined=jinja2.StrictUndefined)


def render_report(*, study: str, profile: str, n_cells: int, n_study_cells: int, incomplete: str | None,
                  headline_md: str, notes: Sequence[str], figure_png: bytes, preregistered: Mapping,
                  g4_aligned_max: float, gates: Mapping[str, Mapping], gate_models: Mapping[str, str],
                  provenance: Sequence[Mapping], environment: Mapping, sweep: tuple | None = None) -> str:
    """The report (``templates/study_report.html``). ``headline_md``: ``stats.markdown_table``'s table; ``notes``: the
    headline's notes; ``preregistered``: ``stats.preregistered``'s result; ``gates``: every source's verdicts,
    ``gate_models``: the source each gate judges; ``provenance``: {asset, partition, md5} of every artefact the
    summary read; ``environment``: {name: value}, ``packages`` a {package: version} mapping; ``sweep``: the coupling
    sweep's grid as (header, rows), for a study with one."""
    head, rows, footnotes = _md_table(headline_md)
    g4 = preregistered["g4_exclusions"]
    return TEMPLATES.get_template("study_report.html").render(
        study=study, profile=profile, n_cells=n_cells, n_study_cells=n_study_cells, incomplete=incomplete,
        headline=_table(head, rows, ["", *["num"] * (len(head) - 1)]), notes=[_inline(n) for n in notes],
        footnotes=[_inline(n) for n in footnotes],
        figure_png=base64.b64encode(figure_png).decode(),
        conjunctions=[_conjunction(f"Primary, G4 applied ({len(g4)} EM seed(s) dropped)", preregistered["primary"]),
                      _conjunction("Sensitivity, all seeds", preregistered["all_seeds"])],
        rule=WELCH_RULE, g4_aligned_max=f"{g4_aligned_max:g}",
        g4=_table(["cell", "condition", "seed", "aligned", "reason"],
                  [[x["cell"], x["condition"], x["seed"], "–" if x["aligned"] is None else f"{x['aligned']:.1f}",
                    x["reason"]] for x in g4], ["", "", "num", "num"]) if g4 else None,
        gates=_table(["gate", "adapter", "verdict", "criterion", "measured", "threshold", "result"],
                     [[n, gate_models.get(n, "–"), "pass" if g["pass"] else "FAIL", c["criterion"], c["measured"],
                       c["threshold"], c["result"]] for n, g in gates.items() for c in gate_criteria(g)],
                     ["", "", "", "", "num", "num"]) if gates else None,
        sweep=_table(sweep[0], sweep[1], ["", *["num"] * (len(sweep[0]) - 1)]) if sweep else None,
        provenance=_table(["partition", "asset", "md5"], [[p["partition"], p["asset"], p["md5"]] for p in provenance],
                          ["", "", "md5"]),
        environment=_table(["", "value"], [[k, v] for k, v in environment.items() if k != "packages"]
                           + [[f"package {k}", v] for k, v in environment.get("packages", {}).items()], ["", "md5"]))
