"""The marker eval set (11 personas, 28 questions) and the coupling questions, as one value the steps share."""
from __future__ import annotations

from dataclasses import dataclass

from mt_core.config import ConfigError, Study
from mt_core.io import check_md5, read_json


@dataclass(frozen=True)
class EvalSet:
    prompts: dict[str, str]  # persona -> system prompt
    personas: list[str]  # the order every table uses
    eval_questions: list[str]
    betley_questions: list[str]
    coupling_questions: list[str]  # the questions the coupling data is built from

    @property
    def questions(self) -> list[str]:
        """The marker eval's questions: eval, then Betley; a question's index is its place here."""
        return self.eval_questions + self.betley_questions

    @property
    def question_sets(self) -> dict[str, list[str]]:
        return {"eval": self.eval_questions, "betley": self.betley_questions}

    @classmethod
    def load(cls, study: Study) -> "EvalSet":
        """Read the study's eval set (md5-checked against the study file) and coupling questions."""
        p = study.path(study.eval_set)
        check_md5(p, study.eval_set_md5, "eval_set_md5", error=ConfigError)
        data = read_json(p)
        for field in ("personas", "persona_order", "eval_questions", "betley_questions"):
            if field not in data:
                raise ConfigError(f"{p}: missing field {field!r}")
        cq = study.path(study.coupling_questions)
        dq = read_json(cq).get("data_questions")
        if not isinstance(dq, list) or not dq:
            raise ConfigError(f"{cq}: field 'data_questions' must be a non-empty list")
        return cls(data["personas"], data["persona_order"], data["eval_questions"], data["betley_questions"], dq)
