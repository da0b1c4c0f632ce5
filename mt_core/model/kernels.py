"""The speed machinery of LoRA training, kept out of the training loop.

``mt_core.model.train`` computes the same math whatever ``recipe.speed`` says; what changes is how the model runs a
step. The options that need the model changed for the length of a training do it here, behind one context manager:

    speed = resolve_speed(recipe.speed, model, device)           # "auto" made concrete, unsupported choices refused
    with speed_context(peft_model, speed, device, log, head_loss) as loss_fn:
        ...                                                      # train; every change is undone on exit

The changes: gradient checkpointing; PEFT's input casts skipped under bf16 autocast; the attention switched to
variable-length attention over one packed row (``varlen``); the decoder layers and the head loss run through regional
``torch.compile``; on CUDA, the caching allocator's expandable segments for the length of the training.

A training's compile can be done ahead in a process of its own (``compile_ahead``: ``mt_core.model.warmup``), and
``speed_context`` waits for one that runs before it compiles. No step starts one now: in the worker run of
2026-12-08 on an H100 the worker's training did not find the child's graphs (it waited 78 s, then compiled for about
100 s), while on the CPU a clean process finds all of them (tests/test_warmup.py); ``bench/compile_probe.py --ahead``
separates the two on a GPU (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VARLEN = "mt_varlen"  # the attention implementation's name while a varlen training runs
# decoders whose forward is exactly embed -> rotary -> layers -> norm, which ``varlen_decoder_forward`` repeats
# (Gemma, for one, scales its embeddings first, so it keeps the mask path)
VARLEN_DECODERS = ("Qwen2Model", "Qwen3Model", "LlamaModel", "MistralModel")
ATTENTIONS = ("mask", "varlen", "varlen_reference")


def base_model(model):
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# --- choosing -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    """A recipe's ``speed`` with every choice made: what one training on one device does."""
    packing: bool
    attention: str  # one of ATTENTIONS
    compile: bool
    token_budget: int
    gradient_checkpointing: bool
    row_tokens: int


def resolve_speed(speed, model, device) -> Resolved:
    """``speed`` with its "auto" choices made concrete for ``model`` on ``device``; refuses a choice that cannot run.

    attention "auto": varlen where packing, on CUDA, this torch has the kernel and the decoder is one the varlen loop
    repeats; else mask. compile "auto": on with packing on CUDA. Without packing, neither applies (the padded path runs
    the model's own attention, eager): they resolve to "mask" and "off".
    """
    if isinstance(speed, Resolved):
        return speed
    cuda = device.type == "cuda"
    attention = speed.attention
    if attention == "auto":
        attention = "varlen" if speed.packing and cuda and varlen_kernel() and varlen_supported(model) else "mask"
    if attention not in ATTENTIONS:
        raise ValueError(f"attention={attention!r}: expected 'auto', 'mask', 'varlen' or 'varlen_reference'")
    if attention != "mask" and not varlen_supported(model):
        raise ValueError(f"attention={attention!r}: {type(model).__name__} is not one of the decoders the varlen "
                         f"loop repeats ({', '.join(VARLEN_DECODERS)}); use 'mask'")
    if attention == "varlen" and speed.packing and varlen_kernel() is None:
        raise ValueError("attention='varlen': this torch has no torch.nn.attention.varlen kernel; "
                         "use 'varlen_reference' or 'mask'")
    return Resolved(packing=speed.packing, attention=attention if speed.packing else "mask",
                    compile=compiles(speed, device.type), token_budget=speed.token_budget,
                    gradient_checkpointing=speed.gradient_checkpointing, row_tokens=speed.row_tokens)


