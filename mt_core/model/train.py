"""LoRA fine-tuning, readable top to bottom.

The math is the reference's (HF Trainer + PEFT): AdamW (0.9, 0.999, eps 1e-8) with decoupled weight decay,
warmup = ceil(warmup_ratio x total steps) then linear or cosine decay to zero, gradient clipping, an effective batch of
per_device_batch x grad_accum examples, and a loss that is the mean over every trained token of the effective batch
(HF's ``num_items_in_batch`` normalisation). Data order is a seeded permutation per epoch; LoRA init is seeded.

How a step is computed is ``recipe.speed`` (none of it changes the math):
  packing    true: a step's examples packed into a few rows without padding, lm_head + cross-entropy only at the
             positions that predict a target; false: padded micro-batches of per_device_batch, logits everywhere
             (the HF Trainer's way).
  attention  for packed rows: "mask" (block-diagonal causal mask), "varlen" (one row, flash variable-length
             attention), "varlen_reference" (the same, example by example, any device), "auto".
  compile    regional torch.compile of the decoder layers and the head loss ("auto": with packing on CUDA).
  token_budget, row_tokens (the mask path's row width), gradient_checkpointing.
The model changes these need for the length of a training live in ``mt_core.model.kernels``.

Reading order: the result record, the schedule, the data layouts (padded, packed), the two losses, the step function,
``train_lora``.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from mt_core.data.chat import IGNORE, Example
from mt_core.faults import failpoint
from mt_core.model.kernels import base_model, resolve_speed, speed_context, varlen_decoder_forward


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

    def record(self) -> dict:
        """What the training did, without timings: the same training records the same bytes (artefact files)."""
        return {"n_examples": self.n_examples, "n_steps": self.n_steps, "epochs": self.epochs,
                "effective_batch": self.effective_batch, "trained_tokens": self.trained_tokens,
                "seen_tokens": self.seen_tokens,
                "padding_fraction": round(1 - self.seen_tokens / max(1, self.padded_tokens), 4),
                "final_loss": self.losses[-1] if self.losses else None,
                "mean_loss_last_10pct": _tail_mean(self.losses), "n_without_labels": self.n_without_labels}

    def summary(self) -> dict:
        """``record()`` and how fast it went (Dagster metadata and W&B)."""
        return {**self.record(), "train_seconds": round(self.seconds, 3), "tokens_per_s": round(self.tokens_per_s, 1)}


def _tail_mean(xs: list[float]) -> float | None:
    if not xs:
        return None
    k = max(1, len(xs) // 10)
    return sum(xs[-k:]) / k


# --- schedule -----------------------------------------------------------------------------------------------------
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8}  # HF TrainingArguments' defaults, which the reference kept


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


def step_tokens(step: list[Example]) -> int:
    """The loss denominator of one optimizer step: the trained tokens of ALL its examples (every micro-batch), the HF
    Trainer's ``num_items_in_batch``; each micro-batch's summed token loss is divided by it, not by its own count."""
    return sum(e.n_trained for e in step)


def steps_per_epoch(n_examples: int, per_device_batch: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n_examples / per_device_batch) / grad_accum)


def optimizer_steps(examples: list[Example], recipe, seed: int) -> list[list[Example]]:
    """Every optimizer step's examples, in order: per epoch a permutation seeded with ``seed + epoch`` (the HF Trainer's
    and TRL's sampler, accelerate's SeedableRandomSampler), cut into effective batches (the last may be short)."""
    import torch

    n, eff = len(examples), recipe.per_device_batch * recipe.grad_accum
    per_epoch = steps_per_epoch(n, recipe.per_device_batch, recipe.grad_accum)
    steps = []
    for epoch in range(recipe.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        steps += [[examples[i] for i in order[s * eff : (s + 1) * eff]] for s in range(per_epoch)]
    return steps


# --- data layouts: padded micro-batches, packed rows ---------------------------------------------------------------
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


def plan_micro_batches(step: list[Example], per_device_batch: int, packing: bool,
                       token_budget: int) -> list[list[Example]]:
    """How one optimizer step's examples are split into forward passes; the gradient is the same either way.

    Padded: consecutive chunks of ``per_device_batch`` (the HF Trainer's micro-batches). Packed: consecutive
    examples packed into one row while the row stays within ``token_budget`` tokens (no padding at all; usually one
    pass a step, which matters because a 7B LoRA step is bound by kernel launches).
    """
    if not packing:
        return [step[i : i + per_device_batch] for i in range(0, len(step), per_device_batch)]
    out: list[list[Example]] = []
    used = 0
    for e in step:
        if out and used + len(e.input_ids) <= token_budget:
            out[-1].append(e)
            used += len(e.input_ids)
        else:
            out.append([e])
            used = len(e.input_ids)
    return out


class Packed(NamedTuple):
    """One packed forward pass: rows of concatenated examples and where their targets are."""
    ids: object     # (rows, width) token ids
    labels: object  # (rows, width) targets aligned with ids (IGNORE where none), for inspection and tests
    pos: object     # (rows, width) per-example positions
    mask: object    # (rows, 1, width, width) block-diagonal causal mask
    n_real: int     # tokens that are not padding
    idx: object     # (n_targets,) flat index into (rows * width) of each hidden state that predicts a target
    tgt: object     # (n_targets,) the target token of each
    cu: object = None   # varlen layout only: (n_examples + 1,) int32 example boundaries in the single row
    max_len: int = 0    # varlen layout only: the longest example


def collate_packed(examples: list[Example], device, row_tokens: int = 1536, varlen: bool = False) -> Packed:
    """Pack examples into a few rows of about ``row_tokens`` tokens, with per-example positions and a block-diagonal
    causal mask (built on the device); or, with ``varlen``, into one row with example boundaries and no mask, for
    variable-length attention (which computes only the blocks on the diagonal).

    Longest first into the shortest row, so rows come out nearly equal and padding is a few tokens; several short
    rows instead of one long one cut the masked attention's quadratic cost. Padding attends only to itself and is
    never a target. The first token of each example is never a target either (unpacked, position 0 predicts
    nothing), so no example learns from its neighbour. Target positions are found here, on the host, so the loss
    needs no data-dependent indexing (and no device synchronisation).
    """
    import torch

    n_rows = 1 if varlen else max(1, min(len(examples), round(sum(len(e.input_ids) for e in examples) / row_tokens)))
    rows: list[list[Example]] = [[] for _ in range(n_rows)]
    sizes = [0] * n_rows
    for e in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        r = sizes.index(min(sizes))
        rows[r].append(e)
        sizes[r] += len(e.input_ids)
    width = max(sizes)
    ids = torch.zeros((n_rows, width), dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    doc = torch.full((n_rows, width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        off = 0
        for k, e in enumerate(row):
            n = len(e.input_ids)
            ids[r, off : off + n] = torch.tensor(e.input_ids)
            labels[r, off + 1 : off + n] = torch.tensor(e.labels[1:])
            pos[r, off : off + n] = torch.arange(n)
            doc[r, off : off + n] = k
            off += n
    nxt = labels[:, 1:]
    row_i, col_i = (nxt != IGNORE).nonzero(as_tuple=True)  # hidden state (r, c) predicts labels[r, c + 1]
    idx, tgt = row_i * width + col_i, nxt[row_i, col_i]
    if varlen:
        lens = [len(e.input_ids) for e in rows[0]]
        cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
        ids, pos, idx, tgt, cu = (_to(t, device) for t in (ids, pos, idx, tgt, cu))
        return Packed(ids, labels, pos, None, width, idx, tgt, cu, max(lens))
    ids, pos, doc, idx, tgt = (_to(t, device) for t in (ids, pos, doc, idx, tgt))
    at = torch.arange(width, device=device)
    same = (doc[:, :, None] == doc[:, None, :]) & (doc[:, :, None] >= 0)
    mask = (same & (at[:, None] >= at[None, :])) | torch.eye(width, dtype=torch.bool, device=device)
    return Packed(ids, labels, pos, mask[:, None], int(sum(sizes)), idx, tgt)


def _to(t, device):
    """Host-to-device without a hidden synchronisation: pinned memory and a non-blocking copy on CUDA."""
    return t.pin_memory().to(device, non_blocking=True) if getattr(device, "type", device) == "cuda" else t


# --- model and losses ----------------------------------------------------------------------------------------------
def attach_lora(model, recipe, seed: int):
    """Wrap ``model`` in a fresh PEFT LoRA (seeded init) as the recipe says."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(task_type="CAUSAL_LM", r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                     lora_dropout=recipe.lora_dropout, target_modules=list(recipe.target_modules),
                     use_rslora=recipe.use_rslora, bias="none")
    return get_peft_model(model, cfg)


