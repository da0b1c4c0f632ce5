"""The judge as a resource: the offline stand-in for the tiny profile, Claude for real studies."""
from __future__ import annotations

import dagster as dg

from mt_core.config import Study
from mt_core.layout import JUDGE_CACHE


class JudgeResource(dg.ConfigurableResource):
    kind: str = "offline"  # "offline" or "anthropic"
    prompt_path: str
    model: str
    max_tokens: int
    concurrency: int = 20
    base_url: str | None = None
    cache_path: str | None = None

    @classmethod
    def for_study(cls, study: Study, root) -> "JudgeResource":
        """The study's judge: its kind, prompt file, model, max_tokens and concurrency; answers cached in ``root``."""
        j = study.judge
        return cls(kind=j.kind, prompt_path=str(study.path(study.judge_prompt)), model=j.model,
                   max_tokens=j.max_tokens, concurrency=j.concurrency, cache_path=str(root / JUDGE_CACHE))

    def client(self, log=print):
        from mt_core.evals import judge

        if self.kind == "offline":
            return judge.OfflineJudge()
        prompt = judge.load_judge_prompt(self.prompt_path)
        prompt = judge.JudgePrompt(prompt.system_prompt, prompt.user_template, self.model, self.max_tokens)
        cache = judge.JudgeCache(self.cache_path) if self.cache_path else None
        return judge.AnthropicJudge(prompt, base_url=self.base_url, concurrency=self.concurrency, cache=cache, log=log)
