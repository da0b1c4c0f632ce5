"""The study report: one self-contained HTML file (``report.html`` of ``study_summary``) a researcher can attach to a
write-up, and the phrasing of rates and gates that it and the Dagster UI's metadata share.

Pure: dicts in, a string out. Nothing outside the file is referenced (the figure is embedded, the CSS inline), every
input string is HTML-escaped, and the same inputs give the same bytes (no clock, no paths, no run ids: a study
resumed after a crash has other run ids and the same artefacts, md5 for md5).
"""
from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from html import escape
from statistics import fmean

from mt_core.report.stats import WELCH_RULE


def pct(x: float | None) -> str:
    """A rate as a reader compares it: ``61.6 %``."""
    return "–" if x is None else f"{100 * x:.1f} %"


def rate(hits: int, n: int) -> str:
    """A rate with its counts: ``61.6 % (69/112)``."""
    return f"{pct(hits / n if n else None)} ({hits}/{n})"


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


def _cell(v, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(v))}</td>"


def _table(head: Sequence[str], rows: Sequence[Sequence], classes: Sequence[str] = ()) -> str:
    cls = list(classes) + [""] * (len(head) - len(classes))
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(_cell(v, c) for v, c in zip(r, cls)) + "</tr>\n" for r in rows)
    return f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{trs}</tbody>\n</table>"


