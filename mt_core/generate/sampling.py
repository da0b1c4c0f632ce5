"""What a sampler is and what it returns, shared by both generation engines (transformers and vLLM).

``SamplingSpec`` carries the whole sampler (n, temperature, top_p, top_k, repetition penalty, max_tokens, seed); nothing
is inherited silently from a model's generation_config (the reference's alignment sampler was, by accident). Prompts
are rendered and tokenized the same way for both engines, and both stop on the same end-of-turn tokens.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingSpec:
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    top_k: int | None = None
    repetition_penalty: float | None = None

    @classmethod
    def from_config(cls, sampler, seed: int) -> "SamplingSpec":
        return cls(n=sampler.n, temperature=sampler.temperature, top_p=sampler.top_p, max_tokens=sampler.max_tokens,
                   seed=seed if sampler.seed is None else sampler.seed, top_k=sampler.top_k,
                   repetition_penalty=sampler.repetition_penalty)


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int
    finish_reason: str  # "stop" or "length"


def eos_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id] or [tokenizer.eos_token_id]


def encode_chats(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Prompt token ids: the chat template with the generation prompt, no extra special tokens (both backends)."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
