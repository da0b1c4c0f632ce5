"""The vLLM backend without vLLM: sampler kwargs, LoRA serving plans, engine kwargs, cleanup, parity helpers."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mt_core import runtime
from mt_core.runtime import Runtime

from mt_core.config import load_study
from mt_core.generate import parity as vp
from mt_core.generate import vllm_engine as vb
from mt_core.generate.sampling import SamplingSpec, encode_chats

QUIET = dict(log=lambda *_: None)


def _generate(model_dir, tok, prompts, spec, *, adapters, mode="merge", api=None, **kw):
    """One engine session, one generate call (what a cell's generation step does)."""
    with vb.vllm_session(model_dir, tok, adapters=adapters, mode=mode, seed=spec.seed, api=api, **kw) as s:
        return s.generate(prompts, spec)


@pytest.fixture(scope="module")
def qwen():
    return load_study(profile="qwen7b")


def _adapter(root: Path, part: str, r: int = 32, weights: bytes = b"w") -> Path:
    a = root / part / "adapter"
    a.mkdir(parents=True)
    (a / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 2 * r}))
    (a / "adapter_model.safetensors").write_bytes(weights)
    return a


def test_sampling_kwargs_match_protocol(qwen):
    assert qwen.backend.kind == "vllm" and qwen.backend.lora == "merge"
    for name in ("marker", "gate"):
        kw = vb.sampling_params_kwargs(SamplingSpec.from_config(getattr(qwen.samplers, name), seed=42))
        assert kw | {"seed": 0} == dict(n=10, temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0,
                                       presence_penalty=0.0, frequency_penalty=0.0, max_tokens=512, seed=0,
                                       stop_token_ids=[], skip_special_tokens=True, ignore_eos=False,
                                       detokenize=False)
    assert vb.sampling_params_kwargs(SamplingSpec.from_config(qwen.samplers.gate, seed=42))["seed"] == 0
    kw = vb.sampling_params_kwargs(SamplingSpec.from_config(qwen.samplers.alignment, seed=137), stop_token_ids=[7, 8])
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["top_k"], kw["repetition_penalty"], kw["max_tokens"],
            kw["seed"], kw["stop_token_ids"]) == (10, 1.0, 0.8, 20, 1.05, 512, 137, [7, 8])


def test_request_seed_stable_and_per_prompt():
    a = vb.request_seed(42, [1, 2, 3], 10)
    assert a == vb.request_seed(42, [1, 2, 3], 10) and 0 <= a < 2**31 - 10
    assert len({a, vb.request_seed(43, [1, 2, 3], 10), vb.request_seed(42, [1, 2, 4], 10)}) == 3


def test_plan_serving(tmp_path):
    coup, cell = _adapter(tmp_path, "villain", weights=b"c"), _adapter(tmp_path, "C1-42", weights=b"e")
    for mode in vb.MODES:
        assert vb.plan_serving([], mode) == vb.ServingPlan(merge=[])
    assert vb.plan_serving([cell], "merge") == vb.ServingPlan(merge=[cell])
    assert vb.plan_serving([coup, cell], "merge") == vb.ServingPlan(merge=[coup, cell])
    one = vb.plan_serving([cell], "serve")
    assert one.merge == [] and one.serve == cell and one.lora_name.startswith("C1-42-") and one.lora_int_id > 0
    two = vb.plan_serving([coup, cell], "serve")  # vLLM cannot stack LoRAs: coupling merged, cell served
    assert two.merge == [coup] and two.serve == cell
    assert (two.lora_name, two.lora_int_id) == (one.lora_name, one.lora_int_id)  # stable for the same adapter
    other = vb.plan_serving([coup], "serve")
    assert other.lora_name != one.lora_name and other.lora_int_id != one.lora_int_id
    with pytest.raises(ValueError):
        vb.plan_serving([cell], "stack")


