"""The transformers generation engine: the CPU path and the tiny profile's; one seeded sampler per call (``Sampler``),
every prompt of the call in its stream."""
from __future__ import annotations

import time
from typing import Callable

from mt_core.faults import failpoint
from mt_core.generate.sampling import Completion, SamplingSpec, encode_chats, eos_ids


def generation_config(spec: SamplingSpec, eos: list[int], pad_id: int, *, ignore_eos: bool = False):
    """What transformers' generate is asked for: greedy decoding over the scores ``Sampler`` leaves (a one-hot when
    sampling), the repetition penalty and lengths; one sequence per (repeated) prompt row."""
    from transformers import GenerationConfig

    # temperature, top-p and top-k at transformers' own defaults: unset, generate would take the model's (the tiny
    # model's 0.7 / 0.8 / 20) and then warn, on every call, that greedy decoding ignores them
    return GenerationConfig(
        do_sample=False, temperature=1.0, top_p=1.0, top_k=50,
        repetition_penalty=spec.repetition_penalty or 1.0,
        max_new_tokens=spec.max_tokens, min_new_tokens=spec.max_tokens if ignore_eos else None,
        eos_token_id=eos, pad_token_id=pad_id, num_return_sequences=1)


class Sampler:
    """Draws each next token itself and hands generate's greedy step a one-hot: the spec's temperature, top-k and
    top-p (transformers' own warpers, in generate's order, after the repetition penalty), then one uniform per row
    against the cumulative distribution. ``torch.multinomial`` draws one exponential per vocabulary entry instead: a
    quarter of the tiny profile's generation time on a CPU. Seeded by its own generator: no global RNG state."""

    def __init__(self, spec: SamplingSpec, device):
        import torch
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = ([TemperatureLogitsWarper(spec.temperature)] if spec.temperature != 1.0 else []) + \
                       ([TopKLogitsWarper(spec.top_k)] if spec.top_k else []) + \
                       ([TopPLogitsWarper(spec.top_p)] if spec.top_p < 1.0 else [])
        self.gen = torch.Generator(device=device).manual_seed(spec.seed)

    def __call__(self, input_ids, scores):
        import torch

        for w in self.warpers:
            scores = w(input_ids, scores)
        cdf = scores.float().softmax(-1).cumsum(-1)
        u = torch.rand(len(cdf), 1, generator=self.gen, device=cdf.device) * cdf[:, -1:]
        # right=True: the first entry whose cumulative mass exceeds u, never a token of zero probability
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        return torch.full_like(scores, -torch.inf).scatter_(1, pick, 0.0)


def left_padded(rows: list[list[int]], pad_id: int):
    """``rows`` of token ids as one batch (input ids, attention mask), padded on the left: every row's last token in
    the last column, where a decoder-only model generates from and reads its last state."""
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, x in enumerate(rows):
        ids[r, width - len(x):] = torch.tensor(x)
        mask[r, width - len(x):] = 1
    return ids, mask


def generate_ids(model, enc: list[list[int]], spec: SamplingSpec, *, eos: list[int], pad_id: int,
                 max_batch_rows: int = 256, ignore_eos: bool = False, log: Callable[[str], None] = print,
                 what: str = "generate") -> list[list[tuple[list[int], str]]]:
    """``spec.n`` continuations (new token ids, finish reason) per prompt, in prompt order."""
    import torch

    device = next(model.parameters()).device
    gcfg = generation_config(spec, eos, pad_id, ignore_eos=ignore_eos)
    stop = set(eos)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))  # similar lengths together: less padding
    per_batch = max(1, max_batch_rows // spec.n)
    out: list = [None] * len(enc)
    sampler = [Sampler(spec, device)] if spec.temperature > 0 else []
    t0, done, new_tokens = time.perf_counter(), 0, 0
    log(f"{what}: {len(enc)} prompts x n={spec.n}, max_tokens={spec.max_tokens}, T={spec.temperature}, "
        f"top_p={spec.top_p}, top_k={spec.top_k}, seed={spec.seed}, {per_batch} prompts per batch")
    every = max(1, len(enc) // 5)
    next_log = every
    for b in range(0, len(order), per_batch):
        idx = order[b : b + per_batch]
        ids, mask = left_padded([enc[i] for i in idx], pad_id)
        width = ids.shape[1]
        ids, mask = ids.repeat_interleave(spec.n, 0), mask.repeat_interleave(spec.n, 0)  # a prompt's n rows together
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gcfg,
                                 logits_processor=sampler)
        gen = gen[:, width:].tolist()
        for r, i in enumerate(idx):
            outs = []
            for seq in gen[r * spec.n : (r + 1) * spec.n]:
                cut = next((k for k, t in enumerate(seq) if t in stop), None)
                outs.append((seq, "length") if cut is None else (seq[:cut], "stop"))
                new_tokens += len(outs[-1][0])
            out[i] = outs
        done += len(idx)
        failpoint("generate")
        if done >= next_log or done == len(enc):
            el = time.perf_counter() - t0
            log(f"{what}: {done}/{len(enc)} prompts, {new_tokens / el:.0f} new tok/s, "
                f"eta {el / done * (len(enc) - done):.0f}s")
            next_log = done + every
    return out


def default_batch_rows(model) -> int:
    """Sequences decoded together: large on a GPU (a 7B model's KV cache leaves room for many), modest on a CPU."""
    return 1536 if next(model.parameters()).device.type == "cuda" else 256


def generate(model, tokenizer, prompts: list[list[dict]], spec: SamplingSpec, *, max_batch_rows: int | None = None,
             log: Callable[[str], None] = print, what: str = "generate") -> list[list[Completion]]:
    """``spec.n`` completions for each chat prompt, in prompt order."""
    max_batch_rows = max_batch_rows or default_batch_rows(model)
    enc = encode_chats(tokenizer, prompts)
    raw = generate_ids(model, enc, spec, eos=eos_ids(tokenizer), pad_id=tokenizer.pad_token_id,
                       max_batch_rows=max_batch_rows, log=log, what=what)
    return [[Completion(tokenizer.decode(ids, skip_special_tokens=True), len(ids), fin) for ids, fin in outs]
            for outs in raw]
