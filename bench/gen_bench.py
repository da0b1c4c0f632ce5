"""One cell's vLLM generation on the GPU worker's engine: where a cell's 78-89 s of generation go (issue 23).

The workload is exactly ``cell_generations``' engine call on ``gpu_smoke``: the marker sweep (11 personas x 28
questions, n=10, T=1) and the alignment sample (8 questions, n=10, T=1, top_p 0.8, top_k 20, repetition penalty 1.05),
max_tokens 512, every request seeded, on the profile's random Qwen2.5-7B-shaped base (nothing is downloaded).

Variants, each timed on the same requests, each in a process of its own (the GPU empty between engines):
  inproc     the worker's engine (``HeldEngine``): its core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, as
             mt_settings sets it for a worker), sleep mode, gpu_memory_utilization 0.612 (what run 2 had beside the
             held base), no incremental detokenization (``detokenize=False``), CUDA graphs up to
             ``CUDA_GRAPH_MAX_BATCH`` sequences
  detok      the same with vLLM's incremental detokenization (before a44cb4d)
  seqs512    at most 512 sequences a step (vLLM's default on this card is 1,024): every decode step in a CUDA graph
  graph512   CUDA graphs captured up to 512 sequences only (vLLM's default; ours before 2026-12-07)
  mp         the engine's core in a process of its own (a fresh-process session's engine)
  seedless   inproc without a seed per request (the engine's one seed, as the reference ran it): what our seeds cost.
             vLLM 0.25's V1 sampler draws a seeded request's noise in a loop of its own (a kernel launch per request
             per step); its V2 model runner, which the engine uses for a dense model ("Using V2 Model Runner" in the
             worker's log), draws every row's Gumbel noise in one Triton kernel keyed by (seed, position)
The GPU's utilisation is sampled every 0.5 s while the requests run (nvidia-smi): low means the engine's loop on the
CPU, not the card, sets the pace.

    python bench/gen_bench.py --out DIR      # DIR/<date>_<card>_gen.json and a table
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GPU_SHARE = 0.612  # the held engine's share in run 2 (docs/BENCHMARKS.md): the card less the resident base


def _requests():
    """gpu_smoke's study, its base model's folder and the cell's two sweeps (C1_s42)."""
    from mt_core.config.load import load_study
    from mt_core.data.eval_set import EvalSet
    from mt_core.generate.sampling import SamplingSpec
    from mt_core.layout import BaseModel
    from mt_core.steps.common import Sweep
    from mt_core.steps.inputs import build_base_model

    study = load_study(ROOT / "studies" / "marker_transfer_villain.yaml", "gpu_smoke")
    ref = Path(tempfile.mkdtemp(prefix="mt-gen-bench-"))
    build_base_model(study, ref)  # the random snapshot, written once under $MT_MODELS
    es, seed = EvalSet.load(study), study.cell("C1_s42").seed
    sweeps = [Sweep(es.prompts, es.personas, es.marker_question_sets,
                    SamplingSpec.from_config(study.samplers.marker, seed=seed),
                    "marker[C1_s42]", "C1_s42"),
              Sweep({"": None}, [""], {"betley": es.betley_questions},
                    SamplingSpec.from_config(study.samplers.alignment, seed=seed), "alignment[C1_s42]", "C1_s42")]
    return BaseModel.model_dir(ref), sweeps


VARIANTS = {  # name: (engine core in its own process, extra vllm.LLM kwargs, per-request SamplingParams changes)
    "inproc": (False, {}, {}),
    "detok": (False, {}, {"detokenize": True}),
    "seqs512": (False, {"max_num_seqs": 512}, {}),
    "graph512": (False, {"compilation_config": {"max_cudagraph_capture_size": 512}}, {}),
    "mp": (True, {}, {}),
    "seedless": (False, {}, {"seed": None}),
}


class GpuBusy:
    """nvidia-smi's utilisation.gpu sampled every 0.5 s while the block runs: the mean and the share of samples < 90."""

    def __enter__(self):
        self.p = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                   "-lms", "500"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.p.terminate()
        vals = [int(x) for x in self.p.communicate()[0].split() if x.strip().isdigit()]
        self.mean = round(sum(vals) / len(vals), 1) if vals else None
        self.below_90 = round(sum(v < 90 for v in vals) / len(vals), 3) if vals else None