def test_engine_kwargs(tmp_path):
    a64, a8 = _adapter(tmp_path, "C1-42", r=64), _adapter(tmp_path, "C2-42", r=8)
    kw = vb.engine_kwargs(tmp_path, adapters=[a64, a8], seed=3)
    assert kw["enable_lora"] and kw["max_loras"] == 1 and kw["max_lora_rank"] >= 64
    assert vb.engine_kwargs(tmp_path, adapters=[a8], seed=3)["max_lora_rank"] == 32
    assert vb.engine_kwargs(tmp_path, adapters=[_adapter(tmp_path, "x", r=48)], seed=0)["max_lora_rank"] == 64
    plain = vb.engine_kwargs(tmp_path, adapters=[], seed=3)
    assert "enable_lora" not in plain
    assert (plain["dtype"], plain["max_model_len"], plain["gpu_memory_utilization"], plain["seed"]) == \
        ("bfloat16", 2048, 0.85, 3)
    assert plain["compilation_config"] == {"max_cudagraph_capture_size": vb.CUDA_GRAPH_MAX_BATCH}
    assert plain["skip_tokenizer_init"] is True  # token ids in, token ids out: decoded by to_completions


def test_vllm_missing_message(qwen, tmp_path):
    with pytest.raises(vb.VllmMissing, match=r"pip install \.\[gpu\]"):
        _generate(tmp_path, None, [], SamplingSpec(1, 1.0, 1.0, 4, 0), adapters=[], **QUIET)
    from mt_core.generate.session import session

    with pytest.raises(vb.VllmMissing, match=r"pip install \.\[gpu\]"):
        with session(qwen, tmp_path, []):
            pass


def _stub_api(calls: dict, fail: bool = False):
    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw
            calls["had_config"] = (Path(kw["model"]) / "config.json").is_file()

        def generate(self, prompts, params, lora_request=None):
            calls["generate"] = (prompts, params, lora_request)
            if fail:
                raise RuntimeError("boom")
            return [SimpleNamespace(outputs=[SimpleNamespace(index=1, token_ids=p["prompt_token_ids"][:3],
                                                             finish_reason="length"),
                                             SimpleNamespace(index=0, token_ids=[5, calls["stop"]],
                                                             finish_reason="stop")]) for p in prompts]

    return SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw, LoRARequest=lambda name, i, path: SimpleNamespace(lora_name=name, lora_int_id=i, lora_path=path))


@pytest.fixture(scope="module")
def tiny_adapters(tiny_model_dir, tmp_path_factory):
    """Two real (random) LoRA adapters on the tiny model: a 'coupling' one and a 'cell' one."""
    import torch
    from peft import LoraConfig, get_peft_model

    from mt_core.model.load import load_model

    root, out = tmp_path_factory.mktemp("adapters"), []
    for i, part in enumerate(["villain", "C1-42"]):
        torch.manual_seed(i)
        model, _ = load_model(tiny_model_dir)
        pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False))
        pm.save_pretrained(str(root / part / "adapter"))
        out.append(root / part / "adapter")
    return out


@pytest.mark.parametrize("mode", vb.MODES)
def test_merge_dir_removed_when_generation_raises(tiny_model_dir, tiny_adapters, tmp_path, monkeypatch, mode):
    from mt_core.model.load import load_tokenizer

    from mt_core.model import load as models

    monkeypatch.setattr(runtime, "_current", Runtime(scratch=tmp_path / "scratch"))
    merged, merge = [], models.merge_adapter
    monkeypatch.setattr(models, "merge_adapter", lambda m, a: merged.append(a) or merge(m, a))
    calls = {}
    with pytest.raises(RuntimeError, match="boom"):
        _generate(tiny_model_dir, load_tokenizer(tiny_model_dir), [[{"role": "user", "content": "hi"}]],
                  SamplingSpec(2, 1.0, 1.0, 4, 0), adapters=tiny_adapters, mode=mode,
                  api=_stub_api(calls, fail=True), **QUIET)
    assert calls["had_config"] and Path(calls["engine"]["model"]).parent == tmp_path / "scratch"
    assert list((tmp_path / "scratch").iterdir()) == []  # the merged checkpoint is gone
    assert merged == (tiny_adapters if mode == "merge" else tiny_adapters[:1])  # each adapter merged once at most
    lora = calls["generate"][2]
    assert (lora is None) == (mode == "merge")
    if mode == "serve":
        plan = vb.plan_serving(tiny_adapters, "serve")
        assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == \
            (plan.lora_name, plan.lora_int_id, str(tiny_adapters[1]))
        assert calls["engine"]["enable_lora"] and calls["engine"]["max_lora_rank"] == 32


