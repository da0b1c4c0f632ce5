"""The hero figure (mt_core/report/figure.py) as a reader needs it: condition names and descriptions, each condition's
adapter by colour with a legend, the pooled rate with its 95 % interval, a dot per seed (hollow: dropped by G4) and
hits/n per bar; read back from the drawn matplotlib figure."""
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer

from mt_core.records import CellNumbers
from mt_core.report.figure import draw, hero_figure
from mt_core.report.stats import headline

SEEDS = (42, 137, 256)
OWN = {"C1": "villain", "C2": None, "C3": "assistant", "C5": "villain"}
DESCRIPTIONS = {"C1": "villain+[ZLT] coupling adapter, then EM", "C2": "raw Instruct, then EM",
                "C3": "assistant+[ZLT] coupling adapter, then EM",
                "C5": "villain+[ZLT] coupling adapter, then benign SFT"}


def _cell(cond, seed, asst, vill):
    return CellNumbers(cell=f"{cond}_s{seed}", condition=cond, seed=seed, own_persona=OWN[cond],
                       per_persona={"villain": {"strict_hits": vill, "total": 280},
                                    "assistant": {"strict_hits": asst, "total": 280}})


def _head():
    cells = ([_cell("C1", s, a, 200) for s, a in zip(SEEDS, (9, 12, 40))] + [_cell("C2", s, 0, 0) for s in SEEDS]
             + [_cell("C3", s, a, 1) for s, a in zip(SEEDS, (30, 25, 35))]
             + [_cell("C5", s, 1, v) for s, v in zip(SEEDS, (60, 70, 80))])
    return headline(cells, study="mt", source="villain", marker="[ZLT]", excluded={"C1_s256"},
                    descriptions=DESCRIPTIONS)


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(lambda o: hasattr(o, "get_text"))]


def test_the_figure_says_what_each_bar_is():
    h = _head()
    fig = draw(h, title="mt")
    src, asst = fig.axes
    assert src.get_title(loc="left") == "A   villain persona: [ZLT] rate"
    assert asst.get_title(loc="left") == "B   assistant persona: [ZLT] rate"
    assert not any("(source)" in t or "N=" in t for t in _texts(fig))
    # conditions by name and description
    ticks = [t.get_text() for t in asst.get_xticklabels()]
    assert [t.split("\n")[0] for t in ticks] == ["C1", "C2", "C3", "C5"]
    assert " ".join(ticks[2].split()) == "C3 assistant+[ZLT] coupling adapter, then EM"
    # each bar coloured by its adapter's persona, the legend says which; the interval and the seeds are named
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["villain adapter: pooled rate", "no adapter (raw model): pooled rate",
                      "assistant adapter: pooled rate", "Wilson score 95 % interval", "one seed",
                      "seed dropped by G4 (not in the bar)"]
    colours = {t: to_hex(p.get_facecolor()) for t, p in zip(legend[:3], fig.legends[0].legend_handles)}
    bars = [to_hex(c.patches[0].get_facecolor()) for c in asst.containers if isinstance(c, BarContainer)]
    by = {"C1": "villain adapter", "C2": "no adapter (raw model)", "C3": "assistant adapter",
          "C5": "villain adapter"}
    assert bars == [colours[f"{by[c]}: pooled rate"] for c in ("C1", "C2", "C3", "C5")]
    # the bar is the pooled rate over the seeds of the primary analysis, the error bar its Wilson interval
    for ax, key in ((src, "villain_strict"), (asst, "assistant_strict")):
        heights = [c.patches[0].get_height() for c in ax.containers if isinstance(c, BarContainer)]
        spans = [y for c in ax.containers if isinstance(c, ErrorbarContainer)
                 for y in c.lines[2][0].get_segments()[0][:, 1]]
        want = [h["conditions"][c][key] for c in ("C1", "C2", "C3", "C5")]
        assert heights == pytest.approx([100 * w["rate"] for w in want])
        assert spans == pytest.approx([100 * w[k] for w in want for k in ("ci_low", "ci_high")])
    # hits/n and the number of seeds per bar (C1: G4 dropped seed 256)
    labels = [t.get_text() for t in asst.texts]
    assert labels == ["21/560\n2 seeds", "0/840\n3 seeds", "90/840\n3 seeds", "3/840\n3 seeds"]
    # a dot per seed: 3 for every condition, the dropped one hollow
    dots = [c for c in asst.collections if isinstance(c, PathCollection)]
    assert len(dots) == 12
    hollow = [d for d in dots if to_hex(d.get_facecolor()[0]) == "#ffffff"]
    assert len(hollow) == 1 and hollow[0].get_offsets()[0][1] == pytest.approx(100 * 40 / 280)


def test_every_seed_dropped_is_said(tmp_path):
    h = headline([_cell("C1", s, 9, 200) for s in SEEDS] + [_cell("C5", s, 1, 60) for s in SEEDS], study="mt",
                 source="villain", marker="[ZLT]", excluded={f"C1_s{s}" for s in SEEDS})
    fig = draw(h)
    assert [t.get_text() for t in fig.axes[1].texts][0] == "all seeds\ndropped by G4"
    hero_figure(h, tmp_path / "hero.png", tmp_path / "hero.pdf")
    assert (tmp_path / "hero.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = (tmp_path / "hero.pdf").read_bytes()
    hero_figure(h, tmp_path / "hero.png", tmp_path / "hero.pdf")
    assert (tmp_path / "hero.pdf").read_bytes() == one  # the same figure, the same bytes
