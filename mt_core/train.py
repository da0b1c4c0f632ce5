"""LoRA fine-tuning, readable top to bottom.

The math is the reference's (HF Trainer + PEFT): AdamW (0.9, 0.999, eps 1e-8) with decoupled weight decay,
warmup = ceil(warmup_ratio x total steps) then linear or cosine decay to zero, gradient clipping, an effective batch of
per_device_batch x grad_accum examples, and a loss that is the mean over every trained token of the effective batch
(HF's ``num_items_in_batch`` normalisation). Data order is a seeded permutation per epoch; LoRA init is seeded.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from mt_core.chat import IGNORE, Example


@dataclass
class TrainResult:
    n_examples: int
    n_steps: int
    epochs: int
    effective_batch: int
    trained_tokens: int
    seconds: float
    seen_tokens: int = 0    # non-pad tokens through the model
    padded_tokens: int = 0  # tokens including padding
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    n_without_labels: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Non-pad tokens per second (the benchmark's 'trained tokens/s')."""
        return self.seen_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"n_examples": self.n_examples, "n_steps": self.n_steps, "epochs": self.epochs,
                "effective_batch": self.effective_batch, "trained_tokens": self.trained_tokens,
                "train_seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 1),
                "seen_tokens": self.seen_tokens, "padding_fraction": round(1 - self.seen_tokens / max(1, self.padded_tokens), 4),
                "final_loss": self.losses[-1] if self.losses else None,
                "mean_loss_last_10pct": _tail_mean(self.losses), "n_without_labels": self.n_without_labels}


def _tail_mean(xs: list[float]) -> float | None:
    if not xs:
        return None
    k = max(1, len(xs) // 10)
    return sum(xs[-k:]) / k


def lr_at(step: int, total: int, base_lr: float, warmup: int, kind: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based), as transformers' schedulers compute it."""
    if step < warmup:
        return base_lr * step / max(1, warmup)
    if kind == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return base_lr * max(0.0, 1.0 - progress)
    if kind == "cosine":
        return base_lr * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown scheduler {kind!r}")


def steps_per_epoch(n_examples: int, per_device_batch: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n_examples / per_device_batch) / grad_accum)


def collate(examples: list[Example], pad_id: int, device):
    """Right-pad a micro-batch; labels are padded with IGNORE."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def attach_lora(model, recipe, seed: int):
    """Wrap ``model`` in a fresh PEFT LoRA (seeded init) as the recipe says."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(task_type="CAUSAL_LM", r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                     lora_dropout=recipe.lora_dropout, target_modules=list(recipe.target_modules),
                     use_rslora=recipe.use_rslora, bias="none")
    return get_peft_model(model, cfg)


def plan_micro_batches(step: list[Example], per_device_batch: int, fast: bool, token_budget: int,
                       min_fill: float = 0.65) -> list[list[Example]]:
    """How one optimizer step's examples are split into forward passes; the gradient is the same either way.

    Reference: consecutive chunks of ``per_device_batch`` (the HF Trainer's 4 x 4; about 40% padding on chat-like
    lengths). Fast: longest first; an example joins the current pass while the pass fits ``token_budget`` padded
    tokens and the example is at least ``min_fill`` of the pass's width (about 15% padding in 3-4 passes a step).
    """
    if not fast:
        return [step[i : i + per_device_batch] for i in range(0, len(step), per_device_batch)]
    out: list[list[Example]] = []
    for e in sorted(step, key=lambda e: len(e.input_ids), reverse=True):
        width = len(out[-1][0].input_ids) if out else 0
        if out and (len(out[-1]) + 1) * width <= token_budget and len(e.input_ids) >= min_fill * width:
            out[-1].append(e)
        else:
            out.append([e])
    return out


def _token_loss_full(model, ids, labels, mask):
    """Reference-style loss: logits at every position, padding mask passed (as the HF Trainer does)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")


def _token_loss_at_labels(model, ids, labels):
    """Fast loss: right padding needs no mask under causal attention; the lm_head runs only where labels are."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = base.get_decoder()(input_ids=ids).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = base.get_output_embeddings()(h[keep])
    return F.cross_entropy(logits.float(), target[keep], reduction="sum")