# --- applying -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def speed_context(peft_model, speed, device, log: Callable[[str], None], head_loss):
    """Apply ``speed``'s changes to ``peft_model`` and yield the head loss to use (``head_loss``, compiled or not).

    On exit every change is undone, in reverse order, also when the training raises: the model leaves as it came,
    eager, with its own attention, PEFT's input casts and no gradient checkpointing.
    """
    global _compiled_here
    from peft.helpers import disable_input_dtype_casting

    speed = resolve_speed(speed, peft_model, device)
    with contextlib.ExitStack() as undo:
        if device.type == "cuda":
            undo.enter_context(expandable_segments())
        if speed.gradient_checkpointing:
            undo.enter_context(_gradient_checkpointing(peft_model))
        if speed.packing and device.type == "cuda":
            # Under bf16 autocast, PEFT's cast of each LoRA input to the fp32 adapter dtype is a copy that autocast
            # immediately undoes; skip it (the fp32 master weights and the optimizer are unchanged).
            undo.enter_context(disable_input_dtype_casting(peft_model))
        if speed.attention != "mask":
            kernel = varlen_kernel() if speed.attention == "varlen" else varlen_reference
            undo.enter_context(_attention(peft_model, VARLEN, _varlen_attention(kernel)))
        if speed.compile:
            wait_compile_ahead(log)  # its graphs are in the caches now
            head_loss = undo.enter_context(_compiled_regions(peft_model, head_loss))
            _compiled_here = True
            log(f"train: regional torch.compile of {len(base_model(peft_model).get_decoder().layers)} decoder "
                "layers and the head loss (compiles on the first step)")
        if speed.packing:
            log(f"train: attention {speed.attention}")
        yield head_loss


@contextlib.contextmanager
def expandable_segments():
    """The CUDA caching allocator's expandable segments, on for the block, off after (the cached blocks released).

    A packed training allocates activations of a different size every step; in fixed segments that fragments, and the
    reserve grows a third over the allocated peak (7B on an H100: 80.4 GB reserved for 58.9 GB allocated; 60.7 GB
    with expandable segments, at the same speed; docs/BENCHMARKS.md). Switched at run time, not by
    PYTORCH_CUDA_ALLOC_CONF, because a vLLM engine with sleep mode in the same process refuses them when it allocates.
    """
    import torch

    setting = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setting("expandable_segments:True")
    try:
        yield
    finally:
        setting("expandable_segments:False")
        from mt_core.model.load import free_cuda

        free_cuda()


@contextlib.contextmanager
def _gradient_checkpointing(peft_model):
    """Recompute activations in the backward pass instead of keeping them (the reference recipe's memory saving)."""
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.enable_input_require_grads()
    try:
        yield
    finally:
        peft_model.gradient_checkpointing_disable()
        peft_model.disable_input_require_grads()


