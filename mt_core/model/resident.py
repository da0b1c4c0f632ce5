"""A base model kept in memory across steps, for a worker that stays (``python -m mt_worker serve``).

A fresh-process step loads its base, merges its adapters (``mt_core.model.load.merged_weights``), trains or generates,
and exits. A worker that stays loads the base once and lends it to one step after another: the step merges its
adapters into the held weights in place and may attach and train a LoRA on them; when the step ends the base is put
back exactly as it was loaded (LoRA modules removed, every tensor copied back from a snapshot taken at load time,
``requires_grad`` and eval mode restored). So the next step sees the loaded weights bit for bit
(``Resident.checksum``), and a step computes what it would have computed in a fresh process.

The snapshot lives in host memory (pinned where CUDA is available): a 7B base in bf16 costs 15 GB of RAM and its
restore one host-to-device copy. ``model_for`` is how a step asks for weights; it uses the held
base when this process holds one (``hold``), else loads as before.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Callable


class Resident:
    """The base model of one folder, loaded once, with a snapshot of its tensors."""

    def __init__(self):
        self.model_dir: Path | None = None
        self.model = self.tok = None
        self._snapshot: dict = {}
        self._requires_grad: dict[str, bool] = {}
        self.loads = self.lends = 0  # how often the base was loaded, and lent to a step
        self.engine = None  # a generation engine kept for this base (mt_core.generate.vllm_engine.HeldEngine)

    def lend(self, model_dir: str | Path, log: Callable[[str], None] = print) -> tuple:
        """(model, tokenizer) of ``model_dir`` in the serving dtype: the held one, or loaded now (replacing the one
        held, e.g. a study with another base). Give it back with ``restore``."""
        from mt_core.model.load import load_model

        model_dir = Path(model_dir).resolve()
        if self.model_dir != model_dir:
            self.release()
            from mt_core.generate.vllm_engine import warm_registry

            warm_registry(model_dir)  # the held engine's first start needs it: found in vLLM's cache by then
            t0 = time.perf_counter()
            self.model, self.tok = load_model(model_dir)
            t1 = time.perf_counter()
            self._snapshot = host_snapshot(self.model.state_dict())
            self.model_dir, self.loads = model_dir, self.loads + 1
            self._requires_grad = {k: p.requires_grad for k, p in self.model.named_parameters()}
            gb = sum(t.numel() * t.element_size() for t in self._snapshot.values()) / 1e9
            log(f"resident: {model_dir.name} loaded in {t1 - t0:.1f}s; its host snapshot ({gb:.1f} GB) taken in "
                f"{time.perf_counter() - t1:.1f}s")
        self.lends += 1
        return self.model, self.tok

    def restore(self) -> None:
        """Put the base back as it was loaded: no LoRA module left, every tensor equal to the snapshot."""
        import torch

        if self.model is None:
            return
        strip_adapters(self.model)
        with torch.no_grad():
            state = self.model.state_dict()
            if state.keys() != self._snapshot.keys():
                raise RuntimeError(f"the resident base {self.model_dir} changed shape during a step: "
                                   f"{sorted(state.keys() ^ self._snapshot.keys())[:5]}")
            for k, t in state.items():
                t.copy_(self._snapshot[k], non_blocking=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # sync: the copies are done before the next step reads the weights
        for k, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad[k])
        self.model.eval()

    def release(self) -> None:
        """Drop the held base and its engine (their GPU memory back, e.g. for another base or an engine of its own)."""
        from mt_core.model.load import free_cuda

        if self.engine is not None:
            self.engine.close()
        self.model = self.tok = self.model_dir = self.engine = None
        self._snapshot, self._requires_grad = {}, {}
        free_cuda()

    def checksum(self) -> str:
        """sha256 over every tensor of the held model (names, dtypes, shapes, bytes): equal before and after a step."""
        h = hashlib.sha256()
        for k, t in sorted(self.model.state_dict().items()):
            h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(tensor_bytes(t))
        return h.hexdigest()


def host_snapshot(state: dict) -> dict:
    """A copy of every tensor of ``state`` in host memory: views of one buffer, each filled by one copy. With CUDA the
    buffer is pinned, so restoring is one fast host-to-device copy a tensor; pinning tensor by tensor instead copies
    through pageable memory first and rounds every pinned allocation up to a power of two (torch's caching host
    allocator): about 28 GB pinned for a 15 GB 7B base, where one buffer takes 17 GB."""
    import torch

    cuda = torch.cuda.is_available()
    align = 64  # every view starts at an address any dtype can be read from
    spans, total = [], 0
    for t in state.values():
        spans.append(total)
        total += -(-t.numel() * t.element_size() // align) * align
    buf = torch.empty(total, dtype=torch.uint8, pin_memory=cuda)
    out = {}
    for (k, t), at in zip(state.items(), spans):
        n = t.numel() * t.element_size()
        out[k] = buf[at:at + n].view(t.dtype).view(t.shape)
        out[k].copy_(t.detach(), non_blocking=cuda)
    if cuda:
        torch.cuda.synchronize()  # sync: the snapshot is complete before the step changes the weights
    return out


def tensor_bytes(t) -> bytes:
    """A tensor's raw bytes on the host, whatever its dtype (bf16 has no numpy dtype: read as bytes)."""
    import torch

    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def strip_adapters(model) -> None:
    """Remove every PEFT layer from ``model`` in place, keeping each one's base layer (no merge): what is left is
    the module tree as loaded."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, m in list(model.named_modules()):
        if isinstance(m, BaseTunerLayer) and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, m.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):  # what PEFT may leave on the model object
        if attr in vars(model):
            delattr(model, attr)


_held: Resident | None = None


def hold() -> Resident:
    """Make this process keep its base models across steps (a worker that stays); the holder."""
    global _held
    if _held is None:
        from mt_core.data.chat import remember_built
        from mt_core.model.kernels import worker_stays

        _held = Resident()
        remember_built(2)  # the EM and the benign data: every cell of a condition trains on the same chats
        worker_stays()  # a compile ahead may serve its first compiled training (kernels.compile_ahead)
    return _held


def held() -> Resident | None:
    """The holder, when this process keeps its base (else steps load their own)."""
    return _held


@contextlib.contextmanager
def model_for(model_dir: str | Path, adapters: list[str | Path] = (), holder: Resident | None = None,
              log: Callable[[str], None] = print):
    """``load_model(model_dir, adapters)`` for the block. In a worker that stays (``hold``; or given ``holder``) the
    held base is lent instead, the adapters merged into it in place by the same stages, and the base restored exactly
    when the block ends (whatever the block did to it: a LoRA attached and trained, weights merged)."""
    from mt_core.model.load import load_model, merge_adapter

    holder = holder or held()
    if holder is None:
        yield load_model(model_dir, adapters)
        return
    model, tok = holder.lend(model_dir, log)
    try:
        for a in adapters:
            model = merge_adapter(model, a)
        yield model.eval(), tok
    finally:
        holder.restore()
