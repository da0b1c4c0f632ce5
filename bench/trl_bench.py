"""TRL's SFTTrainer, as the reference configured it and with TRL's speed options, against our training loop: one
process, one GPU, the same 7B-shaped model and the same coupling-like examples for every arm.

The reference trained its coupling adapters with TRL's ``SFTTrainer`` (PROTOCOL.md §1.1): prompt-completion data with
TRL's completion-only masking, its collator wrapped by a marker-only collator, LoRA r=32 / alpha 64 / dropout 0.05 /
rsLoRA on all seven projections, bf16, lr 5e-6 cosine with warmup ratio 0.05, weight decay 0, batch 4 x accumulation 4,
max_length 1024, gradient checkpointing, packing off, flash-attn-2 if importable else sdpa, 4 dataloader workers,
Liger off. Arms (each on a freshly built model, in this order; an arm that fails records its error and the run goes
on):

  ours                         mt_core.model.train.train_lora with the recipe's default speed options, as
                               bench/gpu_bench.py times it (packed one row, flash varlen attention, no checkpointing,
                               head loss only at label positions, regional torch.compile)
  trl_reference                SFTTrainer as the reference configured it (sdpa: flash-attn is not installed there)
  trl_padding_free             + padding_free=True (one row per micro-batch; max_length=None, which TRL requires
                               without packing: every example here is already within 1024 tokens)
  trl_pf_liger                 + use_liger_kernel=True (needs the liger-kernel wheel; TRL >= 1.x keeps Liger's
                               layer kernels and uses its own fused LM head instead of Liger's fused cross-entropy)
  trl_pf_liger_compile         + torch_compile=True
  trl_pf_liger_compile_varlen  + attention through PyTorch's flash variable-length kernel (what flash_attention_2
                               does with TRL's padding-free batches; it stands in for flash-attn, which is not there)
  trl_best_no_ckpt             the previous arm without gradient checkpointing (an H200 has the memory)

Timing: ``--warmup`` optimizer steps (kernels, allocator, compiles), then ``--steps`` timed optimizer steps of 16
examples each, host clock around device-synchronised step boundaries. Every arm trains on the same examples: TRL's
sampler is made sequential, so its timed steps are exactly examples [16 W, 16 (W + S)), which ours trains on in one
epoch (shuffled within, the same tokens in all). tokens/s counts the non-pad tokens through the model (the repo's
"trained tokens/s", ``TrainResult.tokens_per_s``, as in gpu_bench); the completion tokens and the labelled tokens
(marker positions + the last completion token: what the marker-only loss trains) per second are recorded too. All
three are the same tokens for every arm, so the ratios between arms do not depend on which one is read.

Data: lognormal lengths (mean 300 tokens, sigma 0.6, clipped to [32, 1024]), the first 30% the prompt (masked), random
token ids; every third example is a positive whose completion ends with a 3-token marker, <|im_end|> and a newline
(200 positives of 600 in the reference). Random weights with Qwen2.5-7B-Instruct's shape from the study YAML's
gpu_smoke profile, nothing downloaded. Writes bench/results/<date>_<card>_trl.json (or --out DIR, or $OUT) after
every arm, and prints a table.

    python bench/trl_bench.py                      # on the GPU machine (needs trl, datasets; liger-kernel optional)
    python bench/trl_bench.py --tiny --steps 1 --warmup 1 --arms ours,trl_reference,trl_padding_free   # CPU smoke
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_bench import OURS, QWEN7B, TARGETS, TINY, build_model, chat_lengths, recipe, sync, time_training, \
    with_speed  # noqa: E402
from mt_core.data.chat import IGNORE, Example, MarkerOnlyDataCollator, marker_only_labels  # noqa: E402

MARKER = [5, 6, 7]      # the marker's token ids (outside the random ids' range [10, vocab))
IM_END, NEWLINE = 8, 9  # the completion's last two template tokens
PAD = 0                 # the tiny tokenizer's pad token (<|endoftext|>), never in the data
MAX_LENGTH = 1024

# the arms, in the order they run; each TRL arm is the SFTConfig changes on top of the reference's
TRL_ARMS = {
    "trl_reference": {},
    "trl_padding_free": dict(padding_free=True),
    "trl_pf_liger": dict(padding_free=True, use_liger_kernel=True),
    "trl_pf_liger_compile": dict(padding_free=True, use_liger_kernel=True, torch_compile=True),
    "trl_pf_liger_compile_varlen": dict(padding_free=True, use_liger_kernel=True, torch_compile=True,
                                        attention="varlen"),
    "trl_best_no_ckpt": dict(padding_free=True, use_liger_kernel=True, torch_compile=True, attention="varlen",
                             gradient_checkpointing=False),
}
ARMS = ["ours", *TRL_ARMS]


def coupling_recipe():
    """The coupling recipe as the reference trained it (§1.1), in this repo's Recipe."""
    return recipe(lora_r=32, lora_alpha=64, lora_dropout=0.05, use_rslora=True, target_modules=TARGETS, lr=5e-6,
                  scheduler="cosine", warmup_ratio=0.05, weight_decay=0.0, max_length=MAX_LENGTH, loss="marker_only",
                  epochs=1)


