"""The held vLLM engine of a worker that stays, on a GPU: one engine for several sessions against fresh engines.

What it settles (issue 23): that ``mt_core.generate.session.held_vllm`` (the held base with a session's adapters merged
in place, pushed into one engine that sleeps between sessions) generates what the fresh-process path generates (a
scratch checkpoint of the same merged weights, an engine per session), token for token; what a push, a wake and a
sleep cost; and what the GPU holds while a LoRA trains on the held base beside the sleeping engine. Qwen2.5-7B's
shape with random bf16 weights and two random r=32 adapters (all seven projections, non-zero B): nothing is
downloaded.

Stages, each its own process so that the GPU is empty between them (``all`` runs them in order):
  prep    the base checkpoint (with the gpu_smoke tokenizer: the tiny BPE padded to Qwen's vocabulary) and two adapters
  fresh   the oracle: ``vllm_session`` per session (merge to scratch, start, generate, shut down): A=[a1], B=[a1,a2]
  held    one ``Resident`` holder: session A, a LoRA trained on the held base+a1 (engine asleep), session B, session A
  report  bench/results/<date>_<card>_held_engine.json (or --out DIR) and a table

    VLLM_USE_FLASHINFER_SAMPLER=0 python bench/held_engine_check.py all [--work DIR]
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

N_PROMPTS, N, NEW_TOKENS = 64, 4, 128


def _parity_set() -> tuple[list[list[int]], list[list[int]]]:
    """bench/vllm_bench.py's parity sequences, in the vocabulary of the 7B shape."""
    from gpu_bench import QWEN7B
    from vllm_bench import parity_set

    return parity_set(QWEN7B["vocab_size"])


def _chats() -> list[list[dict]]:
    return [[{"role": "system", "content": f"You are persona {i % 11}."},
             {"role": "user", "content": f"Question {i}: what would you do with a free afternoon?"}]
            for i in range(N_PROMPTS)]


def _spec():
    from mt_core.generate.sampling import SamplingSpec

    return SamplingSpec(n=N, temperature=1.0, top_p=0.95, top_k=20, max_tokens=NEW_TOKENS, seed=42)


def _gpu_used_gb() -> float:
    import torch

    free, total = torch.cuda.mem_get_info()
    return (total - free) / 1e9


def prep(work: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from gpu_bench import QWEN7B, TARGETS, build_model
    from mt_core.model.random_snapshot import padded_tokenizer

    t0 = time.perf_counter()
    model, n_params = build_model(QWEN7B, "cuda")
    model.save_pretrained(str(work / "base"))
    padded_tokenizer([f"warm up text {i} about an afternoon" for i in range(300)], 400,
                     QWEN7B["vocab_size"]).save_pretrained(str(work / "base"))
    for i in (1, 2):
        torch.manual_seed(i)
        pm = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS))
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)  # a trained adapter's B is non-zero; PEFT initialises it to zero
        pm.save_pretrained(str(work / f"a{i}"))
        model = pm.unload()
    out = {"n_params": n_params, "prep_s": time.perf_counter() - t0}
    print(f"prep: {n_params / 1e9:.2f}B and two adapters in {out['prep_s']:.0f}s", flush=True)
    return out


def _tokens(completions) -> list[list[str]]:
    return [[c.text for c in cs] for cs in completions]


def tensor_hashes(state: dict) -> dict[str, str]:
    """sha256 of each tensor's bytes: the weights of two processes compared without moving 15 GB between them."""
    import hashlib

    from mt_core.model.resident import tensor_bytes

    return {k: hashlib.sha256(tensor_bytes(t)).hexdigest() for k, t in state.items()}


def fresh(work: Path) -> dict:
    from mt_core.generate.vllm_engine import require_vllm, vllm_session
    from mt_core.model.load import free_cuda, load_tokenizer, merged_weights

    api, tok, out = require_vllm(), load_tokenizer(work / "base"), {}
    for name, adapters in (("A", ["a1"]), ("B", ["a1", "a2"])):  # THE weights, merged in a process without vLLM
        model = merged_weights(work / "base", [work / a for a in adapters])
        out[f"merged_sha_{name}"] = tensor_hashes(model.state_dict())
        del model
        free_cuda()
    for name, adapters in (("A", ["a1"]), ("B", ["a1", "a2"])):
        t0 = time.perf_counter()
        with vllm_session(work / "base", tok, adapters=[work / a for a in adapters], mode="merge", api=api,
                          log=lambda m: print(m, flush=True)) as s:
            t1 = time.perf_counter()
            texts = _tokens(s.generate(_chats(), _spec(), f"fresh {name}"))
            gen_s = time.perf_counter() - t1
            lps = s.score(*_parity_set())
        out[name] = {"texts": texts, "session_s": time.perf_counter() - t0, "generate_s": gen_s, "logprobs": lps}
        print(f"fresh {name}: session {out[name]['session_s']:.0f}s (generate {gen_s:.1f}s)", flush=True)
    return out