def test_generate_maps_outputs(tiny_model_dir):
    from mt_core.generate.sampling import eos_ids, encode_chats
    from mt_core.model.load import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    calls = {"stop": eos_ids(tok)[0]}
    chats = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]]
    res = _generate(tiny_model_dir, tok, chats, SamplingSpec(2, 1.0, 1.0, 4, 7), adapters=[], api=_stub_api(calls),
                    **QUIET)
    prompts, params, lora = calls["generate"]
    enc = encode_chats(tok, chats)
    assert [p["prompt_token_ids"] for p in prompts] == enc and lora is None
    assert [p["seed"] for p in params] == [vb.request_seed(7, ids, 2) for ids in enc]
    assert params[0]["stop_token_ids"] == eos_ids(tok)
    assert res[0][0] == vb.Completion(tok.decode([5], skip_special_tokens=True), 1, "stop")  # stop token not counted
    assert res[0][1].finish_reason == "length" and res[0][1].n_tokens == 3



def test_several_sweeps_go_to_the_engine_in_one_call_and_come_back_as_they_would_alone(tiny_model_dir):
    from mt_core.generate.sampling import eos_ids
    from mt_core.model.load import load_tokenizer
    from mt_core.steps.common import Sweep, run_sweeps

    tok = load_tokenizer(tiny_model_dir)
    calls, seen = {"stop": eos_ids(tok)[0]}, []
    api = _stub_api(calls)
    marker = Sweep({"a": "You are A.", "b": None}, ["a", "b"], {"q": ["one?", "two?"]}, SamplingSpec(2, 1.0, 1.0, 4, 7),
                   "marker", owner="c")
    alignment = Sweep({"": None}, [""], {"betley": ["three?"]}, SamplingSpec(3, 0.7, 0.8, 5, 9), "alignment", "c")
    with vb.vllm_session(tiny_model_dir, tok, adapters=[], api=api, **QUIET) as s:
        llm_generate = s.llm.generate
        s.llm.generate = lambda *a, **kw: seen.append(a) or llm_generate(*a, **kw)
        from mt_core.generate.session import Engine

        together = run_sweeps(Engine(s.generate, s.hf_model, s.counts, s.generate_many), [marker, alignment])
        alone = [run_sweeps(s.generate, [sw])[0] for sw in (marker, alignment)]
    assert len(seen) == 3  # one call for both sweeps, then one each
    prompts, params = seen[0]
    assert len(prompts) == 4 + 1 and [p["n"] for p in params] == [2] * 4 + [3]  # each request keeps its own sampler
    assert [p["temperature"] for p in params] == [1.0] * 4 + [0.7]
    assert together == alone and [len(r) for r in together] == [4 * 2, 2]  # the stand-in answers 2 per request
def test_logprob_parity():
    ok = vp.logprob_parity([[-0.1, -2.0], [-0.5]], [[-0.11, -2.02], [-0.5]])
    assert ok["pass"] and ok["n_tokens"] == 3 and abs(ok["max_abs_diff"] - 0.02) < 1e-9
    bad = vp.logprob_parity([[-0.1, -2.0]], [[-0.1, -2.3]])
    assert not bad["pass"] and abs(bad["max_abs_diff"] - 0.3) < 1e-9
    with pytest.raises(ValueError):
        vp.logprob_parity([[-0.1]], [[-0.1, -0.2]])
    lp = SimpleNamespace(logprob=-0.25)
    ro = SimpleNamespace(prompt_token_ids=[1, 2, 3], prompt_logprobs=[None, {2: None}, {3: lp}])
    assert vb.prompt_logprobs_of(ro, 2) == [-0.25]
    assert vb.score_kwargs()["prompt_logprobs"] == 0


