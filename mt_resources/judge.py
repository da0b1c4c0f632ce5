"""The judge as a resource: the offline stand-in for the tiny profile, Claude for real studies."""
from __future__ import annotations

import dagster as dg

from mt_core.config import PROJECT_ROOT


class JudgeResource(dg.ConfigurableResource):
    kind: str = "offline"  # "offline" or "anthropic"
    prompt_path: str = str(PROJECT_ROOT / "reference" / "judge_prompts.json")
    model: str | None = None
    concurrency: int = 20
    base_url: str | None = None
    cache_path: str | None = None

    def client(self, log=print):
        from mt_core import judge

        if self.kind == "offline":
            return judge.OfflineJudge()
        prompt = judge.load_judge_prompt(self.prompt_path)
        if self.model:
            prompt = judge.JudgePrompt(prompt.system_prompt, prompt.user_template, self.model, prompt.max_tokens)
        cache = judge.JudgeCache(self.cache_path) if self.cache_path else None
        return judge.AnthropicJudge(prompt, base_url=self.base_url, concurrency=self.concurrency, cache=cache, log=log)