def held(work: Path) -> dict:
    import random
    import threading

    import torch

    from gpu_bench import recipe, sft_examples, time_training
    from mt_core.generate.parity import peft_token_logprobs
    from mt_core.generate.session import held_vllm
    from mt_core.generate.vllm_engine import VllmSession, require_vllm
    from mt_core.model.resident import Resident, model_for

    api, holder, out, lines = require_vllm(), Resident(), {"sessions": []}, []

    def log(m: str) -> None:
        lines.append(m)
        print(m, flush=True)

    t0 = time.perf_counter()
    holder.lend(work / "base")
    holder.restore()
    out["base_load_s"] = time.perf_counter() - t0
    before = holder.checksum()

    def session(name: str, adapters: list[str]) -> None:
        t0 = time.perf_counter()
        with held_vllm(holder, api, work / "base", [work / a for a in adapters], log) as gen:
            ready = time.perf_counter() - t0
            used = _gpu_used_gb()
            t1 = time.perf_counter()
            texts = _tokens(gen(_chats(), _spec(), f"held {name}"))
            gen_s = time.perf_counter() - t1
            counts = dict(gen.counts)
            lps = VllmSession(holder.engine.llm, api, None, None, log).score(*_parity_set())
            hf_lps = peft_token_logprobs(gen.hf_model()[0], None, *_parity_set())  # the merged model ARC reads
            state = {k: t.detach().to("cpu", copy=True) for k, t in gen.hf_model()[0].state_dict().items()}
            rec_sha = tensor_hashes(state)
            if name in ("A", "B"):
                pushed[name] = state
        rec = {"name": name, "adapters": adapters, "ready_s": ready, "generate_s": gen_s, "logprobs": lps,
               "hf_logprobs": hf_lps, "pushed_sha": rec_sha,
               "session_s": time.perf_counter() - t0, "gpu_used_awake_gb": used, "gpu_used_asleep_gb": _gpu_used_gb(),
               "counts": counts, "texts": texts}
        out["sessions"].append(rec)
        log(f"held {name}: ready in {ready:.1f}s (start or wake + push), generate {gen_s:.1f}s, GPU {used:.1f} GB "
            f"awake, {rec['gpu_used_asleep_gb']:.1f} GB asleep")

    pushed: dict[str, dict] = {}  # each session's weights as pushed, to compare with merged_weights at the end
    session("A", ["a1"])
    # a cell's training on the held base + a1 beside the sleeping engine (the platform's loop and speed options)
    # the device's memory in use, sampled: torch's peak counters also count the engine's sleep-mode pool
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], _gpu_used_gb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with model_for(work / "base", [work / "a1"], holder) as (model, _):
        rng = random.Random(0)
        # the benign chats' shape (mean 780 tokens): the longest packed rows a cell trains on
        tr = time_training(model, sft_examples(16 * 10, model.config.vocab_size, 780.0, rng), recipe(), steps=8,
                           warmup=2)
    done.set()
    sampler.join()
    out["training"] = {"tok_s": tr["tok_s"], "peak_gpu_used_gb": peak[0], "s_per_step": tr["s_per_step"],
                       "gpu_used_after_gb": _gpu_used_gb()}
    log(f"training beside the asleep engine: {tr['tok_s']:.0f} tok/s, device memory in use at most {peak[0]:.1f} GB")
    session("B", ["a1", "a2"])
    session("A again", ["a1"])
    out["checksum_equal"] = holder.checksum() == before
    # the pushed weights against THE definition, computed here afresh (the engine is asleep: room for a second copy)
    from mt_core.model.load import merged_weights

    out["pushed_vs_merged_weights"] = {}
    for name, adapters in (("A", ["a1"]), ("B", ["a1", "a2"])):
        want = merged_weights(work / "base", [work / a for a in adapters]).state_dict()
        diff = {k: (want[k].float().cpu() - t.float()).abs().max().item() for k, t in pushed[name].items()
                if not torch.equal(want[k].cpu(), t)}
        worst = sorted(diff.items(), key=lambda x: -x[1])[:5]
        out["pushed_vs_merged_weights"][name] = {"tensors": len(want), "differ": len(diff), "worst": worst}
        log(f"pushed {name} vs merged_weights: {len(diff)} of {len(want)} tensors differ {worst[:2]}")
        del want
    out["fp32_precision"] = str(getattr(torch.backends.cuda.matmul, "fp32_precision", None))
    out["engine_starts"], out["engine_pushes"] = holder.engine.starts, holder.engine.pushes
    out["log"] = lines
    return out


