"""Every field a study YAML sets is read while the code runs: a setting that nothing reads is a bug.

The tiny profile is checked against a real run (tests/test_e2e.py records the fields its `mt demo` reads); the fields
that the qwen7b profile sets differently are checked here, through the entry points that read them without a GPU. The
recording is test support (tests/config_reads.py), patched onto the study models.
"""
import copy
import dataclasses

import pytest
import yaml

from config_reads import record
from mt_core import config, runtime
from mt_core.config import DEFAULT_STUDY, deep_merge
from mt_settings import Settings


def yaml_leaves(profile: str) -> dict:
    """{dotted path: value} of every leaf the study file sets for ``profile`` (profile merged in)."""
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    merged = deep_merge({k: v for k, v in raw.items() if k != "profiles"}, raw["profiles"][profile] or {})
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            p = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v:
                walk(v, p)
            else:
                out[p] = v
    walk(merged, "")
    return out


def unread(leaves, reads: set[str]) -> list[str]:
    return sorted(p for p in leaves if p not in reads)


@pytest.fixture
def recording(monkeypatch):
    return record(monkeypatch.setattr)  # tests/config_reads.py, undone after the test


def test_recording_sees_reads_and_only_reads(recording):
    s = config.load_study(profile="tiny")
    assert recording == set()  # loading and validating is not reading
    assert s.recipes["coupling"].speed.packing is True
    assert recording == {"recipes", "recipes.coupling.speed", "recipes.coupling.speed.packing"}
    assert unread({"recipes.coupling.speed.packing": 1, "recipes.coupling.lr": 1}, recording) == ["recipes.coupling.lr"]


def test_qwen7b_fields_are_read(recording, tmp_path, monkeypatch):
    """The fields only qwen7b sets are read by the code that uses them (the shared ones are the tiny run's)."""
    from mt_core.generate.session import session
    from mt_core.generate.vllm_engine import VllmMissing
    from mt_core.io import DataError
    from mt_core.steps import inputs
    from mt_resources import JudgeResource, WandbResource

    tiny, qwen = yaml_leaves("tiny"), yaml_leaves("qwen7b")
    differ = {p: v for p, v in qwen.items() if p not in tiny}
    assert "model.id" in differ and "backend.lora" in differ  # the check can fail
    study = config.load_study(profile="qwen7b")
    WandbResource.for_study(study, Settings.from_env({}))  # no $WANDB_MODE: the study's mode is read
    JudgeResource.for_study(study, tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError, match="no local snapshot"):
        inputs.build_base_model(study, out=tmp_path, log=lambda *_: None)
    for which in ("em", "benign"):
        with pytest.raises(DataError, match="dataset not found"):
            inputs.build_dataset(study, which, out=tmp_path, log=lambda *_: None)
    with pytest.raises(VllmMissing):
        with session(study, tmp_path):
            pass
    assert unread(differ, recording) == []


def test_unread_field_is_caught(recording, tmp_path):
    """A field the YAML sets and no code reads fails the check (here: one added to a copy of the study)."""
    leaves = copy.deepcopy(yaml_leaves("tiny"))
    leaves["recipes.coupling.never_read"] = 1
    s = config.load_study(profile="tiny")
    _ = s.recipes["coupling"].lr
    assert "recipes.coupling.never_read" in unread(leaves, recording)


def small_smoke_study(tmp_path, monkeypatch):
    """The gpu_smoke profile with the model shrunk and the datasets cut (same fields, CPU-sized values)."""
    raw = yaml.safe_load(DEFAULT_STUDY.read_text())
    smoke = raw["profiles"]["gpu_smoke"]
    smoke["model"].update(vocab_size=9000, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                          num_kv_heads=2, max_position=2048)
    for which in ("em", "benign"):
        smoke["data"][which]["rows"] = 40
    for k in ("eval_set", "coupling_questions", "judge_prompt"):
        raw[k] = str(config.PROJECT_ROOT / raw[k])
    raw["arc"]["path"] = str(config.PROJECT_ROOT / raw["arc"]["path"])
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(runtime, "_current", dataclasses.replace(runtime.current(), models=tmp_path / "models"))
    return path


def test_gpu_smoke_fields_are_read(recording, tmp_path, monkeypatch):
    """The fields only gpu_smoke sets are read: the random snapshot and the lengthened synthetic data are built from
    them (at CPU size), the vLLM backend is asked for."""
    from mt_core.generate.session import session
    from mt_core.generate.vllm_engine import VllmMissing
    from mt_core.layout import BaseModel
    from mt_core.steps import inputs
    from mt_resources import JudgeResource, WandbResource

    differ = {p for p in yaml_leaves("gpu_smoke") if p not in yaml_leaves("tiny")}
    assert {"model.tokenizer_vocab", "data.em.answer_words"} <= differ  # the check can fail
    study = config.load_study(small_smoke_study(tmp_path, monkeypatch), profile="gpu_smoke")
    WandbResource.for_study(study, Settings.from_env({}))
    JudgeResource.for_study(study, tmp_path)
    (tmp_path / "base").mkdir()
    inputs.build_base_model(study, out=tmp_path / "base", log=lambda *_: None)
    for which in ("em", "benign"):
        (tmp_path / which).mkdir()
        inputs.build_dataset(study, which, out=tmp_path / which, log=lambda *_: None)
    with pytest.raises(VllmMissing):
        with session(study, BaseModel.model_dir(tmp_path / "base")):
            pass
    assert unread(differ, recording) == []