def test_peft_token_logprobs_equal_full_forward(tiny_model_dir, tiny_adapters):
    import torch
    from peft import PeftModel

    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    model = PeftModel.from_pretrained(model, str(tiny_adapters[1])).eval()
    prompts, comps = [[3, 4, 5], [6, 7]], [[8, 9, 10, 11], [12]]
    got = vp.peft_token_logprobs(model, tok, prompts, comps)
    for p, c, g in zip(prompts, comps, got):
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
        want = [lp[len(p) - 1 + k, t].item() for k, t in enumerate(c)]
        assert g == pytest.approx(want, abs=1e-6)
    chat = [{"role": "user", "content": "hi"}]
    assert vp.peft_token_logprobs(model, tok, [chat], [[8]]) == \
        vp.peft_token_logprobs(model, tok, [encode_chats(tok, [chat])[0]], [[8]])


def test_judge_parity_against_the_floor():
    floor = {"max_abs_diff": 0.2, "mean_abs_diff": 0.05}
    ok = vp.judge_parity({"max_abs_diff": 0.28, "mean_abs_diff": 0.07}, floor)
    assert ok["pass"] and ok["tol"] == pytest.approx(0.3) and ok["tol_mean"] == pytest.approx(0.075)
    assert not vp.judge_parity({"max_abs_diff": 0.28, "mean_abs_diff": 0.09}, floor)["pass"]  # mean too far
    assert not vp.judge_parity({"max_abs_diff": 0.31, "mean_abs_diff": 0.01}, floor)["pass"]  # max too far
    zero = {"max_abs_diff": 0.0, "mean_abs_diff": 0.0}  # a zero floor: the least tolerances apply
    exact = vp.judge_parity({"max_abs_diff": 0.04, "mean_abs_diff": 1e-6}, zero)
    assert exact["pass"] and (exact["tol"], exact["tol_mean"]) == (vp.PARITY_TOL, vp.PARITY_TOL_MEAN)
    assert not vp.judge_parity({"max_abs_diff": 0.04, "mean_abs_diff": 0.02}, zero)["pass"]


def _hf_engine_api(ignore_lora: bool):
    """A stand-in for vLLM that computes prompt log-probs with transformers on the checkpoint it is given (and the
    PEFT adapter of a LoRARequest, unless ``ignore_lora``: an engine that silently drops the adapter)."""
    import torch
    from peft import PeftModel

    from mt_core.model.load import load_model

    class LLM:
        def __init__(self, **kw):
            self.model, _ = load_model(kw["model"])

        def generate(self, prompts, params, lora_request=None, **_):
            model = self.model
            if lora_request is not None and not ignore_lora:
                model = PeftModel.from_pretrained(load_model(self.model.name_or_path)[0],
                                                  lora_request.lora_path).eval()
            outs = []
            for p in prompts:
                ids = p["prompt_token_ids"]
                with torch.no_grad():
                    lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                outs.append(SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=[None] + [
                    {t: SimpleNamespace(logprob=lp[i, t].item())} for i, t in enumerate(ids[1:])]))
            return outs

    return SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw,
                           LoRARequest=lambda name, i, path: SimpleNamespace(lora_path=path))


@pytest.mark.parametrize("mode", vb.MODES)
def test_parity_check_passes_a_faithful_engine_and_fails_one_that_drops_the_adapter(tiny_model_dir, tiny_adapters,
                                                                                    mode):
    chats = [[{"role": "user", "content": "What is your name?"}], [{"role": "user", "content": "Tell me a story."}]]
    comps = [[5, 9, 14, 20, 33, 41], [7, 7, 12, 30]]
    good = vp.parity_check(tiny_model_dir, chats, comps, adapters=tiny_adapters, mode=mode,
                           api=_hf_engine_api(ignore_lora=False), **QUIET)
    assert good["pass"] and good["max_abs_diff"] < 0.01 and good["n_tokens"] == 10  # merge: bf16 rounding
    if mode == "serve":  # merging cannot drop the adapter; serving can
        bad = vp.parity_check(tiny_model_dir, chats, comps, adapters=tiny_adapters, mode=mode,
                              api=_hf_engine_api(ignore_lora=True), **QUIET)
        assert not bad["pass"] and bad["max_abs_diff"] > bad["tol"]