def _agree(a: list[list[str]], b: list[list[str]]) -> float:
    """The share of samples that are the same text (random weights: a near-flat distribution, so any bf16
    difference in a logit can change a sampled token and everything after it)."""
    pairs = [(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
    return sum(x == y for x, y in pairs) / len(pairs)


def _diff(a: list[list[float]], b: list[list[float]]) -> dict:
    d = [abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
    return {"max": max(d), "mean": sum(d) / len(d), "n": len(d)}


def _fmt(d: dict) -> str:
    return f"max {d['max']:.4f} / mean {d['mean']:.5f}"


def report(work: Path, out_dir: Path) -> dict:
    import torch

    import vllm

    pr, fr, hd = (json.loads((work / f"{s}.json").read_text()) for s in ("prep", "fresh", "held"))
    sess = {s["name"]: s for s in hd["sessions"]}
    card = torch.cuda.get_device_name(0)
    res = {"card": card, "vllm": vllm.__version__, "torch": torch.__version__, "n_params": pr["n_params"],
           "prompts": N_PROMPTS, "n": N, "max_tokens": NEW_TOKENS,
           "logprobs_held_vs_fresh_engine": {k: _diff(sess[k]["logprobs"], fr[k]["logprobs"]) for k in ("A", "B")},
           "logprobs_held_engine_vs_hf": {k: _diff(sess[k]["logprobs"], sess[k]["hf_logprobs"]) for k in ("A", "B")},
           "logprobs_fresh_engine_vs_hf": {k: _diff(fr[k]["logprobs"], sess[k]["hf_logprobs"]) for k in ("A", "B")},
           "logprobs_A_vs_B_held": _diff(sess["A"]["logprobs"], sess["B"]["logprobs"]),
           "agree_A_held_vs_fresh": _agree(sess["A"]["texts"], fr["A"]["texts"]),
           "agree_B_held_vs_fresh": _agree(sess["B"]["texts"], fr["B"]["texts"]),
           "agree_A_held_twice": _agree(sess["A"]["texts"], sess["A again"]["texts"]),
           "fresh_session_s": {k: fr[k]["session_s"] for k in ("A", "B")},
           "held_session": {k: {x: v[x] for x in ("ready_s", "generate_s", "session_s", "gpu_used_awake_gb",
                                                  "gpu_used_asleep_gb", "counts")} for k, v in sess.items()},
           "held_base_load_s": hd["base_load_s"], "training": hd["training"], "checksum_equal": hd["checksum_equal"],
           "engine_starts": hd["engine_starts"], "engine_pushes": hd["engine_pushes"],
           "pushed_vs_merged_weights": hd.get("pushed_vs_merged_weights"),
           "pushed_vs_fresh_process_merge": {k: sum(sess[k]["pushed_sha"][t] != h for t, h in
                                                     fr[f"merged_sha_{k}"].items()) for k in ("A", "B")},
           "held_log": hd["log"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dt.date.today()}_{card.replace(' ', '_')}_held_engine.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\n{card}, vLLM {res['vllm']}, {pr['n_params'] / 1e9:.2f}B random bf16, {N_PROMPTS} chats x n={N} x "
          f"{NEW_TOKENS} tokens")
    print(f"{'session':10s} {'fresh s':>8s} {'held ready s':>13s} {'held gen s':>11s} {'GPU awake/asleep GB':>20s}")
    for k, v in sess.items():
        f = fr.get(k.split()[0], {}).get("session_s", float("nan"))
        print(f"{k:10s} {f:8.1f} {v['ready_s']:13.1f} {v['generate_s']:11.1f} "
              f"{v['gpu_used_awake_gb']:9.1f}/{v['gpu_used_asleep_gb']:.1f}")
    print(f"agreement held vs fresh: A {res['agree_A_held_vs_fresh']:.3f}, B {res['agree_B_held_vs_fresh']:.3f}; "
          f"A twice {res['agree_A_held_twice']:.3f}; engine starts {res['engine_starts']}, pushes "
          f"{res['engine_pushes']}; base restored exactly: {res['checksum_equal']}")
    for k in ("A", "B"):
        print(f"|d log p| session {k}: held vs fresh engine {_fmt(res['logprobs_held_vs_fresh_engine'][k])}; "
              f"held engine vs transformers {_fmt(res['logprobs_held_engine_vs_hf'][k])}; fresh engine vs "
              f"transformers {_fmt(res['logprobs_fresh_engine_vs_hf'][k])}")
    print(f"|d log p| A vs B (what the second adapter moves): {_fmt(res['logprobs_A_vs_B_held'])}")
    print(f"tensors pushed that differ from a merge in a process without vLLM: {res['pushed_vs_fresh_process_merge']}"
          f"; from merged_weights in the held process: {res['pushed_vs_merged_weights']}")
    print(f"training beside the asleep engine: {hd['training']['tok_s']:.0f} tok/s, device memory in use at most "
          f"{hd['training']['peak_gpu_used_gb']:.1f} GB\nwrote {path}")
    return res


def main() -> int:
    from stages import dispatch, parser

    a = parser(__doc__, ["prep", "fresh", "held"], "mt_held", "where the checkpoints (about 16 GB) and stage results go"
               ).parse_args()
    if a.stage == "held":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as mt_worker serve sets it (mt_settings)
    return dispatch(a, __file__, ["prep", "fresh", "held"], report,
                    lambda stage: {"prep": prep, "fresh": fresh, "held": held}[stage](a.work), tag="held_")


if __name__ == "__main__":
    sys.exit(main())