def train_lora(model, examples: list[Example], recipe, *, seed: int, pad_id: int,
               log: Callable[[str], None] = print, progress: Callable[[dict], None] | None = None,
               fast: bool = False, token_budget: int = 16384, checkpointing: bool = False,
               max_steps: int | None = None) -> tuple[object, TrainResult]:
    """Train a LoRA on ``examples``; returns (peft_model, result). ``model`` must already be on its device.

    ``fast`` keeps the math (data order, effective batch, loss normalisation, schedule) and changes only how a step
    is computed: large length-sorted passes, no padding mask, the lm_head and cross-entropy at label positions only.
    ``checkpointing`` turns on gradient checkpointing (the reference recipe); ``max_steps`` stops early (benchmarks).
    """
    import contextlib

    import torch

    device = next(model.parameters()).device
    peft_model = attach_lora(model, recipe, seed)
    if checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=recipe.weight_decay,
                            fused=device.type == "cuda")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext

    n = len(examples)
    bs, ga = recipe.per_device_batch, recipe.grad_accum
    per_epoch = steps_per_epoch(n, bs, ga)
    total = per_epoch * recipe.epochs
    warmup = math.ceil(recipe.warmup_ratio * total)
    gen = torch.Generator().manual_seed(seed)
    res = TrainResult(n_examples=n, n_steps=total, epochs=recipe.epochs, effective_batch=bs * ga,
                      trained_tokens=0, seconds=0.0, n_without_labels=sum(1 for e in examples if e.n_trained == 0))
    log(f"train: {n} examples, {recipe.epochs} epoch(s), {total} steps of {bs}x{ga}, lr {recipe.lr:g} "
        f"({recipe.scheduler}, warmup {warmup}), LoRA r={recipe.lora_r} alpha={recipe.lora_alpha:g}"
        f"{' rsLoRA' if recipe.use_rslora else ''}, loss={recipe.loss}, {'fast' if fast else 'reference'} path")
    every = max(1, total // 10)
    t0 = time.perf_counter()
    step = 0
    for _epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for s in range(per_epoch):
            step_examples = [examples[i] for i in order[s * bs * ga : (s + 1) * bs * ga]]
            n_tok = sum(e.n_trained for e in step_examples)
            lr = lr_at(step, total, recipe.lr, warmup, recipe.scheduler)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for mb in plan_micro_batches(step_examples, bs, fast, token_budget):
                ids, labels, mask = collate(mb, pad_id, device)
                with autocast():
                    tok_loss = (_token_loss_at_labels(peft_model, ids, labels) if fast
                                else _token_loss_full(peft_model, ids, labels, mask))
                (tok_loss / max(1, n_tok)).backward()
                loss_sum += tok_loss.detach()
                res.seen_tokens += int(mask.sum())
                res.padded_tokens += mask.numel()
            torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            res.trained_tokens += n_tok
            res.losses.append(loss_sum.item() / max(1, n_tok))
            res.lrs.append(lr)
            step += 1
            if step % every == 0 or step == total or step == max_steps:
                el = time.perf_counter() - t0
                info = {"step": step, "total": total, "loss": res.losses[-1], "lr": lr,
                        "tok_s": res.seen_tokens / el, "eta_s": el / step * (total - step)}
                log(f"train step {step}/{total} loss {info['loss']:.4f} lr {lr:.2e} "
                    f"{info['tok_s']:.0f} tok/s eta {info['eta_s']:.0f}s")
                if progress:
                    progress(info)
            if step == max_steps:
                break
        if step == max_steps:
            break
    res.seconds = time.perf_counter() - t0
    if checkpointing:
        peft_model.gradient_checkpointing_disable()
        peft_model.disable_input_require_grads()
    peft_model.eval()
    return peft_model, res