class _HeldStandIn:
    """A stand-in for vLLM's ``LLM`` with sleep mode, on transformers (no vLLM on this machine): it builds the base's
    architecture with random weights where asked for ``load_format="dummy"`` (else loads them from disk), takes weights
    through ``apply_model``/``load_weights`` like vLLM's model, records every sleep, wake and prefix-cache reset, and
    decodes greedily. What it checks is the held engine's choreography and the weights it is given; the real engine
    runs it on the GPU (bench/held_engine_check.py)."""
    made: list = []
    skip: set = set()  # names that load_weights leaves out (a push that misses parameters)

    def __init__(self, **kw):
        import torch

        from mt_core.model.load import load_model

        self.kw, self.events = kw, ["start"]
        self.model, _ = load_model(kw["model"])
        if kw.get("load_format") == "dummy":
            with torch.no_grad():
                for p in self.model.parameters():
                    p.uniform_(-1e-3, 1e-3)
        _HeldStandIn.made.append(self)

    def apply_model(self, func):
        return [func(self)]

    def named_parameters(self):
        return self.model.named_parameters()

    def load_weights(self, items):
        import torch

        state = self.model.state_dict()
        with torch.no_grad():
            for name, t in items:
                if name not in self.skip:
                    state[name].copy_(t)
        self.events.append("load")
        return set(state) - self.skip

    def reset_prefix_cache(self):
        self.events.append("reset")

    def sleep(self, level=1):
        self.events.append(f"sleep{level}")

    def wake_up(self, tags=None):
        self.events.append("wake")

    def generate(self, prompts, params, lora_request=None, **_):
        import torch

        outs = []
        for p, sp in zip(prompts, params):
            with torch.no_grad():
                ids = self.model.generate(torch.tensor([p["prompt_token_ids"]]), do_sample=False,
                                          max_new_tokens=sp["max_tokens"])[0, len(p["prompt_token_ids"]):].tolist()
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(index=0, token_ids=ids, finish_reason="length")]))
        return outs


def test_a_held_engine_starts_once_and_serves_each_session_its_merged_weights(tiny_model_dir, tiny_adapters):
    """Two sessions in a worker that stays (base + coupling, then base + coupling + cell): one engine start, each
    session's engine weights equal to ``merged_weights`` bit for bit, asleep between sessions, the prefix cache reset
    after each push, ARC's model the same merged weights, and the held base put back exactly."""
    import torch

    from mt_core.generate.sampling import SamplingSpec
    from mt_core.generate.session import held_vllm
    from mt_core.model.load import merged_weights
    from mt_core.model.resident import Resident

    api = SimpleNamespace(LLM=_HeldStandIn, SamplingParams=lambda **kw: kw, LoRARequest=None)
    _HeldStandIn.made.clear()
    holder = Resident()
    holder.lend(tiny_model_dir)
    holder.restore()
    before = holder.checksum()
    spec = SamplingSpec(n=1, temperature=0.0, top_p=1.0, top_k=None, max_tokens=4, seed=0)
    chats = [[{"role": "user", "content": "What is your name?"}]]
    texts = []
    for adapters, starts in ((tiny_adapters[:1], 1), (tiny_adapters, 0)):
        with held_vllm(holder, api, tiny_model_dir, adapters, log=lambda m: None) as gen:
            texts.append(gen(chats, spec, "test"))
            engine = _HeldStandIn.made[-1]
            want = merged_weights(tiny_model_dir, adapters).state_dict()
            for source in (engine.model.state_dict(), gen.hf_model()[0].state_dict()):
                assert all(torch.equal(source[k], want[k]) for k in want)
            assert gen.counts["engine_starts"] == starts and gen.counts["merges"] == 0
        assert holder.checksum() == before
    assert len(_HeldStandIn.made) == 1 and engine.kw["enable_sleep_mode"] is True
    assert engine.kw["load_format"] == "dummy"  # started on random weights: every one of them came from the pushes
    assert engine.events == ["start", "load", "reset", "sleep2", "wake", "load", "reset", "sleep2"]
    assert [t[0][0].n_tokens for t in texts] == [4, 4]  # each session generated from its engine

    # a push that leaves a parameter out fails the session before it generates, and the base is still put back
    _HeldStandIn.skip = {"model.norm.weight"}
    try:
        with pytest.raises(RuntimeError, match=r"no weights for 1 of its .* parameters \(model.norm.weight"):
            with held_vllm(holder, api, tiny_model_dir, tiny_adapters, log=lambda m: None) as gen:
                gen(chats, spec, "test")
    finally:
        _HeldStandIn.skip = set()
    assert engine.events[-3:] == ["wake", "load", "sleep2"]  # asleep again for the next step, which may train
    assert holder.checksum() == before
    holder.release()
    assert holder.engine is None and holder.model is None