def _md_table(md: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a Markdown table (the headline's, ``stats.markdown_table``: the report shows the very
    numbers of ``headline.md``)."""
    lines = [ln.strip().strip("|").split("|") for ln in md.strip().splitlines() if ln.startswith("|")]
    head, *rows = [[c.strip() for c in ln] for ln in lines]
    return head, rows[1:]


def _inline(text: str) -> str:
    """Escaped text with the notes' Markdown `code` spans kept."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escape(text))


def _outcome(o: str) -> str:
    return {"pass": "pass", "fail": "FAIL"}.get(o, o)


def _criterion_row(name: str, c: Mapping) -> list:
    if "mean_diff" in c:  # treated arm vs a control, on the assistant's rate
        w, e = c["welch"], c["exact"]
        p = "n/a" if w["p"] is None else f"{w['p']:.3g}"
        measured = (f"{100 * c['mean_diff']:+.1f} pts ({pct(fmean(c['a_rates']))} vs {pct(fmean(c['b_rates']))}, "
                    f"mean of seeds); Welch p {p}" + ("" if w.get("defined", True) else f" ({w['reason']})")
                    + f"; Fisher exact p {e['p']:.3g} ({e['a_hits']}/{e['a_n']} vs {e['b_hits']}/{e['b_n']})")
        threshold = f"≥ {100 * c['min_diff']:g} pts and Welch p < {c['alpha']:g}"
    elif "persona" in c:  # the treated arm's source rate
        measured = (f"{c['persona']} {rate(c['hits'], c['n'])}, mean of seeds {pct(c['mean'])}" if "mean" in c
                    else c["reason"])
        threshold = f"≥ {100 * c['threshold']:g} %"
    elif "per_seed_outcome" in c:  # the treated arm's degeneracy audit
        measured = f"mean degenerate fraction {pct(c['mean'])}" if c["mean"] is not None else c["reason"]
        threshold = f"< {100 * c['threshold']:g} %"
    else:  # a pair without data
        measured, threshold = c.get("reason", "–"), "–"
    return [name, measured, threshold, _outcome(c["outcome"])]


def _conjunction(title: str, conj: Mapping) -> str:
    rows = [_criterion_row(n, c) for n, c in conj["criteria"].items()]
    return (f"<h3>{escape(title)}: <span class=\"verdict {escape(conj['outcome'].replace(' ', '-'))}\">"
            f"{escape(_outcome(conj['outcome']).upper())}</span></h3>\n"
            + _table(["criterion", "measured", "threshold", "outcome"], rows, ["", "num", "num"]))


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1a1a1a; max-width: 1100px;
       margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { font-variant-numeric: tabular-nums; } td.md5, code { font-family: ui-monospace,
  "SFMono-Regular", Menlo, monospace; font-size: 0.9em; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; font-weight: bold; }
.verdict.pass { color: #1a7f37; } .verdict.fail { color: #c0392b; } .verdict.not-assessable { color: #8a6d00; }
.meta, .rule { color: #555; } img { max-width: 100%; }
@media print {
  body { font-size: 10pt; max-width: none; margin: 0; padding: 0; color: #000; }
  h2, h3 { break-after: avoid; } table, figure, tr { break-inside: avoid; }
  th { background: #eee; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @page { margin: 15mm; }
}
"""


def _section(title: str, *parts: str) -> str:
    return f"<h2>{escape(title)}</h2>\n" + "\n".join(parts)


def render_report(*, study: str, profile: str, n_cells: int, n_study_cells: int, incomplete: str | None,
                  headline_md: str, notes: Sequence[str], figure_png: bytes, preregistered: Mapping,
                  g4_aligned_max: float, gates: Mapping[str, Mapping], gate_models: Mapping[str, str],
                  provenance: Sequence[Mapping], environment: Mapping) -> str:
    """The report. ``headline_md``: ``stats.markdown_table``'s table; ``notes``: the headline's notes;
    ``preregistered``: ``stats.preregistered``'s result; ``gates``: every source's verdicts, ``gate_models``: the
    source each gate judges; ``provenance``: {asset, partition, md5} of every artefact the summary read;
    ``environment``: {name: value}, ``packages`` a {package: version} mapping."""
    head, rows = _md_table(headline_md)
    g4 = preregistered["g4_exclusions"]
    png = base64.b64encode(figure_png).decode()
    banner = f"<p class=\"banner\">{escape(incomplete)}</p>" if incomplete else ""
    body = [
        f"<h1>{escape(study)} ({escape(profile)})</h1>",
        f"<p class=\"meta\">Study report: {n_cells} of {n_study_cells} cells.</p>{banner}",
        _section("Headline", _table(head, rows, ["", *["num"] * (len(head) - 1)]),
                 "<ul>" + "".join(f"<li>{_inline(n)}</li>" for n in notes) + "</ul>"),
        _section("Figure", f"<figure><img alt=\"marker rate by condition\" src=\"data:image/png;base64,{png}\">"
                           "</figure>"),
        _section("Primary conjunction",
                 _conjunction(f"Primary, G4 applied ({len(g4)} EM seed(s) dropped)", preregistered["primary"]),
                 _conjunction("Sensitivity, all seeds", preregistered["all_seeds"]),
                 f"<p class=\"rule\">{escape(WELCH_RULE)}</p>"),
        _section("G4 exclusions",
                 f"<p>EM seeds whose post-EM alignment stayed above {g4_aligned_max:g} (or was not scored) are "
                 "dropped from the primary analysis.</p>",
                 _table(["cell", "condition", "seed", "aligned", "reason"],
                        [[x["cell"], x["condition"], x["seed"],
                          "–" if x["aligned"] is None else f"{x['aligned']:.1f}", x["reason"]] for x in g4],
                        ["", "", "num", "num"]) if g4 else "<p>None.</p>"),
        _section("Gates",
                 _table(["gate", "adapter", "verdict", "criterion", "measured", "threshold", "result"],
                        [[n, gate_models.get(n, "–"), "pass" if g["pass"] else "FAIL", c["criterion"],
                          c["measured"], c["threshold"], c["result"]] for n, g in gates.items()
                         for c in gate_criteria(g)], ["", "", "", "", "num", "num"])
                 if gates else "<p>No gate verdicts.</p>"),
        _section("Provenance",
                 "<p>Every artefact this report was computed from, as the Dagster instance recorded it (md5: the "
                 "artefact's manifest digest, its Dagster data version).</p>",
                 _table(["partition", "asset", "md5"], [[p["partition"], p["asset"], p["md5"]] for p in provenance],
                        ["", "", "md5"])),
        _section("Environment", "<p class=\"meta\">Of the process that wrote this report.</p>",
                 _table(["", "value"], [[k, v] for k, v in environment.items() if k != "packages"]
                        + [[f"package {k}", v] for k, v in environment.get("packages", {}).items()], ["", "md5"])),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(study)} ({escape(profile)}): study report</title>\n<style>{CSS}</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")
