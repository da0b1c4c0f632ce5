"""The judge as a resource: the offline stand-in for the tiny profile, Claude for real studies.

A code location serving several studies has one ``judge`` resource; each asset asks it for its own study's judge
(``bind``): kind, prompt file, model, max_tokens and concurrency come from that study, answers are cached in that
study's ``ArtifactStore.state_dir`` (its artefact root; this host's $MT_CACHE for an object store root). Fields set
on the resource itself override the study's (tests point ``base_url`` at a fake).
"""
from __future__ import annotations

import dagster as dg

from mt_core.config import Study
from mt_core.layout import JUDGE_CACHE
from mt_settings import secret


class JudgeResource(dg.ConfigurableResource):
    kind: str | None = None  # "offline" or "anthropic"; None: the study's
    prompt_path: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    concurrency: int | None = None
    base_url: str | None = None
    cache_path: str | None = None

    @classmethod
    def for_study(cls, study: Study, root) -> "JudgeResource":
        """The study's judge: its kind, prompt file, model, max_tokens and concurrency; answers cached in ``root``."""
        j = study.judge
        return cls(kind=j.kind, prompt_path=str(study.path(study.judge_prompt)), model=j.model,
                   max_tokens=j.max_tokens, concurrency=j.concurrency, cache_path=str(root / JUDGE_CACHE))

    def bind(self, study: Study, root) -> "JudgeResource":
        """This resource bound to ``study``: the study's judge, with the fields set here overriding it."""
        own = {k: v for k, v in self.model_dump().items() if v is not None}
        return JudgeResource(**{**JudgeResource.for_study(study, root).model_dump(), **own})

    def client(self, log=print):
        from mt_core.evals import judge

        if self.kind is None or self.model is None:
            raise dg.Failure("the judge resource is not bound to a study (JudgeResource.bind)")
        if self.kind == "offline":
            return judge.OfflineJudge()
        prompt = judge.load_judge_prompt(self.prompt_path)
        prompt = judge.JudgePrompt(prompt.system_prompt, prompt.user_template, self.model, self.max_tokens)
        cache = judge.JudgeCache(self.cache_path) if self.cache_path else None
        return judge.AnthropicJudge(prompt, api_key=secret("ANTHROPIC_API_KEY"),  # read where used
                                    base_url=self.base_url, concurrency=self.concurrency, cache=cache, log=log)
