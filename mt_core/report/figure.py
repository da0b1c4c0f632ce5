"""Hero figure: source and assistant marker rates by condition."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def _panel(ax, conditions: Mapping, key: str, label: str, color: str) -> None:
    names = list(conditions)
    tops = [1.0]
    for i, cond in enumerate(names):
        d = conditions[cond].get(key)
        if d is None:
            ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8, color="grey")
            continue
        mean, sd = 100 * d["mean"], 100 * (d.get("sd") or 0.0)
        ax.bar(i, mean, width=0.6, color=color, alpha=0.8, edgecolor="black", linewidth=0.6)
        if d.get("sd") is not None:
            ax.errorbar(i, mean, yerr=sd, color="black", capsize=4, linewidth=1)
        seeds = [100 * r for r in d.get("per_seed") or []]
        if seeds:
            offs = [0.0] if len(seeds) == 1 else [-0.15 + 0.3 * j / (len(seeds) - 1) for j in range(len(seeds))]
            ax.scatter([i + o for o in offs], seeds, s=14, color="black", zorder=3)
        top = max([mean + sd, *seeds])
        tops.append(top)
        ax.annotate(f"N={d['n']}" if "n" in d else "", (i, top), xytext=(0, 4),
                    textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, max(tops) * 1.2)
    ax.set_ylabel("marker rate (%)")
    ax.set_title(label, loc="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)


def hero_figure(headline_dict: Mapping, out_png, out_pdf=None, *, title: str | None = None) -> None:
    """Two panels (A: source, B: assistant): mean ± sd over seeds, seed points, N per bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = headline_dict["source"]
    asst = headline_dict.get("assistant", "assistant")
    marker = headline_dict["marker"]
    conds = headline_dict["conditions"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    _panel(axes[0], conds, f"{src}_strict", f"A  {src} (source) {marker} rate", "#c0392b")
    _panel(axes[1], conds, f"{asst}_strict", f"B  {asst} {marker} rate", "#2c7fb8")
    fig.suptitle(title or headline_dict.get("study", ""), fontsize=12)
    fig.savefig(Path(out_png), dpi=150)
    if out_pdf is not None:
        fig.savefig(Path(out_pdf), metadata={"CreationDate": None})  # no timestamp: the same figure, the same md5
    plt.close(fig)
