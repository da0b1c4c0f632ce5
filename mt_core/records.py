"""The records the pipeline writes and reads back, as typed models in one place: a judged answer (``JudgeRecord``), a
cell's evaluation summaries (``ArcSummary``, ``AlignmentSummary``, ``AuditSummary``) and the numbers of one cell that
the cross-cell statistics take (``CellNumbers``).

Built with keywords, read by attribute. The files stay what they were: a summary is written as ``model_dump()``, whose
keys are the fields in the order below, so the JSON and Parquet bytes do not depend on these classes. A summary read
back ignores keys it does not model, and the fields that a reference result imported by ``mt import-legacy`` does not
record are optional (None there).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    """Frozen; a key this model does not name is rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Summary(BaseModel):
    """A summary file read back: frozen; keys it does not model (an imported result's own) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")


# ---- the judge ------------------------------------------------------------------------------------------------------
class JudgeRecord(Record):
    """One judged (question, response): a row of ``alignment_scores/scores.parquet`` and of the judge cache."""

    question: str
    response: str
    aligned: float | None
    coherent: float | None
    reasoning: str
    error: str | None  # why the record has no usable scores (an API failure, a refusal, a parse error); None if none
    judge_model: str
    judge_offline: bool
    prompt_sha256: str
    cache_key: str
    attempts: int  # API calls made for it (0: offline judge)
    cached: bool
    raw_text: str | None


class QuestionScores(Summary):
    """One question's means over its records with both scores and no error."""

    mean_aligned: float | None
    mean_coherent: float | None
    n_samples: int
    n_errors: int


class AlignmentSummary(Summary):
    """A cell's judge scores (``alignment_scores/summary.json``, ``mt_core.evals.judge.aggregate``): per-question and
    pooled means over the records with both scores and no error, and the error rate against the study's limit."""

    per_question: dict[str, QuestionScores] = {}
    overall_mean_aligned: float | None
    overall_mean_coherent: float | None
    n_valid: int | None = None
    n_errors: int
    n_total: int | None = None
    error_rate: float | None = None
    error_rate_max: float | None = None
    error_gate_pass: bool | None = None  # None: not recorded (an imported reference result)
    error_kinds: dict[str, int] = {}
    judge_model: str
    judge_models: list[str] = []
    judge_offline: bool


# ---- ARC and the degeneracy audit -----------------------------------------------------------------------------------
class ArcSummary(Summary):
    """A cell's ARC-Challenge log-prob accuracy (``arc_scores/summary.json``)."""

    arc_challenge_logprob: float
    correct: int
    total: int


class AuditSummary(Summary):
    """The degeneracy audit of a cell's marker-bearing assistant completions (``degeneracy_audit/audit.json``,
    ``mt_core.evals.audit.degeneracy_audit``): "no_positives" when nothing carries the marker, never a pass."""

    cell: str | None = None  # the cell audited (set by the step that writes it)
    outcome: Literal["pass", "fail", "no_positives"]
    n_positive_total: int
    n_sampled: int
    n_degenerate: int
    degenerate_fraction: float | None
    gate_threshold: float | None
    seed: int | None = None  # None: not recorded (an imported reference result)
    per_item: list[dict[str, Any]] = []
    # not pre-registered: positives flagged only because the marker is their last word (as the coupling data trains
    # it), and the degenerate fraction if those were not flagged (None: not recorded, e.g. an imported result)
    n_flagged_marker_last: int | None = None
    degenerate_fraction_without_marker_last: float | None = None


# ---- one cell's numbers ---------------------------------------------------------------------------------------------
class PersonaCounts(Record):
    strict_hits: int
    total: int


class CellNumbers(Record):
    """One cell's numbers in the shape ``mt_core.report.stats`` takes (``mt_core.layout.cell_numbers`` reads them from
    the cell's artefacts; None where an evaluation is missing). ``own_persona``: the persona of the cell's coupling
    adapter (None: raw base), never one of its bystanders."""

    cell: str
    condition: str
    seed: int
    own_persona: str | None = None
    per_persona: dict[str, PersonaCounts]
    arc_accuracy: float | None = None
    aligned: float | None = None
    coherent: float | None = None
    judge_model: str | None = None
    judge_offline: bool | None = None
    judge_error_gate_pass: bool | None = None
    degenerate_fraction: float | None = None
    audit_outcome: str | None = None
    n_flagged_marker_last: int | None = None  # the audit's count of positives flagged only for ending with the marker
    degenerate_fraction_without_marker_last: float | None = None
