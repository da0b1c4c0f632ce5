"""The marker eval set (11 personas, 28 questions), the study's further question sets and the coupling questions, as
one value the steps share."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mt_core.config import IN_DISTRIBUTION, Study, named_personas
from mt_core.io import DataError, check_md5, read_json


@dataclass(frozen=True)
class EvalSet:
    prompts: dict[str, str]  # persona -> system prompt
    personas: list[str]  # the order every table uses
    eval_questions: list[str]
    betley_questions: list[str]
    coupling_questions: list[str]  # the questions the coupling data is built from
    extra_sets: dict[str, list[str]] = field(default_factory=dict)  # the study's ``eval_sets``, by name

    @property
    def questions(self) -> list[str]:
        """The eval set's questions, eval then Betley (the in-distribution 28 that gates, audits and every
        pre-registered rate use); a question's index is its place here."""
        return self.eval_questions + self.betley_questions

    @property
    def question_sets(self) -> dict[str, list[str]]:
        return dict(zip(IN_DISTRIBUTION, (self.eval_questions, self.betley_questions)))

    @property
    def marker_question_sets(self) -> dict[str, list[str]]:
        """What the marker sweep asks every persona: the eval set's questions, then each further set's (their indices
        follow the 28, so an in-distribution question keeps its index)."""
        return {**self.question_sets, **self.extra_sets}

    @property
    def marker_questions(self) -> list[str]:
        return [q for qs in self.marker_question_sets.values() for q in qs]

    @classmethod
    def load(cls, study: Study) -> "EvalSet":
        """Read the study's eval set (md5-checked against the study file before it is parsed) and coupling questions;
        every problem is a DataError naming the file and the field."""
        p = study.path(study.eval_set)
        check_md5(p, study.eval_set_md5, f"eval_set_md5 of {study.file}")
        data = read_json(p, "eval set")
        if not isinstance(data, dict):
            raise DataError(f"{p}: expected a JSON object with fields personas, persona_order, eval_questions, "
                            f"betley_questions")
        for field in ("personas", "persona_order", "eval_questions", "betley_questions"):
            if field not in data:
                raise DataError(f"{p}: missing field {field!r}")
        prompts = data["personas"]
        if not isinstance(prompts, dict) or not prompts:
            raise DataError(f"{p}: field 'personas' must be a non-empty object (persona -> system prompt or null)")
        for name, prompt in prompts.items():
            if prompt is not None and not isinstance(prompt, str):
                raise DataError(f"{p}: field 'personas.{name}' must be a string (the system prompt) or null")
        order = _strings(p, data, "persona_order")
        for i, name in enumerate(order):
            if name not in prompts:
                raise DataError(f"{p}: field 'persona_order[{i}]': {name!r} is not in 'personas'")
        if len(set(order)) != len(order):
            raise DataError(f"{p}: field 'persona_order' names a persona twice")
        for field, persona in named_personas(study).items():
            if persona not in order:
                raise DataError(f"{p}: field 'persona_order' has no {persona!r}, which the study names ({field} in "
                                f"{study.file}); personas: {', '.join(order)}")
        cq = study.path(study.coupling_questions)
        dq = read_json(cq, "coupling questions file")
        if not isinstance(dq, dict) or "data_questions" not in dq:
            raise DataError(f"{cq}: missing field 'data_questions'")
        extra = {}
        for name, spec in study.eval_sets.items():
            f = study.path(spec.path)
            check_md5(f, spec.md5, f"eval_sets.{name}.md5 of {study.file}")
            d = read_json(f, f"eval set {name!r}")
            if not isinstance(d, dict) or "questions" not in d:
                raise DataError(f"{f}: expected a JSON object with the field 'questions' (eval_sets.{name})")
            extra[name] = _strings(f, d, "questions")
        return cls(prompts, order, _strings(p, data, "eval_questions"), _strings(p, data, "betley_questions"),
                   _strings(cq, dq, "data_questions"), extra)


def _strings(path: Path, data: dict, field: str) -> list[str]:
    v = data[field]
    if not isinstance(v, list) or not v:
        raise DataError(f"{path}: field {field!r} must be a non-empty list")
    for i, x in enumerate(v):
        if not isinstance(x, str) or not x.strip():
            raise DataError(f"{path}: field '{field}[{i}]' must be a non-empty string")
    return v
