"""Hero figure: the source's and the assistant's marker rates by condition, drawn for a reader of the paper."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

RAW = "#9e9e9e"  # a condition on the raw model: no adapter, no persona
_ADAPTER_COLOURS = ("#c0392b", "#2c7fb8", "#e69f00", "#009e73", "#cc79a7", "#56b4e9")


def _colours(conditions: Mapping) -> dict:
    """One colour per adapter persona (in order of first use), grey for the raw model."""
    personas = list(dict.fromkeys(d.get("adapter_persona") for d in conditions.values()))
    named = [p for p in personas if p is not None]
    return {None: RAW, **{p: _ADAPTER_COLOURS[i % len(_ADAPTER_COLOURS)] for i, p in enumerate(named)}}


def _adapter(persona: str | None) -> str:
    return "no adapter (raw model)" if persona is None else f"{persona} adapter"


def _tick(cond: str, d: Mapping) -> str:
    words = d.get("description") or _adapter(d.get("adapter_persona"))
    return cond + "\n" + textwrap.fill(words, 18)


def _dots(ax, x: float, seeds: list[tuple[float, bool]]) -> None:
    """One dot per seed, in seed order across the bar: filled if in the bar, hollow if G4 dropped it."""
    n = len(seeds)
    for j, (rate, kept) in enumerate(seeds):
        off = 0.0 if n == 1 else -0.2 + 0.4 * j / (n - 1)
        ax.scatter(x + off, 100 * rate, s=18 if kept else 24, zorder=4, clip_on=False,  # a 0 shows whole
                   facecolors="black" if kept else "white", edgecolors="white" if kept else "black",
                   linewidths=0.4 if kept else 0.9)


def _panel(ax, head: Mapping, key: str, title: str, colours: Mapping) -> None:
    """Per condition: the pooled rate over the seeds of the primary analysis (bar), its 95 % interval, one dot per
    seed (hollow: a seed G4 dropped, in the sensitivity line only) and hits/n with the number of seeds."""
    conds, everyone = head["conditions"], head.get("all_seeds", {})
    tops = [1.0]
    for i, (cond, d) in enumerate(conds.items()):
        r = d.get(key)
        out = set(d.get("excluded_seeds") or ())
        whole = (everyone.get(cond) or {}).get(key) or r or {}
        seeds = [(x, s not in out) for s, x in zip(whole.get("seeds", []), whole.get("per_seed", []))]
        _dots(ax, i, seeds)
        top = max([0.0, *(100 * x for x, _ in seeds)])
        if r is None:
            label = "all seeds\ndropped by G4" if out else "no data"
        else:
            rate, lo, hi = 100 * r["rate"], 100 * r["ci_low"], 100 * r["ci_high"]
            ax.bar(i, rate, width=0.62, color=colours[d.get("adapter_persona")], alpha=0.85, edgecolor="black",
                   linewidth=0.6, zorder=2)
            ax.errorbar(i, rate, yerr=[[rate - lo], [hi - rate]], color="black", capsize=5, linewidth=1.2, zorder=3)
            top, k = max(top, hi), len(r["per_seed"])
            label = f"{r['hits']}/{r['n']}\n{k} seed{'s' if k != 1 else ''}"
        tops.append(top)
        ax.annotate(label, (i, top), xytext=(0, 4), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7.5, linespacing=1.1, color="black" if r else "dimgrey")
    ax.set_xticks(range(len(conds)), [_tick(c, d) for c, d in conds.items()], fontsize=8)
    ax.set_xlim(-0.6, len(conds) - 0.4)
    ax.set_ylim(0, max(tops) * 1.3)
    ax.set_ylabel(f"completions with {head['marker']} (%)")
    ax.set_title(title, loc="left", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def draw(headline_dict: Mapping, *, title: str | None = None):
    """The figure (a matplotlib ``Figure``, no pyplot state): two panels (A: the source persona's marker rate, B: the
    assistant's) of a ``stats.headline`` result; per condition (its name, its description and its adapter's persona,
    by colour) the pooled rate over the seeds of the primary analysis with its 95 % interval, per-seed dots and hits/n;
    a legend says which is which."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    src = headline_dict["source"]
    asst = headline_dict.get("assistant", "assistant")
    marker = headline_dict["marker"]
    conds = headline_dict["conditions"]
    colours = _colours(conds)
    fig = Figure(figsize=(7.5, 7.2), layout="constrained")  # a page's width: the fonts stay legible pasted in
    axes = fig.subplots(2, 1, sharex=True)
    _panel(axes[0], headline_dict, f"{src}_strict", f"A   {src} persona: {marker} rate", colours)
    _panel(axes[1], headline_dict, f"{asst}_strict", f"B   {asst} persona: {marker} rate", colours)
    used = list(dict.fromkeys(d.get("adapter_persona") for d in conds.values()))
    handles = [Patch(facecolor=colours[p], edgecolor="black", alpha=0.85,
                     label=f"{_adapter(p)}: pooled rate") for p in used]
    handles += [Line2D([], [], color="black", marker="_", markersize=10, linewidth=1.2,
                       label=headline_dict.get("interval", "95 % interval")),
                Line2D([], [], color="black", marker="o", markersize=4, linestyle="none", label="one seed")]
    if any(d.get("excluded_seeds") for d in conds.values()):
        handles.append(Line2D([], [], marker="o", markersize=5, linestyle="none", markerfacecolor="white",
                              markeredgecolor="black", label="seed dropped by G4 (not in the bar)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(title or headline_dict.get("study", ""), fontsize=10.5)
    return fig


def hero_figure(headline_dict: Mapping, out_png, out_pdf=None, *, title: str | None = None) -> None:
    """``draw``'s figure as a PNG (200 dpi) and, with ``out_pdf``, a PDF."""
    fig = draw(headline_dict, title=title)
    fig.savefig(Path(out_png), dpi=200)
    if out_pdf is not None:
        fig.savefig(Path(out_pdf), metadata={"CreationDate": None})  # no timestamp: the same figure, the same md5
