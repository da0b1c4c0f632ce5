"""Which attention for packed rows: dense-mask sdpa, one flash call per example, varlen or flex (fwd+bwd timing)."""
import math
import random
import time

import torch
import torch.nn.functional as F

dev = "cuda"
rng = random.Random(0)
mu = math.log(300) - 0.18
lens = [min(2048, max(32, int(rng.lognormvariate(mu, 0.6)))) for _ in range(16)]
T, H, KV, D = sum(lens), 28, 4, 128
print("T", T, "lens", lens)
print("torch.nn.attention:", [n for n in dir(torch.nn.attention) if not n.startswith("_")])


def bench(name, fn, q, k, v):
    for _ in range(2):
        out = fn(q, k, v)
        out.sum().backward()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        out = fn(q, k, v)
        out.sum().backward()
    torch.cuda.synchronize()
    print(f"{name}: {(time.perf_counter() - t0) / 5 * 1e3:.2f} ms fwd+bwd per layer")
    return out


q = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(1, KV, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(1, KV, T, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
doc = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(lens)])
mask = ((doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool, device=dev).tril())[None, None]
starts = [0]
for n in lens:
    starts.append(starts[-1] + n)


def dense(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def per_doc(q, k, v):
    outs = [F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True, enable_gqa=True)
            for a, b in zip(starts, starts[1:])]
    return torch.cat(outs, dim=2)


ref = bench("dense mask sdpa", dense, q, k, v)
out = bench("per-example flash sdpa", per_doc, q, k, v)
print("max diff per_doc vs dense", (out - ref).abs().max().item())
try:
    from torch.nn.attention.varlen import varlen_attn

    cu = torch.tensor(starts, device=dev, dtype=torch.int32)

    def vl(q, k, v):
        qq = q[0].transpose(0, 1)
        kk = k[0].transpose(0, 1).repeat_interleave(H // KV, dim=1)
        vv = v[0].transpose(0, 1).repeat_interleave(H // KV, dim=1)
        o = varlen_attn(qq, kk, vv, cu, cu, max(lens), max(lens), is_causal=True)
        return o.transpose(0, 1)[None]
    out = bench("varlen_attn", vl, q, k, v)
    print("max diff varlen vs dense", (out - ref).abs().max().item())
except Exception as e:  # noqa: BLE001
    print("varlen_attn unavailable:", type(e).__name__, str(e)[:200])
try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mm(b, h, qi, ki):
        return (doc[qi] == doc[ki]) & (qi >= ki)
    bm = create_block_mask(mm, None, None, T, T, device=dev)
    flex = torch.compile(flex_attention)

    def fx(q, k, v):
        return flex(q, k, v, block_mask=bm, enable_gqa=True)
    out = bench("flex_attention (compiled)", fx, q, k, v)
    print("max diff flex vs dense", (out - ref).abs().max().item())
except Exception as e:  # noqa: BLE001
    print("flex unavailable:", type(e).__name__, str(e)[:300])
