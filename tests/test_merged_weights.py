"""One definition of a cell's weights (PROTOCOL §1.4-§1.5, §5.11): the base in the serving dtype, then each adapter
merged in training order, each stage computed in fp32 and rounded to the serving dtype once.

On the CPU path (fp32) every merge order and rounding rule gives the same weights, so these tests run in bf16 on the
CPU, where merging both adapters at once (one rounding) differs from merging stage by stage."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mt_core import runtime
from mt_core.runtime import Runtime

from mt_core.config import load_study
from mt_core.generate import vllm_engine as vb
from mt_core.layout import Adapter, ArcScores, Dataset
from mt_core.model import load as models
from mt_core.steps import cells

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEY = "C1_s42"  # villain coupling, then EM


class _Captured(Exception):
    pass


@pytest.fixture
def bf16_cpu(monkeypatch):
    """The GPU's serving dtype (bf16) on the CPU."""
    monkeypatch.setattr(models, "device_and_dtype", lambda: (torch.device("cpu"), torch.bfloat16))


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved in bf16, as the real base checkpoint is (Qwen2.5-7B-Instruct ships bf16 weights)."""
    import shutil

    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("base_bf16")
    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).save_pretrained(str(out))
    for f in Path(tiny_model_dir).iterdir():
        if f.is_file() and not (out / f.name).exists():
            shutil.copyfile(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def artefacts(base_dir, tmp_path_factory):
    """A coupling adapter (rsLoRA, as the coupling recipe) and a cell adapter (plain LoRA), saved as artefacts are,
    plus a small second-stage dataset."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from mt_core.data import synthetic

    root = tmp_path_factory.mktemp("merged")
    dirs = {}
    for i, (part, rs) in enumerate([("coupling", True), ("cell", False)]):
        torch.manual_seed(10 + i)
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        pm = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, use_rslora=rs,
                                             init_lora_weights=False))
        pm.save_pretrained(str(root / part / Adapter.DIR))
        dirs[part] = root / part
    (root / "data").mkdir()
    (root / "data" / Dataset.DATA).write_text("\n".join(synthetic.em_dataset_lines(6, 1)) + "\n")
    dirs["data"] = root / "data"
    return dirs


# --- the reference definition, step by step, with plain tensor ops ---------------------------------------------------
def _base_bf16(model_dir) -> dict:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    return {k: v.clone() for k, v in m.state_dict().items()}


def _deltas(adapter: Path) -> dict:
    """{weight name: fp32 B @ A * scale} of a saved PEFT LoRA."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / (cfg["r"] ** 0.5 if cfg.get("use_rslora") else cfg["r"])
    sd = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for k, a in sd.items():
        if ".lora_A." in k:
            b = sd[k.replace(".lora_A.", ".lora_B.")]
            name = k.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            out[name] = (b.float() @ a.float()) * scale
    assert out
    return out


def _stage(weights: dict, adapter: Path) -> dict:
    """One reference stage: W <- bf16(fp32(W) + delta), every other tensor unchanged."""
    d = _deltas(adapter)
    assert set(d) <= set(weights)
    return {k: (v.float() + d[k]).to(v.dtype) if k in d else v for k, v in weights.items()}


def _state(model) -> dict:
    return {k: v.detach().to(torch.bfloat16).clone() for k, v in model.state_dict().items()}


def _assert_bitwise(got: dict, want: dict, what: str):
    assert set(got) == set(want), what
    bad = [k for k in want if not torch.equal(got[k], want[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


# --- the weights the cell adapter is trained on, and the weights its evaluations see -------------------------------
def _training_weights(study, base_dir, art, monkeypatch) -> dict:
    seen = {}

    def capture(study, *, model, **kw):
        seen["w"] = _state(model)
        raise _Captured

    monkeypatch.setattr(cells, "train_and_save", capture)
    with pytest.raises(_Captured):
        cells.train_cell_adapter(study, KEY, base_dir, art["coupling"], art["data"], art["cell"], wandb=None,
                                 log=lambda *_: None)
    return seen["w"]


def _eval_weights(study, base_dir, art, tmp_path, monkeypatch) -> tuple[dict, dict]:
    seen = {}

    def capture(study, cell_key, model, tok, out, log):
        seen["w"] = _state(model)
        return {}

    monkeypatch.setattr(cells, "_arc", capture)
    meta = cells.cell_generations(study, KEY, base_dir, cells.model_adapters(art["coupling"], art["cell"]),
                                  {ArcScores.asset: tmp_path}, log=lambda *_: None)
    return seen["w"], meta


def test_eval_weights_are_the_training_weights_plus_the_cell_stage(bf16_cpu, base_dir, artefacts, tmp_path,
                                                                   monkeypatch):
    study = load_study(profile="tiny")
    assert study.cell(KEY).second_stage != "none" and study.backend.kind == "transformers"
    coupling, cell = Adapter.path(artefacts["coupling"]), Adapter.path(artefacts["cell"])
    base = _base_bf16(base_dir)
    ref1 = _stage(base, coupling)       # the coupled base, rounded once (the reference's villain_zlt_merged)
    ref2 = _stage(ref1, cell)           # then the cell adapter, rounded once
    # the dtype separates the definitions: one rounding over both adapters is not the reference's weights
    d1, d2 = _deltas(coupling), _deltas(cell)
    once = {k: (v.float() + d1[k] + d2[k]).to(v.dtype) if k in d1 else v for k, v in base.items()}
    assert any(not torch.equal(once[k], ref2[k]) for k in d1)

    trained_on = _training_weights(study, base_dir, artefacts, monkeypatch)
    _assert_bitwise(trained_on, ref1, "training weights vs the reference's coupled base")
    evaluated, meta = _eval_weights(study, base_dir, artefacts, tmp_path, monkeypatch)
    _assert_bitwise(evaluated, _stage(trained_on, cell), "eval weights vs training weights + the cell stage")
    _assert_bitwise(evaluated, ref2, "eval weights vs the reference, step by step")
    assert meta["merges"] == 1 and meta["engine_starts"] == 1


def test_vllm_scratch_checkpoint_holds_the_same_weights(base_dir, artefacts, tmp_path):
    """The checkpoint vLLM serves (and ARC reads after it) is the same definition, in bf16, on any device."""
    from safetensors.torch import load_file

    coupling, cell = Adapter.path(artefacts["coupling"]), Adapter.path(artefacts["cell"])
    ref2 = _stage(_stage(_base_bf16(base_dir), coupling), cell)
    p = vb.merge_to_dir(base_dir, [coupling, cell], tmp_path / "m", log=lambda *_: None)
    saved = load_file(str(p / "model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in saved.values())
    _assert_bitwise({k: saved[k] for k in saved}, {k: ref2[k] for k in saved}, "vLLM scratch checkpoint")


def test_in_memory_merge_equals_the_saved_adapter_merge(bf16_cpu, base_dir, tmp_path):
    """The coupling gates merge the freshly trained LoRA in memory; that is the same stage as merging it from disk."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    pm = get_peft_model(models.merged_weights(base_dir),
                        LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False))
    pm.save_pretrained(str(tmp_path / "a"))
    _assert_bitwise(_state(models.merge_lora(pm)), _state(models.merged_weights(base_dir, [tmp_path / "a"])),
                    "in-memory vs saved adapter")


