"""The lineage of one cell: which artefacts it was built from, and which of them are stale.

Works on recorded materialization metadata only (no Dagster import): ``latest(asset, partition)`` returns the latest
materialization's metadata of that asset partition (``partition`` None for unpartitioned assets) as a dict with at
least ``md5``, ``run_id``, ``upstream`` (list of {asset, partition, run_id, md5, path}) and ``path``, or None when the
partition was never materialized. An artefact is *stale* when an upstream artefact it recorded (by md5) is no longer
the latest materialization of that upstream partition, i.e. the upstream was re-materialized since. With ``study``,
every artefact must also have been built for that study (its recorded ``study``, the one its manifest names); one
that was not is listed in ``wrong_study``: the chain then mixes studies and says nothing about this one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

from mt_core.layout import UNPARTITIONED, partition_or_none
# (asset, parent in the printed tree); the cell's chain from the base model to its evaluations
CELL_CHAIN = [("cell_adapter", "coupling_adapter"), ("marker_completions", "cell_adapter"),
              ("marker_rates", "marker_completions"), ("degeneracy_audit", "marker_completions"),
              ("completion_length", "marker_completions"),
              ("arc_scores", "cell_adapter"), ("alignment_completions", "cell_adapter"),
              ("alignment_scores", "alignment_completions")]
NUMBERS = ["assistant_strict_rate", "source_strict_rate", "arc_challenge_logprob", "overall_mean_aligned",
           "final_loss", "outcome", "truncated_share"]
BASE_INFO = ["kind", "id", "revision"]

Latest = Callable[[str, "str | None"], "dict | None"]


@dataclass
class Node:
    asset: str
    partition: str
    parent: str | None
    depth: int
    materialized: bool = False
    md5: str | None = None
    run_id: str | None = None
    path: str | None = None
    numbers: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    upstream: list[dict] = field(default_factory=list)  # what it recorded: asset, partition, run_id, md5, path
    stale: list[str] = field(default_factory=list)  # this artefact's own stale links
    upstream_stale: bool = False  # an artefact above it in the chain is stale
    study: str | None = None  # the study it was built for (its manifest's)

    @property
    def label(self) -> str:
        return f"{self.asset}[{self.partition}]"


def stale_links(asset: str, partition: str, meta: dict, latest: Latest) -> list[str]:
    """One message per recorded upstream artefact that is no longer the latest of its asset partition."""
    out = []
    for u in meta.get("upstream") or []:
        cur = latest(u["asset"], partition_or_none(u.get("partition")))
        now = cur.get("md5") if cur else None
        if now != u.get("md5"):
            out.append(f"{asset}[{partition}] was built from {u['asset']}[{u.get('partition') or UNPARTITIONED}] "
                       f"md5 {u.get('md5')} (run {u.get('run_id')}), latest is "
                       + (f"md5 {now} (run {cur.get('run_id')})" if cur else "not materialized"))
    return out


def _node(asset: str, partition: str | None, parent: str | None, depth: int, latest: Latest) -> Node:
    n = Node(asset, partition or UNPARTITIONED, parent, depth)
    meta = latest(asset, partition)
    if meta:
        n.materialized = True
        n.md5, n.run_id, n.path, n.study = meta.get("md5"), meta.get("run_id"), meta.get("path"), meta.get("study")
        n.numbers = {k: meta[k] for k in NUMBERS if meta.get(k) is not None}
        n.upstream = list(meta.get("upstream") or [])
        n.stale = stale_links(asset, n.partition, meta, latest)
        if asset == "base_model":
            n.info = {k: meta[k] for k in BASE_INFO if meta.get(k) is not None}
    return n


def cell_lineage(cell_key: str, base: str, latest: Latest, study: str | None = None) -> dict:
    """The chain base model -> coupling adapter (unless ``base`` is "raw") -> cell adapter -> evaluations; with
    ``study``, each artefact's recorded study checked against it."""
    nodes = [_node("base_model", None, None, 0, latest)]
    if base != "raw":
        nodes.append(_node("coupling_adapter", base, "base_model", 1, latest))
    by_asset = {n.asset: n for n in nodes}
    for asset, parent in CELL_CHAIN:
        parent = parent if parent in by_asset else "base_model"
        n = _node(asset, cell_key, parent, by_asset[parent].depth + 1, latest)
        n.upstream_stale = bool(by_asset[parent].stale or by_asset[parent].upstream_stale)
        nodes.append(n)
        by_asset[asset] = n
    links = [s for n in nodes for s in n.stale]
    foreign = [f"{n.label} (md5 {n.md5}, run {n.run_id}) was built for study {n.study!r}, not {study!r}"
               for n in nodes if study is not None and n.materialized and n.study != study]
    return {"cell": cell_key, "base": base, "study": study, "stale": bool(links), "stale_links": links,
            "wrong_study": foreign, "nodes": [asdict(n) | {"label": n.label} for n in nodes]}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render(lineage: dict) -> str:
    """A readable tree: one line per artefact, then the stale links."""
    of = f" of study {lineage['study']}" if lineage.get("study") else ""
    lines = [f"lineage of cell {lineage['cell']}{of} (base: {lineage['base']})"]
    foreign = lineage.get("wrong_study") or []
    for n in lineage["nodes"]:
        head = "  " * n["depth"] + ("└─ " if n["depth"] else "") + n["label"]
        if not n["materialized"]:
            lines.append(f"{head}  not materialized")
            continue
        parts = [head, f"md5 {n['md5']}", f"run {n['run_id']}"]
        if n["asset"] == "base_model":
            parts.insert(1, " ".join(str(n["info"][k]) for k in BASE_INFO if k in n["info"]) or "model")
        parts += [f"{k}={_fmt(v)}" for k, v in n["numbers"].items()]
        if lineage.get("study") and n.get("study") != lineage["study"]:
            parts.append(f"WRONG STUDY {n.get('study')}")
        if n["stale"]:
            parts.append("STALE")
        elif n["upstream_stale"]:
            parts.append("(upstream stale)")
        lines.append("  ".join(parts))
    if foreign:
        lines += ["", "wrong study:"] + [f"  {s}" for s in foreign]
    if lineage["stale_links"]:
        lines += ["", "stale:"] + [f"  {s}" for s in lineage["stale_links"]]
    elif not foreign:
        lines += ["", "nothing stale: every artefact was built from the latest materialization of its upstreams"]
    return "\n".join(lines)
