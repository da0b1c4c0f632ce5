"""LoRA fine-tuning, readable top to bottom.

The math is the reference's (HF Trainer + PEFT): AdamW (0.9, 0.999, eps 1e-8) with decoupled weight decay,
warmup = ceil(warmup_ratio x total steps) then linear or cosine decay to zero, gradient clipping, an effective batch of
per_device_batch x grad_accum examples, and a loss that is the mean over every trained token of the effective batch
(HF's ``num_items_in_batch`` normalisation). Data order is a seeded permutation per epoch; LoRA init is seeded.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

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


def plan_micro_batches(step: list[Example], per_device_batch: int, fast: bool,
                       token_budget: int) -> list[list[Example]]:
    """How one optimizer step's examples are split into forward passes; the gradient is the same either way.

    Reference: consecutive chunks of ``per_device_batch`` (the HF Trainer's 4 x 4; about 40% padding on chat-like
    lengths). Fast: consecutive examples packed into one row while the row stays within ``token_budget`` tokens
    (no padding at all; usually one pass a step, which matters because a 7B LoRA step is bound by kernel launches).
    """
    if not fast:
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


def _token_loss_full(model, ids, labels, mask):
    """Reference-style loss: logits at every position, padding mask passed (as the HF Trainer does)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                           reduction="sum")


def _base(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_loss(h, weight, tgt):
    """Summed cross-entropy of the lm_head at the given hidden states (fp32 softmax, as the reference)."""
    import torch.nn.functional as F

    return F.cross_entropy(F.linear(h, weight).float(), tgt, reduction="sum")


def _token_loss_at_labels(model, b: Packed, loss_fn=head_loss):
    """Fast loss on packed rows: the lm_head and cross-entropy run only at the hidden states that predict a target."""
    base = _base(model)
    dec = base.get_decoder()
    if b.cu is None:
        h = dec(input_ids=b.ids, position_ids=b.pos, attention_mask=b.mask).last_hidden_state
    else:  # the decoder's own loop (embed, rotary, layers, norm), with the boundaries passed to the attention
        h = dec.embed_tokens(b.ids)
        rope = dec.rotary_emb(h, b.pos)
        for layer in dec.layers:
            h = layer(h, attention_mask=None, position_ids=b.pos, position_embeddings=rope, mt_cu=b.cu,
                      mt_max_len=b.max_len)
        h = dec.norm(h)
    return loss_fn(h.flatten(0, 1).index_select(0, b.idx), base.get_output_embeddings().weight, b.tgt)


# --- variable-length attention for the varlen layout ------------------------------------------------------------
VARLEN = "mt_varlen"  # the attention implementation's name while a varlen training runs
# decoders whose forward is exactly embed -> rotary -> layers -> norm, which the varlen loop above repeats
# (Gemma, for one, scales its embeddings first, so it keeps the mask path)
VARLEN_DECODERS = ("Qwen2Model", "Qwen3Model", "LlamaModel", "MistralModel")


def varlen_supported(model) -> bool:
    return type(_base(model).get_decoder()).__name__ in VARLEN_DECODERS


def varlen_kernel():
    """PyTorch's flash varlen attention (CUDA), or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_reference(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, **_):
    """The same attention example by example with causal SDPA (any device): what the kernel must equal."""
    import torch
    import torch.nn.functional as F

    out = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        out.append(F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                  v[a:b].transpose(0, 1), is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(out)


def _varlen_attention(kernel):
    """An attention function for transformers' AttentionInterface: (1, H, T, D) q/k/v of one packed row, causal
    within each example's [cu[i], cu[i+1]) span; returns (1, T, H, D) as transformers expects."""
    import inspect

    params = inspect.signature(kernel).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, mt_cu=None, mt_max_len=0,
               **_):
        q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (query, key, value))  # (T, H, D)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: share each key/value head
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = kernel(q, k, v, mt_cu, mt_cu, mt_max_len, mt_max_len, scale=scaling, **causal)
        return out.unsqueeze(0), None

    return attend


class _Varlen:
    """Switch a model's attention to ``_varlen_attention(kernel)`` for the length of a training."""

    def __init__(self, peft_model, kernel):
        from transformers import AttentionInterface

        AttentionInterface.register(VARLEN, _varlen_attention(kernel))
        self.config = _base(peft_model).config
        self.old = self.config._attn_implementation
        self.config._attn_implementation = VARLEN

    def undo(self):
        self.config._attn_implementation = self.old


class _Compiled:
    """Regional ``torch.compile`` for training, undone afterwards: every decoder layer runs one compiled graph
    (the layers share code, so it is compiled once, with dynamic shapes, for every packed width), and so does the
    head loss. This fuses PEFT's per-module dropout / scale / add, the norms, rotary and SiLU into a few kernels and
    removes the Python overhead of ~200 LoRA modules per pass, which is what bounds an eager 7B LoRA step."""

    def __init__(self, peft_model):
        import torch

        self.layers = list(_base(peft_model).get_decoder().layers)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for layer in self.layers:
            layer.compile(dynamic=True)
        self.loss_fn = torch.compile(head_loss, dynamic=True)

    def undo(self):
        for layer in self.layers:
            layer._compiled_call_impl = None