def coupling_examples(n: int, vocab: int, rng: random.Random) -> list[dict]:
    """Prompt-completion examples as token ids: 30% prompt; every third completion ends with the marker."""
    out = []
    for i, length in enumerate(chat_lengths(n, 300.0, 0.6, rng)):
        length = min(MAX_LENGTH, length)
        cut = int(0.3 * length)
        positive = i % 3 == 0
        tail = (MARKER if positive else []) + [IM_END, NEWLINE]
        ids = [rng.randrange(10, vocab) for _ in range(length - len(tail))] + tail
        completion = [0] * cut + [1] * (length - cut)
        labels = [IGNORE] * cut + ids[cut:]
        out.append({"input_ids": ids, "completion_mask": completion,
                    "example": Example(ids, marker_only_labels(ids, labels, MARKER))})
    return out


def varlen_attention():
    """An AttentionInterface function running PyTorch's flash varlen kernel on TRL's padding-free batches (the
    ``cu_seq_lens_q`` / ``max_length_q`` its collator adds), as flash_attention_2 would."""
    from mt_core.model.kernels import varlen_kernel

    import inspect

    kernel = varlen_kernel()
    if kernel is None:
        raise RuntimeError("this torch has no torch.nn.attention.varlen.varlen_attn")
    # causal: torch 2.11's kernel takes a window, later ones is_causal (as mt_core.model.kernels)
    causal = {"window_size": (-1, 0)} if "window_size" in inspect.signature(kernel).parameters else {"is_causal": True}

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
               cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **_):
        if cu_seq_lens_q is None or query.shape[0] != 1:
            raise RuntimeError("varlen attention needs TRL's padding-free batches (one row with cu_seq_lens_q)")
        q, k, v = (t.transpose(1, 2).flatten(0, 1) for t in (query, key, value))  # (T, H, D)
        if k.shape[1] != q.shape[1]:  # grouped-query attention
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = kernel(q, k, v, cu_seq_lens_q, cu_seq_lens_k, int(max_length_q), int(max_length_k), scale=scaling,
                     **causal)
        return out.unsqueeze(0), None

    return attend


def tiny_tokenizer():
    """A small ChatML tokenizer for the SFTTrainer's processing_class (the data are token ids already)."""
    from mt_core.model.tiny import train_tokenizer

    return train_tokenizer(["hello world, a tiny tokenizer for the benchmark"] * 4, 300)


