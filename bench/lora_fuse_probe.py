"""What fusing a 7B decoder layer's LoRA projections could buy a training step (issue 23, item 5): one layer's
projections, forward and backward, timed on the GPU in four forms, before anyone writes the real thing.

The layer is Qwen2.5-7B's (hidden 3,584, q 3,584, k and v 512 each, MLP 18,944) without its attention, which is the
same in every form: q, k and v are summed into o_proj's input. LoRA r=32 on all seven projections (fp32 A and B under
bf16 autocast, as ``train_lora`` trains), dropout 0.05 with its own mask per projection, as PEFT does. Forms:
  peft        each projection ``base(x) + B(A(dropout(x))) * s`` (PEFT's LoRA Linear)
  fused_base  q/k/v and gate/up as one base product each (their weights concatenated), LoRA as in ``peft``
  addmm       ``fused_base`` with the LoRA term as the base product's accumulator (``addmm``, beta 1)
  no_dropout  ``peft`` with dropout 0 (the bound on what dropout costs; not the recipe)
  base_only   no LoRA at all: the base products, norms and SiLU, forward and input gradient (the floor that any
              fusion of the LoRA path approaches)
  acc_lora    ``peft``, the LoRA up-projection accumulated into the base product's output (``addmm``, no concatenation)
  acc_base    ``peft``, the base product accumulated into the LoRA term (``addmm``, no concatenation)
Each form runs ``torch.compile``d (static shapes), 5 warm-up and 20 timed steps of ``--tokens`` tokens.

    python bench/lora_fuse_probe.py [--tokens 6144] [--forms peft,fused_base,addmm,no_dropout]
"""
from __future__ import annotations

import argparse
import json
import time

D, Q, KV, FFN, R, ALPHA, P = 3584, 3584, 512, 18944, 32, 64, 0.05


def make(form: str, device: str, mode: str | None = None):
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)

    def w(o, i):  # frozen base weight, bf16
        return (torch.randn(o, i, generator=g) * 0.02).to(device, torch.bfloat16)

    def lora(o, i):  # trainable fp32 A, B (B non-zero, as after a few steps)
        a = (torch.randn(R, i, generator=g) * 0.02).to(device).requires_grad_()
        b = (torch.randn(o, R, generator=g) * 0.02).to(device).requires_grad_()
        return a, b

    shapes = {"q": (Q, D), "k": (KV, D), "v": (KV, D), "o": (D, Q), "gate": (FFN, D), "up": (FFN, D),
              "down": (D, FFN)}
    base = {n: w(*s) for n, s in shapes.items()}
    ab = {n: lora(*s) for n, s in shapes.items()}
    qkv_w = torch.cat([base["q"], base["k"], base["v"]])
    gu_w = torch.cat([base["gate"], base["up"]])
    s, p = ALPHA / R ** 0.5, (0.0 if form == "no_dropout" else P)  # rsLoRA scale

    def lora_term(n, x):
        a, b = ab[n]
        return F.linear(F.linear(F.dropout(x, p, True), a), b) * s

    def proj(n, x):
        if form == "base_only":
            return F.linear(x, base[n])
        if form == "acc_lora":
            a, b = ab[n]
            return torch.addmm(F.linear(x, base[n]), F.linear(F.dropout(x, p, True), a), b.t(), alpha=s)
        if form == "acc_base":
            return torch.addmm(lora_term(n, x), x, base[n].t())
        return F.linear(x, base[n]) + lora_term(n, x)

    def group(names, wcat, x):
        if form not in ("fused_base", "addmm"):  # the two forms that concatenate a group's base products
            return [proj(n, x) for n in names]
        terms = [lora_term(n, x) for n in names]
        if form == "addmm":
            out = torch.addmm(torch.cat(terms, -1), x, wcat.t())
        else:
            out = F.linear(x, wcat) + torch.cat(terms, -1)
        return list(out.split([t.shape[-1] for t in terms], -1))

    def layer(x):
        h = F.rms_norm(x, (D,))
        q, k, v = group(["q", "k", "v"], qkv_w, h)
        attn = q + k.repeat(1, Q // KV) + v.repeat(1, Q // KV)  # stands in for attention: the same in every form
        x = x + (proj("o", attn) if form != "addmm" else torch.addmm(lora_term("o", attn), attn, base["o"].t()))
        h = F.rms_norm(x, (D,))
        gate, up = group(["gate", "up"], gu_w, h)
        act = F.silu(gate) * up
        return x + (proj("down", act) if form != "addmm"
                    else torch.addmm(lora_term("down", act), act, base["down"].t()))

    params = [] if form == "base_only" else [t for pair in ab.values() for t in pair]
    return torch.compile(layer, mode=mode), params


def time_form(form: str, tokens: int, device: str = "cuda", mode: str | None = None) -> dict:
    import torch

    fn, params = make(form, device, mode)
    x = (torch.randn(tokens, D, device=device) * 0.5).to(torch.bfloat16).requires_grad_()

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            y = fn(x)
        y.float().square().mean().backward()

    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 20 * 1e3
    flop = 2 * 2 * tokens * (2 * D * Q + 2 * D * KV + 3 * D * FFN)  # base forward + input-grad backward, 2 FLOP a MAC
    out = {"form": form, "tokens": tokens, "ms_per_layer_step": round(ms, 2), "warmup_s": round(warm, 1),
           "base_tflops": round(flop / ms / 1e9, 1), "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
           "card": torch.cuda.get_device_name(0)}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=6144)
    ap.add_argument("--forms", default="peft,fused_base,addmm,no_dropout")
    ap.add_argument("--out", default=None, help="a folder for the JSON (on_device.sh bg passes one)")
    ap.add_argument("--mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    a = ap.parse_args()
    rows = [time_form(f, a.tokens, mode=a.mode) for f in a.forms.split(",")]
    ref = rows[0]["ms_per_layer_step"]
    print(f"\n{'form':11} {'ms/layer':>9} {'x28 ms':>7} {'vs first':>8} {'base TF/s':>9} {'peak GB':>7}")
    for r in rows:
        print(f"{r['form']:11} {r['ms_per_layer_step']:9.2f} {r['ms_per_layer_step'] * 28:7.0f} "
              f"{ref / r['ms_per_layer_step']:8.2f} {r['base_tflops']:9.1f} {r['peak_gb']:7.2f}")
    if a.out:
        import datetime as dt
        from pathlib import Path

        card = rows[0]["card"].replace(" ", "_")
        Path(a.out, f"{dt.date.today()}_{card}_lora_fuse.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