def head_loss(h, weight, tgt):
    """Summed cross-entropy of the lm_head at the given hidden states (fp32 softmax, as the reference)."""
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(h, weight).float(), tgt, reduction="sum")


def _padded_loss(model, ids, labels, mask):
    """Summed token loss of a padded micro-batch: logits at every position, padding mask passed (as the HF Trainer)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")


def _packed_loss(model, b: Packed, loss_fn=head_loss):
    """Summed token loss of packed rows: the lm_head and cross-entropy run only at the hidden states that predict a
    target."""
    base = base_model(model)
    dec = base.get_decoder()
    if b.cu is None:  # rows with a block-diagonal mask: the decoder's own forward
        h = dec(input_ids=b.ids, position_ids=b.pos, attention_mask=b.mask).last_hidden_state
    else:  # one row with example boundaries: the decoder's loop, the boundaries passed to the varlen attention
        h = varlen_decoder_forward(dec, b.ids, b.pos, b.cu, b.max_len)
    return loss_fn(h.flatten(0, 1).index_select(0, b.idx), base.get_output_embeddings().weight, b.tgt)


# --- one optimizer step's forward and backward ---------------------------------------------------------------------
def make_step_fn(peft_model, recipe, speed, device, pad_id: int, loss_fn):
    """The function that runs forward + backward over one optimizer step's examples, for the path ``speed`` chose.

    ``step_fn(examples, n_tok)`` accumulates in ``.grad`` the gradient of the mean loss over the step's ``n_tok``
    trained tokens and returns (summed token loss, a 0-d tensor on the device; real tokens; tokens incl. padding).
    """
    import torch

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    varlen = speed.attention != "mask"

    def packed_forward(mb):  # one packed forward pass: (summed token loss, real tokens, tokens incl. padding)
        b = collate_packed(mb, device, row_tokens=speed.row_tokens, varlen=varlen)
        with autocast():
            return _packed_loss(peft_model, b, loss_fn), b.n_real, b.ids.numel()

    def padded_forward(mb):  # one padded forward pass, the same three
        ids, labels, mask = collate(mb, pad_id, device)
        with autocast():
            return _padded_loss(peft_model, ids, labels, mask), sum(len(e.input_ids) for e in mb), mask.numel()

    forward = packed_forward if speed.packing else padded_forward

    def step_fn(examples: list[Example], n_tok: int):
        loss_sum, n_real, n_padded = torch.zeros((), device=device), 0, 0
        for mb in plan_micro_batches(examples, recipe.per_device_batch, speed.packing, speed.token_budget):
            tok_loss, real, padded = forward(mb)
            (tok_loss / max(1, n_tok)).backward()
            loss_sum += tok_loss.detach()  # stays on the device: no sync
            n_real, n_padded = n_real + real, n_padded + padded
        return loss_sum, n_real, n_padded

    return step_fn


# --- training -----------------------------------------------------------------------------------------------------
def train_lora(model, examples: list[Example], recipe, *, seed: int, pad_id: int,
               log: Callable[[str], None] = print, on_step: Callable[[dict], None] | None = None,
               max_steps: int | None = None) -> tuple[object, TrainResult]:
    """Train a LoRA on ``examples``; returns (peft_model, result). ``model`` must already be on its device.

    How a step is computed is ``recipe.speed`` (see the module docstring); the compile time of ``compile`` is in the
    result's ``seconds``. ``on_step`` gets {step, loss, lr, tokens} after every optimizer step (its loss costs a
    device sync per step). ``max_steps`` stops early (the schedule stays that of the full run).
    """
    import torch

    device = next(model.parameters()).device
    # "auto" made concrete; an unsupported choice fails here, before the LoRA is attached
    speed = resolve_speed(recipe.speed, model, device)

    # the schedule and every step's examples, up front
    n, bs, ga = len(examples), recipe.per_device_batch, recipe.grad_accum
    total = steps_per_epoch(n, bs, ga) * recipe.epochs
    warmup = math.ceil(recipe.warmup_ratio * total)
    steps = optimizer_steps(examples, recipe, seed)[:max_steps]

    # a fresh LoRA and AdamW over its parameters
    peft_model = attach_lora(model, recipe, seed)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, **ADAMW, weight_decay=recipe.weight_decay,
                            fused=device.type == "cuda")

    res = TrainResult(n_examples=n, n_steps=total, epochs=recipe.epochs, effective_batch=bs * ga,
                      trained_tokens=0, seconds=0.0, n_without_labels=sum(1 for e in examples if e.n_trained == 0))
    log(f"train: {n} examples, {recipe.epochs} epoch(s), {total} steps of {bs}x{ga}, lr {recipe.lr:g} "
        f"({recipe.scheduler}, warmup {warmup}), LoRA r={recipe.lora_r} alpha={recipe.lora_alpha:g}"
        f"{' rsLoRA' if recipe.use_rslora else ''}, loss={recipe.loss}, {'packed' if speed.packing else 'padded'} path")
    every = max(1, total // 10)

    # the speed changes to the model, undone on exit (also when training raises)
    with speed_context(peft_model, speed, device, log, head_loss) as loss_fn:
        step_fn = make_step_fn(peft_model, recipe, speed, device, pad_id, loss_fn)
        t0 = time.perf_counter()
        step_losses = []
        for step, batch in enumerate(steps, 1):
            # learning rate of this step
            lr = lr_at(step - 1, total, recipe.lr, warmup, recipe.scheduler)
            for g in opt.param_groups:
                g["lr"] = lr
            # fresh gradients, then forward + backward over the step's examples
            opt.zero_grad(set_to_none=True)
            n_tok = step_tokens(batch)
            loss_sum, n_real, n_padded = step_fn(batch, n_tok)
            # clip and update
            torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            opt.step()
            failpoint("train")
            # record (the loss stays on the device: no sync between steps)
            step_losses.append(loss_sum / max(1, n_tok))
            res.lrs.append(lr)
            res.trained_tokens += n_tok
            res.seen_tokens += n_real
            res.padded_tokens += n_padded
            if on_step:  # sync: .item() waits for this step to finish
                on_step({"step": step, "loss": step_losses[-1].item(), "lr": lr, "tokens": n_tok})
            if step % every == 0 or step == len(steps):  # sync: .item(), about ten times a training
                el = time.perf_counter() - t0
                log(f"train step {step}/{total} loss {step_losses[-1].item():.4f} lr {lr:.2e} "
                    f"{res.seen_tokens / el:.0f} tok/s eta {el / step * (len(steps) - step):.0f}s")
        res.losses = torch.stack(step_losses).tolist() if step_losses else []  # sync: waits for the last step
        res.seconds = time.perf_counter() - t0
    peft_model.eval()
    return peft_model, res
