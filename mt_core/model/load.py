"""Loading a base model and stacking adapters on it: the one definition of a model's weights.

The weights of base + adapters [a1, ..., ak] (``merged_weights``) are the base in the serving dtype, then each adapter
merged in training order, one stage at a time: every LoRA-targeted matrix becomes
``round_dtype(fp32(W) + fp32(B @ A) * scale)`` (``merge_lora``), so each stage is rounded to the serving dtype exactly
once. This is the reference's (PROTOCOL §1.4-§1.5): the coupling adapter merged into the bf16 base and saved
(``villain_zlt_merged``), the second-stage adapter trained on that rounded model, then merged into it. So the weights a
cell adapter is trained on (base + coupling) are bit for bit the first stage of the weights its evaluations use, on
every path: training, the transformers engine, ARC, and the vLLM scratch checkpoint (which is this function's output,
saved). On the CPU path (fp32) the stage rounding is fp32's; on a GPU and for vLLM it is bf16's.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def device_and_dtype():
    """The device and the serving dtype of a model loaded here: bf16 on a GPU, fp32 on the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def set_threads() -> None:
    """Use every core we were given (the runtime's ``threads``, $MT_THREADS, overrides)."""
    import torch

    from mt_core import runtime

    n = runtime.current().threads or os.cpu_count() or 1
    torch.set_num_threads(n)


def free_cuda() -> None:
    """Garbage-collect, then hand the CUDA caching allocator's free blocks back (for an engine or a model next)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def merged_weights(model_dir: str | Path, adapters: list[str | Path] = (), *, device=None, dtype=None):
    """THE weights of base + ``adapters`` (training order): the base in ``dtype`` (default: the serving dtype of
    ``device_and_dtype``), then one ``merge_adapter`` stage per adapter. Returns the transformers model (eval mode)."""
    from transformers import AutoModelForCausalLM

    set_threads()
    dev, dt = device_and_dtype()
    device, dtype = device or dev, dtype or dt
    device = getattr(device, "type", device)
    kw = {"device_map": device} if device == "cuda" else {}  # load straight onto the GPU
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, **kw).to(device)
    for a in adapters:
        model = merge_adapter(model, a)
    model.eval()
    return model


def load_model(model_dir: str | Path, adapters: list[str | Path] = (), *, device=None, dtype=None):
    """``merged_weights`` and the base's tokenizer. Returns (model, tokenizer)."""
    return merged_weights(model_dir, adapters, device=device, dtype=dtype), load_tokenizer(model_dir)


def merge_adapter(model, adapter_dir: str | Path):
    """One stage: the saved adapter at ``adapter_dir`` merged into ``model`` (``merge_lora``)."""
    from peft import PeftModel

    return merge_lora(PeftModel.from_pretrained(model, str(adapter_dir)))


@contextlib.contextmanager
def _fp32_matmul():
    """Full fp32 matmuls (no TF32) while merging, whatever the caller set: a stage's product is the same on every
    call on a device."""
    import torch

    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def merge_lora(peft_model):
    """One merge stage of a PEFT LoRA model (trained in memory or loaded from disk): for every LoRA layer,
    ``W <- round_dtype(fp32(W) + fp32(B) @ fp32(A) * scale)``, rounded once to W's own dtype; then the LoRA modules
    are removed. Returns the plain transformers model. Only plain LoRA on Linear layers (what the recipes train)."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    with torch.no_grad(), _fp32_matmul():
        for name, m in peft_model.named_modules():
            if not isinstance(m, LoraLayer):
                continue
            if not isinstance(m, LoraLinear):
                raise NotImplementedError(f"{name}: only LoRA on Linear layers can be merged ({type(m).__name__})")
            for a in m.active_adapters:
                if a not in m.lora_A:
                    continue
                if a in getattr(m, "lora_variant", {}) or m.lora_bias.get(a, False):
                    raise NotImplementedError(f"{name}: LoRA variants (DoRA, ...) and LoRA biases are not merged here")
                delta = m.lora_B[a].weight.float() @ m.lora_A[a].weight.float()
                if m.fan_in_fan_out:
                    delta = delta.T
                w = m.get_base_layer().weight
                w.data = (w.data.float() + delta * m.scaling[a]).to(w.dtype)
    return peft_model.unload()