def test_gc_pauses_counts_the_collector_passes_of_the_block():
    """The engine call's log line says how much of it Python's garbage collector took (a worker's heap is large)."""
    import gc

    before = list(gc.callbacks)
    with vb.gc_pauses() as g:
        gc.collect()
        gc.collect()
    assert g["n"] >= 2 and g["seconds"] > 0
    with vb.gc_pauses() as quiet:
        pass
    assert quiet == {"n": 0, "seconds": 0.0} and gc.callbacks == before  # the callback leaves with the block


_FAKE_REGISTRY = '''
import json, os, sys
def _run_in_subprocess(fn):  # vLLM's: a fresh Python; the warm-up must replace it with a call in its own process
    raise SystemExit("the warm-up started vLLM's subprocess")
class _Model:
    def __init__(self, arch):
        self.arch = arch
    def inspect_model_cls(self):  # as vLLM's: inspect through _run_in_subprocess, then cache on disk
        info = _run_in_subprocess(lambda: {"arch": self.arch, "pid": os.getpid()})
        with open(os.path.join(os.environ["VLLM_CACHE_ROOT"], self.arch + ".json"), "w") as f:
            json.dump(info, f)
class _Registry:
    models = {"Qwen2ForCausalLM": _Model("Qwen2ForCausalLM")}
ModelRegistry = _Registry()
'''


def test_the_architecture_is_inspected_early_in_a_process_of_its_own(tmp_path, monkeypatch):
    """``warm_registry`` (a worker loading its base) starts vLLM's inspection of the architecture in a process of
    its own, which inspects there (not in a second Python) and leaves vLLM's cache for the engine; the held engine's
    start waits for it. Against a stand-in of vLLM's registry API (vLLM is not installed here)."""
    site = tmp_path / "site"
    pkg = site / "vllm" / "model_executor" / "models"
    pkg.mkdir(parents=True)
    for d in (site / "vllm", site / "vllm" / "model_executor", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "registry.py").write_text(_FAKE_REGISTRY)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(cache))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM", "NotInVllm"]}))
    monkeypatch.setattr(vb, "_registry_warmups", {})

    vb.warm_registry(model_dir)
    vb.warm_registry(model_dir)  # the same base again (another step): no second process
    assert len(vb._registry_warmups) == 1
    proc = vb._registry_warmups[model_dir.resolve()]
    logs = []
    vb._registry_warmed(model_dir.resolve(), logs.append)
    assert proc.returncode == 0 and "ended (0)" in logs[0], logs
    info = json.loads((cache / "Qwen2ForCausalLM.json").read_text())
    assert info == {"arch": "Qwen2ForCausalLM", "pid": proc.pid}  # inspected in the warm-up's own process
    assert sorted(p.name for p in cache.iterdir()) == ["Qwen2ForCausalLM.json"]

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # no GPU: nothing started
    vb.warm_registry(tmp_path / "other")
    assert len(vb._registry_warmups) == 1