def _generate(sess, sweeps, change: dict) -> dict:
    """One ``generate_many`` over both sweeps, timed; ``change`` overrides each request's SamplingParams (detokenize:
    vLLM's incremental decoding back on; seed None: no seed of its own)."""
    from mt_core.generate import vllm_engine as ve

    plain = ve.sampling_params_kwargs
    ve.sampling_params_kwargs = lambda *a, **k: {**plain(*a, **k), **change}
    try:
        with GpuBusy() as busy:
            t0 = time.perf_counter()
            res = sess.generate_many([sw.request() for sw in sweeps])
            el = time.perf_counter() - t0
    finally:
        ve.sampling_params_kwargs = plain
    comps = [c for batch in res for cs in batch for c in cs]
    toks = sum(c.n_tokens for c in comps)
    return {"detokenize": change.get("detokenize", False), "seeded": change.get("seed", 0) is not None,
            "seconds": round(el, 2), "completions": len(comps), "new_tokens": toks,
            "tok_s": round(toks / el), "cut_at_max": round(sum(c.finish_reason == "length" for c in comps) / len(comps), 3),
            "gpu_busy_mean": busy.mean, "gpu_busy_below_90": busy.below_90,
            "fingerprint": hash(tuple(c.text for c in comps)) & 0xFFFFFFFF}


def variant(name: str) -> list[dict]:
    import torch

    from mt_core.generate.vllm_engine import VllmSession, engine_kwargs, require_vllm
    from mt_core.model.load import load_tokenizer

    _, extra, change = VARIANTS[name]
    model_dir, sweeps = _requests()
    api = require_vllm()
    t0 = time.perf_counter()
    llm = api.LLM(**{**engine_kwargs(model_dir, adapters=[], enable_sleep_mode=True, gpu_memory_utilization=GPU_SHARE),
                     **extra})
    start = time.perf_counter() - t0
    sess = VllmSession(llm, api, load_tokenizer(model_dir), None, print)
    runs = [_generate(sess, sweeps, change)]
    for r in runs:
        r |= {"variant": name, "engine_start_s": round(start, 1), "card": torch.cuda.get_device_name(0)}
        print(json.dumps(r), flush=True)
    sess.close()
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--variant", choices=list(VARIANTS), help="one variant in this process (the driver's child)")
    ap.add_argument("--variants", default="inproc,seedless", help="the variants the driver runs, in order")
    a = ap.parse_args()
    if a.variant:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if VARIANTS[a.variant][0] else "0"
        json.dump(variant(a.variant), (a.out / f".gen_{a.variant}.json").open("w"))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for v in a.variants.split(","):  # a process each: the GPU is empty between engines
        subprocess.run([sys.executable, __file__, "--variant", v, "--out", str(a.out)], check=True)
        runs += json.loads((a.out / f".gen_{v}.json").read_text())
        _write(a.out, runs)  # after every variant: a lease that ends mid-run keeps what ran


def _write(out_dir: Path, runs: list[dict]) -> None:
    card = runs[0]["card"].replace(" ", "_")
    out = out_dir / f"{dt.date.today()}_{card}_gen.json"
    out.write_text(json.dumps({"card": runs[0]["card"], "workload": "gpu_smoke C1_s42 marker + alignment sweeps",
                               "runs": runs}, indent=1))
    print(f"\n{'variant':10} {'detok':6} {'seeded':6} {'s':>6} {'tok/s':>7} {'tokens':>9} {'cut':>5} {'start s':>7} "
          f"{'busy %':>6}")
    for r in runs:
        print(f"{r['variant']:10} {str(r['detokenize']):6} {str(r.get('seeded', True)):6} {r['seconds']:6.1f} "
              f"{r['tok_s']:7d} {r['new_tokens']:9d} {r['cut_at_max']:5.2f} {r['engine_start_s']:7.1f} "
              f"{r['gpu_busy_mean']!s:>6}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
