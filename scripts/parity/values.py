"""Our value of a parameter, read from the loaded study or from the code that holds it (a constant the code imports,
a pin in pyproject.toml): each function takes the study, or returns a function that does."""
from __future__ import annotations

import inspect
import json
import math
import tomllib
from typing import Any, Callable

from mt_core.config import PROJECT_ROOT, Study

PYPROJECT = PROJECT_ROOT / "pyproject.toml"  # our library pins


def recipe(stage: str, field: str) -> Callable[[Study], Any]:
    return lambda s: getattr(s.recipes[stage], field)


def sampler(name: str, field: str) -> Callable[[Study], Any]:
    return lambda s: getattr(getattr(s.samplers, name), field)


def gate(name: str, field: str) -> Callable[[Study], Any]:
    return lambda s: getattr(s.gates.named()[name], field)


def seed_or_cell(v: int | None) -> Any:
    return "cell seed" if v is None else v


def study_json(s: Study, rel: str) -> Any:
    return json.loads(s.path(rel).read_text())


def coupling_examples(s: Study) -> int:
    n_q = len(study_json(s, s.coupling_questions)["data_questions"])
    return n_q * s.coupling_data.positives_per_question * (1 + s.coupling_data.n_negative_personas)


def optimizer_steps(s: Study, stage: str, n_examples: int) -> int:
    r = s.recipes[stage]
    return math.ceil(n_examples / r.effective_batch) * r.epochs


def arc_rows(s: Study) -> int:
    n = sum(1 for line in s.path(s.arc.path).read_text().splitlines() if line.strip())
    return n if s.arc.limit is None else min(n, s.arc.limit)


def judge_sha(s: Study) -> str:
    from mt_core.evals.judge import load_judge_prompt

    return load_judge_prompt(s.path(s.judge_prompt)).sha256


def judge_retries(s: Study) -> int:
    from mt_core.evals.judge import AnthropicJudge

    return inspect.signature(AnthropicJudge).parameters["max_retries"].default


def adamw(key: str) -> Callable[[Study], Any]:
    """AdamW's ``key`` as train_lora passes it to torch.optim.AdamW (mt_core.model.train.ADAMW)."""
    def ours(s: Study) -> Any:
        from mt_core.model import train

        return train.ADAMW[key]
    return ours


def pin(package: str) -> Callable[[Study], Any]:
    """Our version of ``package``: its ``==`` pin in pyproject.toml (dependencies or an optional extra)."""
    def ours(s: Study) -> Any:
        proj = tomllib.loads(PYPROJECT.read_text())["project"]
        extras = proj.get("optional-dependencies", {}).values()
        reqs = [*proj.get("dependencies", []), *(r for rs in extras for r in rs)]
        pins = {name.strip().lower(): ver.strip() for name, sep, ver in (r.partition("==") for r in reqs) if sep}
        return pins.get(package, "not pinned")
    return ours