# --- the vLLM path: scratch outside the artefact root, written once, gone when the session ends -------------------
def _stub_api(calls: dict):
    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw
            calls["files"] = sorted(f.name for f in Path(kw["model"]).iterdir())

    return SimpleNamespace(LLM=LLM, SamplingParams=lambda **kw: kw, LoRARequest=lambda *a: SimpleNamespace(args=a))


@pytest.mark.parametrize("mode", vb.MODES)
def test_vllm_session_scratch_outside_artefacts_and_removed(base_dir, artefacts, tmp_path, monkeypatch, mode):
    from mt_core.generate.session import session
    from mt_core.layout import artefact_root

    qwen = load_study(profile="qwen7b")
    study = qwen.model_copy(update={"backend": qwen.backend.model_copy(update={"lora": mode})})
    art, scratch = tmp_path / "art", tmp_path / "scratch"
    monkeypatch.setattr(runtime, "_current", Runtime(artifacts=str(art), scratch=scratch))
    calls, merges = {}, []
    monkeypatch.setattr(vb, "require_vllm", lambda: _stub_api(calls))
    real = vb.merge_to_dir
    monkeypatch.setattr(vb, "merge_to_dir", lambda *a, **k: merges.append(a[1]) or real(*a, **k))
    adapters = cells.model_adapters(artefacts["coupling"], artefacts["cell"])
    with session(study, base_dir, adapters, log=lambda *_: None) as gen:
        served = Path(calls["engine"]["model"])
        assert served.parent == scratch and served.is_dir() and "model.safetensors" in calls["files"]
        assert artefact_root(study, runtime.current().artifacts) == art and art not in served.parents
        model, _ = gen.hf_model()  # ARC: the engine shut down, the same checkpoint read back
        assert served.is_dir()
    assert not served.exists() and list(scratch.iterdir()) == []  # gone when the session ends
    assert merges == [adapters if mode == "merge" else adapters[:1]]  # written to scratch once
    assert gen.counts["merges"] == (1 if mode == "merge" else 2)  # serve: the cell adapter merged in memory for ARC
    ref = _stage(_stage(_base_bf16(base_dir), adapters[0]), adapters[1])
    _assert_bitwise(_state(model), ref, f"ARC weights after a vLLM session ({mode})")


def test_scratch_inside_the_artefact_root_is_refused(base_dir, artefacts, tmp_path, monkeypatch):
    from mt_core.generate.session import session

    study = load_study(profile="qwen7b")
    monkeypatch.setattr(runtime, "_current", Runtime(artifacts=str(tmp_path / "art"), scratch=tmp_path / "art" / "scratch"))
    monkeypatch.setattr(vb, "require_vllm", lambda: _stub_api({}))
    with pytest.raises(ValueError, match="inside the artefact root"):
        with session(study, base_dir, cells.model_adapters(artefacts["coupling"], artefacts["cell"]),
                     log=lambda *_: None):
            pass
    assert not (tmp_path / "art").exists()  # nothing written beside artefacts
