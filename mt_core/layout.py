"""The artefact layout: where a study's artefacts live, the files of each kind, and how they are written and read.

This is the one module that spells an artefact file name. Steps write through it, and the summary, the catalog, the
legacy import and the CLI read through it, so a file can be renamed here and nowhere else.

    <root>/<asset>/<partition>/       one artefact (``_`` for an unpartitioned asset), complete or absent
    <root>/<asset>/<partition>/_manifest.json   its files' md5s, run id and upstream artefacts (mt_resources.store)
    <root>/legacy/<study>/            an imported study, in the same per-cell layout

Every Parquet row names its study, profile and partition, and every completion row has a ``sample_id`` that stays the
same across reruns (it is built from the row's place in the sweep, not from its content), so judge scores, hits and
completions join on it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mt_core.config import PROJECT_ROOT, Study
from mt_core.io import read_json, write_json
from mt_core.records import AlignmentSummary, ArcSummary, AuditSummary, CellNumbers, PersonaCounts

UNPARTITIONED = "_"
MANIFEST = "_manifest.json"
LEGACY = "legacy"
JUDGE_CACHE = "judge_cache.parquet"  # every judge answer of the study, by (model, prompt, question, response)


def artefact_root(study: Study, where: str | None = None) -> Path | str:
    """Where the study's artefacts live: ``where`` (the settings' $MT_ARTIFACTS), else artifacts/<study>/<profile> in
    the project. ``{study}`` and ``{profile}`` in ``where`` are the study's name and profile (several studies side by
    side); a relative path is the project's. An object store URL (``s3://bucket/prefix/{study}/{profile}``) comes back
    as that string: it is no project path, and ``pathlib`` would fold its ``//`` (``mt_resources.store.is_url`` is the
    same test)."""
    if where:
        root = where.replace("{study}", study.name).replace("{profile}", study.profile)
        if "://" in root:
            return root
        p = Path(root)
        return p if p.is_absolute() else PROJECT_ROOT / p
    return PROJECT_ROOT / "artifacts" / study.name / study.profile


def artefact_dir(root: Path, asset: str, partition: str | None = None) -> Path:
    return Path(root) / asset / (partition or UNPARTITIONED)


def partition_or_none(p: str | None) -> str | None:
    """The partition key as Dagster knows it: None for an unpartitioned asset."""
    return None if p in (None, UNPARTITIONED) else p


# ---- rows ---------------------------------------------------------------------------------------------------------
def row_keys(study: Study, **key) -> dict:
    """Columns that make every Parquet row self-describing (study, profile, and the partition's key)."""
    return {"study": study.name, "profile": study.profile, **key}


def write_rows(rows: list[dict], path: Path, keys: dict | None = None) -> None:
    import polars as pl

    pl.DataFrame([{**(keys or {}), **r} for r in rows], infer_schema_length=None).write_parquet(path)


def read_rows(path: Path) -> list[dict]:
    import polars as pl

    return pl.read_parquet(path).to_dicts()


@dataclass(frozen=True)
class Sample:
    """One completion: who was asked (persona, "" for no system prompt), what, and what came back."""

    sample_id: str
    persona: str
    question_idx: int
    question: str
    question_set: str
    sample_idx: int
    text: str
    n_tokens: int
    finish_reason: str

    def row(self) -> dict:
        return asdict(self)


def sample_id(owner: str, persona: str, question_idx: int, sample_idx: int) -> str:
    """Stable id of a completion within its artefact's owner (a cell, a source, a gate): ``C1_s42/villain/q3/s7``."""
    return f"{owner}/{persona or 'none'}/q{question_idx}/s{sample_idx}"


# ---- one class per artefact kind: its asset name and files ---------------------------------------------------------
class EvalSetCopy:
    asset, FILE = "eval_set", "eval_set.json"


class ArcCopy:
    asset, FILE = "arc_challenge", "arc_challenge_test.jsonl"


class BaseModel:
    asset, REF = "base_model", "model_ref.json"  # a pinned HF snapshot is referenced, never copied

    @staticmethod
    def write_ref(out: Path, ref: dict) -> None:
        write_json(out / BaseModel.REF, ref)

    @staticmethod
    def model_dir(d: Path) -> Path:
        """The directory holding the model's weights: the snapshot the artefact references, by its path (a pinned or
        random snapshot) or by its name under this process's models folder (a tiny one, built once per content:
        ``mt_core.model.snapshots``); an artefact without a reference holds the weights itself."""
        ref = d / BaseModel.REF
        if not ref.is_file():
            return d
        r = read_json(ref)
        if "path" in r:
            return Path(r["path"])
        from mt_core import runtime

        return runtime.current().models / r["snapshot"]


class Dataset:
    DATA = "data.jsonl"

    @staticmethod
    def asset(which: str) -> str:
        return f"{which}_dataset"


class Onpolicy:
    asset, COMPLETIONS, META = "onpolicy_completions", "completions.parquet", "meta.json"


class CouplingData:
    asset, RECORDS, META = "coupling_dataset", "coupling.jsonl", "meta.json"


class Adapter:
    """A trained LoRA (coupling or cell): the PEFT adapter, its training log; a coupling adapter adds its gates."""

    coupling, cell = "coupling_adapter", "cell_adapter"
    DIR, TRAIN_LOG, NONE = "adapter", "train_log.json", "none.json"
    GATES, GATE_COMPLETIONS = "gates.json", "gate_completions.parquet"
    SWEEP = "sweep.json"  # a swept coupling partition: its recipe, ARC-Challenge and the sweep rule's verdict

    @staticmethod
    def read_sweep(d: Path) -> dict | None:
        return read_json(d / Adapter.SWEEP) if (d / Adapter.SWEEP).is_file() else None

    @staticmethod
    def path(d: Path) -> Path | None:
        """The PEFT adapter directory, or None for a cell without a second stage."""
        p = d / Adapter.DIR
        return p if p.is_dir() else None

    @staticmethod
    def read_gates(d: Path) -> dict:
        return read_json(d / Adapter.GATES)


class MarkerCompletions:
    asset, COMPLETIONS = "marker_completions", "completions.parquet"


class MarkerRates:
    asset, HITS, RATES, EVAL = "marker_rates", "hits.parquet", "rates.parquet", "marker_eval.json"

    @staticmethod
    def read_eval(d: Path) -> dict:
        """{cell, marker, per_persona, per_question?, summary}: what mt_core.evals.markers.summarize_markers gives."""
        return read_json(d / MarkerRates.EVAL)


class ArcScores:
    asset, ROWS, SUMMARY = "arc_scores", "arc.parquet", "summary.json"

    @staticmethod
    def read_summary(d: Path) -> ArcSummary:
        return ArcSummary.model_validate(read_json(d / ArcScores.SUMMARY))


class AlignmentCompletions:
    asset, COMPLETIONS = "alignment_completions", "completions.parquet"


class AlignmentScores:
    asset, ROWS, SUMMARY = "alignment_scores", "scores.parquet", "summary.json"

    @staticmethod
    def read_summary(d: Path) -> AlignmentSummary:
        return AlignmentSummary.model_validate(read_json(d / AlignmentScores.SUMMARY))


class Audit:
    asset, FILE = "degeneracy_audit", "audit.json"

    @staticmethod
    def read(d: Path) -> AuditSummary:
        return AuditSummary.model_validate(read_json(d / Audit.FILE))


class CompletionLength:
    """Tokens per marker completion by persona, the share cut at max_tokens, the marker rate of those that finished."""

    asset, ROWS, FILE = "completion_length", "length.parquet", "length.json"

    @staticmethod
    def read(d: Path) -> dict:
        """{cell, marker, the pooled numbers, max_tokens, per_persona}: ``mt_core.evals.length.length_audit``'s."""
        return read_json(d / CompletionLength.FILE)


class ProbeStates:
    """A cell's hidden states at the last prompt token of every persona x marker-eval question, at the probe's
    layers: one row per (persona, question, layer), the state a list of floats (DuckDB reads it as a LIST)."""

    asset, ROWS = "probe_states", "states.parquet"


class ProbeScores:
    """The latent probe over the study: the reference probe's score of every cell's personas (ROWS), per cell and
    layer its refitted probe's held-out AUC and cosine to the reference direction (CELLS), and the reference probes
    and the secondary analysis (SUMMARY)."""

    asset, ROWS, CELLS, SUMMARY = "probe_scores", "scores.parquet", "cells.parquet", "probe.json"

    @staticmethod
    def read(d: Path) -> dict:
        return read_json(d / ProbeScores.SUMMARY)


class CouplingSweepGrid:
    """The coupling sweep over the study: one row per swept coupling partition (its recipe values, the rule gate's
    rates, ARC-Challenge, the rule's verdict, whether a condition builds on it, whether it is the best that passes)
    in ROWS, and the same with the rule in SUMMARY."""

    asset, ROWS, SUMMARY = "coupling_sweep", "sweep.parquet", "sweep.json"

    @staticmethod
    def read(d: Path) -> dict:
        return read_json(d / CouplingSweepGrid.SUMMARY)


class StudySummary:
    asset = "study_summary"
    HEADLINE_MD, HEADLINE_JSON, STATS, FIGURE_PNG, FIGURE_PDF = ("headline.md", "headline.json", "stats.json",
                                                                "hero.png", "hero.pdf")
    REPORT_HTML = "report.html"  # the self-contained report (mt_core.report.html)


class Catalog:
    asset, FILE = "duckdb_catalog", "catalog.duckdb"


class Legacy:
    """An imported study: its per-cell artefacts plus one row per cell, the gates and what was imported."""

    CELLS, GATES, IMPORT = "cells.parquet", "gates.json", "import.json"


# every per-cell artefact a finished cell has (the analysis reads each)
PER_CELL = [MarkerCompletions.asset, MarkerRates.asset, ArcScores.asset, AlignmentCompletions.asset,
            AlignmentScores.asset, Audit.asset, CompletionLength.asset]

# the Parquet file of each ``{files:<asset>.<FILE>}`` placeholder in sql/*.sql, as a pattern relative to a store (or
# imported study) root: the catalog matches it against the files of verified artefacts and lists those; never a glob
SQL_FILES = {f"{k.asset}.{attr}": f"{k.asset}/*/{getattr(k, attr)}" for k, attrs in (
    (MarkerCompletions, ["COMPLETIONS"]), (MarkerRates, ["HITS", "RATES"]), (ArcScores, ["ROWS"]),
    (AlignmentCompletions, ["COMPLETIONS"]), (AlignmentScores, ["ROWS"]), (CompletionLength, ["ROWS"]),
    (ProbeScores, ["ROWS", "CELLS"]), (ProbeStates, ["ROWS"]), (CouplingSweepGrid, ["ROWS"]))
    for attr in attrs}


# ---- a cell's numbers, read from its artefacts ---------------------------------------------------------------------
def cell_numbers(key: str, condition: str, seed: int, rates: Path, arc: Path | None = None,
                 scores: Path | None = None, audit: Path | None = None, *, own_persona: str | None) -> CellNumbers:
    """One cell's numbers in the shape ``mt_core.report.stats`` takes; a missing artefact gives None values.
    ``own_persona``: the persona of the cell's coupling adapter (None: raw base), never one of its bystanders."""
    me = MarkerRates.read_eval(rates)
    arc_s = ArcScores.read_summary(arc) if arc and (arc / ArcScores.SUMMARY).is_file() else None
    al = AlignmentScores.read_summary(scores) if scores and (scores / AlignmentScores.SUMMARY).is_file() else None
    au = Audit.read(audit) if audit and (audit / Audit.FILE).is_file() else None
    return CellNumbers(
        cell=key, condition=condition, seed=seed, own_persona=own_persona,
        per_persona={p: PersonaCounts(strict_hits=v["strict_hits"], total=v["total"])
                     for p, v in me["per_persona"].items()},
        arc_accuracy=arc_s.arc_challenge_logprob if arc_s else None,
        aligned=al.overall_mean_aligned if al else None, coherent=al.overall_mean_coherent if al else None,
        judge_model=al.judge_model if al else None, judge_offline=al.judge_offline if al else None,
        judge_error_gate_pass=al.error_gate_pass if al else None,
        degenerate_fraction=au.degenerate_fraction if au else None, audit_outcome=au.outcome if au else None,
        n_flagged_marker_last=au.n_flagged_marker_last if au else None,
        degenerate_fraction_without_marker_last=au.degenerate_fraction_without_marker_last if au else None)