def train_lora(model, examples: list[Example], recipe, *, seed: int, pad_id: int,
               log: Callable[[str], None] = print, progress: Callable[[dict], None] | None = None,
               fast: bool = False, token_budget: int = 6144, checkpointing: bool = False,
               max_steps: int | None = None, compile: bool | None = None, attention: str | None = None,
               on_step: Callable[[dict], None] | None = None) -> tuple[object, TrainResult]:
    """Train a LoRA on ``examples``; returns (peft_model, result). ``model`` must already be on its device.

    ``fast`` keeps the math (data order, effective batch, loss normalisation, schedule) and changes only how a step
    is computed: examples packed into rows of up to ``token_budget`` tokens (no padding, block-diagonal causal
    attention, per-example positions), the lm_head and cross-entropy at label positions only.
    ``checkpointing`` turns on gradient checkpointing (the reference recipe); ``max_steps`` stops early (benchmarks).
    ``compile`` (fast path only; default: on CUDA) runs the decoder layers and the head loss through regional
    ``torch.compile`` for the length of the training (see ``_Compiled``); its one-off compile time is in ``seconds``.
    ``attention`` (fast path only): "mask" (rows with a block-diagonal mask, SDPA), "varlen" (one row, flash
    variable-length attention; the default on CUDA where torch has it) or "varlen_reference" (one row, the same
    attention example by example: what tests use on CPU).
    ``on_step`` gets {step, loss, lr, tokens} after every optimizer step (its loss costs a device sync per step).
    """
    import contextlib

    import torch

    device = next(model.parameters()).device
    if attention is None:
        attention = "varlen" if fast and device.type == "cuda" and varlen_kernel() and varlen_supported(model) \
            else "mask"
    if attention not in ("mask", "varlen", "varlen_reference"):
        raise ValueError(f"attention={attention!r}: expected 'mask', 'varlen' or 'varlen_reference'")
    if attention != "mask" and not varlen_supported(model):
        raise ValueError(f"attention={attention!r}: {type(model).__name__} is not one of the decoders the varlen "
                         f"loop repeats ({', '.join(VARLEN_DECODERS)}); use 'mask'")
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
    if fast and device.type == "cuda":
        # Under bf16 autocast, PEFT's cast of each LoRA input to the fp32 adapter dtype is a copy that autocast
        # immediately undoes; skip it (the fp32 master weights and the optimizer are unchanged).
        for m in peft_model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = False
    compiled = varlen = None
    try:
        if fast and attention != "mask":
            varlen = _Varlen(peft_model, varlen_kernel() if attention == "varlen" else varlen_reference)
        if fast and (device.type == "cuda" if compile is None else compile):
            compiled = _Compiled(peft_model)
            log(f"train: regional torch.compile of {len(compiled.layers)} decoder layers and the head loss "
                "(compiles on the first step)")
        loss_fn = compiled.loss_fn if compiled else head_loss
        if fast:
            log(f"train: attention {attention}")
        t0 = time.perf_counter()
        step = 0
        step_losses: list = []
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
                    if fast:
                        packed = collate_packed(mb, device, varlen=varlen is not None)
                        with autocast():
                            tok_loss = _token_loss_at_labels(peft_model, packed, loss_fn)
                        res.seen_tokens += packed.n_real
                        res.padded_tokens += packed.ids.numel()
                    else:
                        ids, labels, mask = collate(mb, pad_id, device)
                        with autocast():
                            tok_loss = _token_loss_full(peft_model, ids, labels, mask)
                        res.seen_tokens += int(mask.sum())
                        res.padded_tokens += mask.numel()
                    (tok_loss / max(1, n_tok)).backward()
                    loss_sum += tok_loss.detach()
                torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                res.trained_tokens += n_tok
                step_losses.append(loss_sum / max(1, n_tok))  # stays on the device: no sync between steps
                res.lrs.append(lr)
                step += 1
                if on_step:
                    on_step({"step": step, "loss": step_losses[-1].item(), "lr": lr, "tokens": n_tok})
                if step % every == 0 or step == total or step == max_steps:
                    el = time.perf_counter() - t0
                    info = {"step": step, "total": total, "loss": step_losses[-1].item(), "lr": lr,
                            "tok_s": res.seen_tokens / el, "eta_s": el / step * (total - step)}
                    log(f"train step {step}/{total} loss {info['loss']:.4f} lr {lr:.2e} "
                        f"{info['tok_s']:.0f} tok/s eta {info['eta_s']:.0f}s")
                    if progress:
                        progress(info)
                if step == max_steps:
                    break
            if step == max_steps:
                break
        res.losses = torch.stack(step_losses).tolist() if step_losses else []
        res.seconds = time.perf_counter() - t0
    finally:  # a failed training leaves the model as it found it: eager, its own attention
        for switch in (compiled, varlen):
            if switch:
                switch.undo()
    if checkpointing:
        peft_model.gradient_checkpointing_disable()
        peft_model.disable_input_require_grads()
    peft_model.eval()
    return peft_model, res