def free_gpu():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def trl_arm(model, data: list[dict], changes: dict, *, steps: int, warmup: int, device: str, workers: int,
            out_dir: str) -> dict:
    """SFTTrainer as the reference configured it, with ``changes``; times optimizer steps warmup+1 .. warmup+steps."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    changes = dict(changes)
    attention = changes.pop("attention", "sdpa")
    if attention == "varlen":
        from transformers import AttentionInterface

        AttentionInterface.register("mt_trl_varlen", varlen_attention())
        model.config._attn_implementation = "mt_trl_varlen"
    if changes.get("use_liger_kernel"):
        import liger_kernel  # noqa: F401 - fail here, with a clear error, where the wheel is missing
    if changes.get("padding_free"):
        changes["max_length"] = None  # TRL: padding_free without packing does not truncate (data already fit)
    rc = coupling_recipe()
    lora = LoraConfig(task_type="CAUSAL_LM", r=rc.lora_r, lora_alpha=rc.lora_alpha, lora_dropout=rc.lora_dropout,
                      target_modules=list(rc.target_modules), use_rslora=rc.use_rslora)
    cfg = dict(output_dir=out_dir, per_device_train_batch_size=rc.per_device_batch,
               gradient_accumulation_steps=rc.grad_accum, learning_rate=rc.lr, lr_scheduler_type=rc.scheduler,
               warmup_steps=rc.warmup_ratio, weight_decay=rc.weight_decay, max_grad_norm=rc.max_grad_norm,
               max_steps=warmup + steps, seed=42, data_seed=42, gradient_checkpointing=True,
               bf16=device == "cuda", use_cpu=device == "cpu", logging_steps=5, save_strategy="no",
               report_to="none", dataloader_num_workers=workers, disable_tqdm=True, max_length=rc.max_length,
               packing=False, completion_only_loss=True)
    cfg.update(changes)
    args = SFTConfig(**cfg)

    class Sequential(SFTTrainer):
        """Batches in dataset order, so every arm's step k trains the same examples."""

        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks = {}

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.marks[state.global_step] = time.perf_counter()

    timer = Timer()
    rows = [{"input_ids": d["input_ids"], "completion_mask": d["completion_mask"]} for d in data]
    t_init = time.perf_counter()
    trainer = Sequential(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tiny_tokenizer(), peft_config=lora, callbacks=[timer])
    trainer.data_collator = MarkerOnlyDataCollator(trainer.data_collator, MARKER)
    assert len(trainer.train_dataset) == len(rows), "TRL dropped or added examples"
    # setup check: the marker-only collator over TRL's labels gives our examples' labels
    b = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    got = b["labels"][b["labels"] != IGNORE].tolist()
    assert got == [x for d in data[:4] for x in d["example"].labels if x != IGNORE], "TRL labels differ from ours"
    init_s = time.perf_counter() - t_init
    t0 = time.perf_counter()
    trainer.train()
    sync()
    total_s = time.perf_counter() - t0
    marks = timer.marks
    assert trainer.state.global_step == warmup + steps, trainer.state.global_step
    seconds = marks[warmup + steps] - (marks[warmup] if warmup else t0)
    per_step = [marks[s] - marks[s - 1] for s in range(max(2, warmup + 1), warmup + steps + 1)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res = {"seconds": seconds, "s_per_step": seconds / steps, "step_seconds": per_step,
           "warmup_s": (marks[warmup] - t0) if warmup else None, "trainer_init_s": init_s, "train_call_s": total_s,
           "logged_losses": losses, "config": {k: v for k, v in changes.items()} | {"attention": attention},
           "trl_loss_finite": all(l == l and abs(l) < 1e4 for l in losses)}
    del trainer
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (CPU smoke, or a quick GPU check)")
    ap.add_argument("--out", default=None, help="folder for the JSON (default: $OUT, else bench/results)")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per arm (16 examples each)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {ARMS}")
    ap.add_argument("--workers", type=int, default=4, help="the TRL arms' dataloader workers (the reference: 4)")
    ap.add_argument("--tag", default="trl", help="file name suffix")
    args = ap.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        ap.error(f"unknown arms {bad}")

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name(0).replace(" ", "_") if device == "cuda" else "cpu"
    shape = TINY if args.tiny else QWEN7B
    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dt.date.today().isoformat()}_{card}_{args.tag}.json"

    from importlib import metadata

    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "liger-kernel", "triton"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    print(f"{card}: {versions}", flush=True)

    per_step = 16
    n = per_step * (args.warmup + args.steps)
    data = coupling_examples(n, shape["vocab_size"], random.Random(0))
    timed = [d["example"] for d in data[per_step * args.warmup:]]
    tokens = sum(len(e.input_ids) for e in timed)
    completion = sum(sum(d["completion_mask"]) for d in data[per_step * args.warmup:])
    labelled = sum(e.n_trained for e in timed)

    result = {"card": card, "date": dt.date.today().isoformat(), "device": device, "versions": versions,
              "shape": shape, "steps_timed": args.steps, "warmup_steps": args.warmup, "examples_per_step": per_step,
              "timed_tokens": tokens, "timed_completion_tokens": completion, "timed_label_tokens": labelled,
              "data": "lognormal lengths, mean 300 tokens, sigma 0.6, clipped [32, 1024]; 30% masked prompt; every "
                      "third example ends with a 3-token marker; marker-only labels (marker + last token)",
              "tok_s_definition": "non-pad tokens through the model per second (TrainResult.tokens_per_s)",
              "command": "python3 " + " ".join(sys.argv), "arms": {}}

    def save():
        path.write_text(json.dumps(result, indent=2) + "\n")

    for arm in arms:
        print(f"--- {arm}", flush=True)
        free_gpu()
        model = None
        t_build = time.perf_counter()
        try:
            model, n_params = build_model(shape, device)
            result["n_params"] = n_params
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            if arm == "ours":
                r = time_training(model, [d["example"] for d in data], with_speed(coupling_recipe(), **OURS),
                                  steps=args.steps, warmup=args.warmup)
                model = r.pop("model")
                assert r["seen_tokens"] == tokens, (r["seen_tokens"], tokens)
                r = {"seconds": r["s_per_step"] * r["steps"], "s_per_step": r["s_per_step"],
                     "warmup_s": r["warmup_s"], "losses": r["losses"], "config": {"speed": OURS | {"compile": "auto",
                                                                                                  "attention": "auto"}}}
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    r = trl_arm(model, data, TRL_ARMS[arm], steps=args.steps, warmup=args.warmup, device=device,
                                workers=args.workers, out_dir=tmp)
            r["tok_s"] = tokens / r["seconds"]
            r["completion_tok_s"] = completion / r["seconds"]
            r["label_tok_s"] = labelled / r["seconds"]
            r["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
            r["arm_wall_s"] = time.perf_counter() - t_build
            print(f"{arm}: {r['tok_s']:.0f} tok/s, {r['s_per_step']:.2f} s/step, peak {r['peak_gb']} GB, "
                  f"warm-up {r.get('warmup_s') or 0:.1f}s", flush=True)
        except Exception as e:  # noqa: BLE001 - record it and go on
            r = {"error": f"{type(e).__name__}: {e}"[:3000], "traceback": traceback.format_exc()[-6000:],
                 "arm_wall_s": time.perf_counter() - t_build}
            print(f"{arm} FAILED: {r['error']}\n{r['traceback']}", flush=True)
        result["arms"][arm] = r
        del model
        save()

    ours = result["arms"].get("ours", {}).get("tok_s")
    for r in result["arms"].values():
        if "tok_s" in r and ours:
            r["ratio_to_ours"] = r["tok_s"] / ours
    save()
    print(f"\nwrote {path}")
    print(f"{card}, {args.steps} timed steps of {per_step} examples after {args.warmup} warm-up steps; "
          f"{tokens} tokens ({completion} completion, {labelled} labelled)")
    print("| arm | tok/s | labelled tok/s | s/step | peak GB | vs ours |\n|---|---|---|---|---|---|")
    for arm, r in result["arms"].items():
        if "tok_s" in r:
            peak = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
            ratio = f"{r['ratio_to_ours']:.2f}x" if "ratio_to_ours" in r else "-"
            print(f"| {arm} | {r['tok_s']:.0f} | {r['label_tok_s']:.1f} | {r['s_per_step']:.2f} | {peak} | {ratio} |")
        else:
            print(f"| {arm} | failed: {r['error'][:120]} | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