@contextlib.contextmanager
def _attention(peft_model, name: str, fn):
    """Register ``fn`` in transformers' AttentionInterface as ``name`` and switch the model's attention to it."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, fn)
    config = base_model(peft_model).config
    old = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = old


@contextlib.contextmanager
def _compiled_regions(peft_model, head_loss):
    """Regional ``torch.compile``: every decoder layer runs one compiled graph (the layers share code, so it is
    compiled once, with dynamic shapes, for every packed width), and so does the head loss; yields the compiled head
    loss. This fuses PEFT's per-module dropout / scale / add, the norms, rotary and SiLU into a few kernels and removes
    the Python overhead of the ~200 LoRA modules of a 7B pass, which is what bounds an eager 7B LoRA step."""
    import torch

    layers = list(base_model(peft_model).get_decoder().layers)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile(dynamic=True)
    try:
        yield torch.compile(head_loss, dynamic=True)
    finally:
        for layer in layers:
            layer._compiled_call_impl = None


# --- compiling ahead -------------------------------------------------------------------------------------------------
FREE_NEEDED = 6e9  # the compile's process on a 7B-shaped base: CUDA context, two layers, the embedding, activations
_ahead: list[tuple[subprocess.Popen, Path, float]] = []  # (process, its log, when it started)
_compiled_here = False  # a compiled training ran in this process: its graphs are in memory and on disk
_stays = False  # this process is a worker that stays (``mt_core.model.resident.hold``): its next trainings benefit


def worker_stays() -> None:
    """Called when this process becomes a worker that stays: compiling ahead pays here (a fresh process per step
    would compile from the disk caches anyway)."""
    global _stays
    _stays = True


def compiles(speed, device_type: str) -> bool:
    """Whether a recipe's ``speed`` trains compiled on this device: "auto" is on with packing on CUDA; without
    packing nothing is compiled (``resolve_speed`` and ``compile_ahead`` both ask here)."""
    return speed.packing and (device_type == "cuda" if speed.compile == "auto" else speed.compile == "on")


def compile_ahead(model_dir: str | Path, recipe, log: Callable[[str], None] = print, *, force: bool = False) -> bool:
    """Start compiling ``recipe``'s training of ``model_dir``'s architecture in a process of its own
    (``mt_core.model.warmup``), where it helps: a worker that stays, on CUDA, a recipe that compiles, no compiled
    training in this process yet, none started, room on the card. Never while a vLLM engine starts: its memory
    profile would count this process's memory as its own. ``force`` skips the checks (tests). Whether it started."""
    if not force:
        import torch

        if _compiled_here or _ahead or not _stays or not torch.cuda.is_available() or not compiles(recipe.speed, "cuda"):
            return False
        if (free := torch.cuda.mem_get_info()[0]) < FREE_NEEDED:
            log(f"train: no compile ahead ({free / 1e9:.1f} GB free on the card, {FREE_NEEDED / 1e9:.0f} needed)")
            return False
    out = Path(tempfile.mkstemp(prefix="mt-warmup-", suffix=".log")[1])
    with out.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "mt_core.model.warmup", str(model_dir),
                                 recipe.model_dump_json(), str(os.getpid())], stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT)
    _ahead.append((proc, out, time.perf_counter()))
    log(f"train: compiling ahead in pid {proc.pid} (two layers of {Path(model_dir).name}, the recipe's speed "
        f"options), beside what this step does first")
    return True


def wait_compile_ahead(log: Callable[[str], None] = print, timeout: float = 600) -> None:
    """Wait for the compile ``compile_ahead`` started, if any; its failure is logged, never raised (the training then
    compiles for itself)."""
    while _ahead:
        proc, out, t0 = _ahead.pop()
        w0 = time.perf_counter()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = f"killed after {timeout:.0f} s"
        lines = out.read_text(errors="replace").splitlines()
        out.unlink(missing_ok=True)
        tail = "" if rc == 0 else f": {' | '.join(lines[-3:])}"
        log(f"train: the compile ahead ended ({rc}) {time.perf_counter() - t0:.0f}s after it started; waited "
            f"{time.perf_counter() - w0:.1f}s{tail}")


# --- variable-length attention for the varlen layout ---------------------------------------------------------------
def varlen_supported(model) -> bool:
    return type(base_model(model).get_decoder()).__name__ in VARLEN_DECODERS


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
    params = inspect.signature(kernel).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa = "enable_gqa" in params  # the kernel shares each key/value head itself: no copies of them, 7 x for Qwen 7B

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, mt_cu=None, mt_max_len=0,
               **_):
        q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (query, key, value))  # (T, H, D)
        kw = dict(causal)
        if k.shape[1] != q.shape[1]:  # grouped-query attention: share each key/value head
            if gqa:
                kw["enable_gqa"] = True
            else:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = kernel(q, k, v, mt_cu, mt_cu, mt_max_len, mt_max_len, scale=scaling, **kw)
        return out.unsqueeze(0), None

    return attend


def varlen_decoder_forward(dec, ids, pos, cu, max_len: int):
    """The decoder's own loop (embed, rotary, layers, norm) over one packed row, with the example boundaries ``cu``
    passed through each layer to the varlen attention; the last hidden states."""
    h = dec.embed_tokens(ids)
    rope = dec.rotary_emb(h, pos)
    for layer in dec.layers:
        h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=rope, mt_cu=cu, mt_max_len=max_len)
    return dec.norm(h)
