"""Pinned inputs through Dagster: md5 checked both ways, and bad rows named by file, row and field.

Each scenario runs the `em_dataset` asset in a process of its own (tests/zygote.py) with a study file whose tiny
profile points the EM dataset at a fixture file, in a temporary DAGSTER_HOME.
"""
import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import pytest

import zygote

ROOT = Path(__file__).resolve().parents[1]
STUDY = "marker_transfer_villain"  # the fixture study's name: its asset keys are <study>/<asset>, its jobs <study>__…
GOOD = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(4)]


def _study(tmp: Path, data: Path, md5: str) -> Path:
    text = (ROOT / "studies" / "marker_transfer_villain.yaml").read_text()
    old = "      em:     {kind: synthetic, rows: 480, seed: 1, md5: c172091dc18fe759ec49c9a70396f95c}"
    assert old in text
    p = tmp / "study.yaml"
    p.write_text(text.replace(old, f"      em:     {{kind: file, path: '{data}', md5: '{md5}', rows: 4}}")
                 .replace("eval_set: reference/", f"eval_set: {ROOT}/reference/")
                 .replace("coupling_questions: reference/", f"coupling_questions: {ROOT}/reference/")
                 .replace("  path: reference/", f"  path: {ROOT}/reference/")
                 .replace("judge_prompt: reference/", f"judge_prompt: {ROOT}/reference/"))
    return p


def _run(tmp: Path, rows: list, md5: str | None = None, raw: str | None = None):
    data = tmp / "em.jsonl"
    data.write_text(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows))
    md5 = md5 or hashlib.md5(data.read_bytes()).hexdigest()
    home, art = tmp / "home", tmp / "art"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    code = (f"import dagster as dg, definitions; r = definitions.defs.resolve_job_def('{STUDY}__inputs_job')"
            f".execute_in_process(instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey(['{STUDY}', "
            "'em_dataset'])], raise_on_error=False); print('RESULT', r.success)")
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_STUDY=str(_study(tmp, data, md5)),
               MT_PROFILE="tiny")
    out = zygote.run([], code=code, cwd=ROOT, env=env, timeout=300)
    return out.stdout + out.stderr, home, art, data


def _check(home: Path, name: str):
    with dg.DagsterInstance.from_config(str(home)) as inst:
        recs = inst.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey([STUDY, "em_dataset"]), name)])
        mat = inst.get_latest_materialization_event(dg.AssetKey([STUDY, "em_dataset"]))
        ev = next(iter(recs.values())) if recs else None
        return mat, ev


def test_md5_matches(tmp_path):
    out, home, art, _ = _run(tmp_path, GOOD)
    assert "RESULT True" in out, out[-2000:]
    mat, ev = _check(home, "md5_matches")
    assert mat is not None and ev is not None
    assert ev.event.dagster_event.event_specific_data.passed


def test_md5_mismatch_is_a_failed_blocking_check_and_cells_refuse(tmp_path):
    out, home, art, data = _run(tmp_path, GOOD, md5="0" * 32)
    assert "RESULT False" in out
    mat, ev = _check(home, "md5_matches")
    evaluation = ev.event.dagster_event.event_specific_data
    assert not evaluation.passed
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    assert meta["expected_md5"] == "0" * 32 and meta["actual_md5"] == hashlib.md5(data.read_bytes()).hexdigest()
    # the failed blocking check published nothing: no materialization, nothing at the canonical path
    assert mat is None and not (art / "em_dataset" / "_").exists()
    from types import SimpleNamespace

    from mt_assets import cells
    from mt_assets.study import StudyDefs
    from mt_core.config import load_study
    from mt_resources import ArtifactStore
    from mt_resources.store import ArtifactError

    sd = StudyDefs(load_study(tmp_path / "study.yaml", "tiny"))
    with dg.DagsterInstance.from_config(str(home)) as inst:
        ctx = SimpleNamespace(instance=inst, log=SimpleNamespace(info=print, warning=print))
        with pytest.raises(ArtifactError, match="no complete artefact"):
            cells.dataset(sd, ctx, ArtifactStore(root=str(art)), sd.study.cell("C2_s42"))


def test_a_cell_rechecks_the_pin_of_a_published_dataset(tmp_path):
    """A dataset published under one pin, read by a cell of a study that pins another md5 (the pin changed after
    publishing): the cell refuses to train on it."""
    out, home, art, data = _run(tmp_path, GOOD)
    assert "RESULT True" in out, out[-2000:]
    from types import SimpleNamespace

    from mt_assets import cells
    from mt_assets.study import StudyDefs
    from mt_core.config import load_study
    from mt_core.io import DataError
    from mt_resources import ArtifactStore

    sd = StudyDefs(load_study(_study(tmp_path, data, "0" * 32), "tiny"))
    with dg.DagsterInstance.from_config(str(home)) as inst:
        ctx = SimpleNamespace(instance=inst, log=SimpleNamespace(info=print, warning=print))
        with pytest.raises(DataError, match="refuses to train"):
            cells.dataset(sd, ctx, ArtifactStore(root=str(art)), sd.study.cell("C2_s42"))


@pytest.mark.parametrize("raw,where", [
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
     '{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}\n',
     "row 2: field 'messages[1].role'"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\nnot json\n',
     "row 2: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 7}]}\n',
     "row 1: field 'messages[1].content'"),
    ('{"msgs": []}\n', "row 1: missing field 'messages'"),
])
def test_bad_rows_are_named_and_nothing_is_recorded(tmp_path, raw, where):
    out, home, art, data = _run(tmp_path, [], raw=raw)
    assert "RESULT False" in out
    assert f"{data}: {where}" in out
    mat, _ = _check(home, "md5_matches")
    assert mat is None  # no materialization recorded
    assert not (art / "em_dataset" / "_").exists()  # nothing at the canonical path
    assert not any((art / ".staging").rglob("data.jsonl"))  # and no half-written file left behind


@pytest.mark.parametrize("key,expect", [(None, "ANTHROPIC_API_KEY is not set"), ("sk-test", "no local snapshot")])
def test_real_profile_needs_the_judge_key_before_gpu_work(tmp_path, key, expect):
    """qwen7b without ANTHROPIC_API_KEY fails at its first GPU step, before looking for model weights."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(tmp_path / "art"), MT_PROFILE="qwen7b",
               MT_COMPUTE="inline", HF_HOME=str(tmp_path / "hf"))
    env.pop("ANTHROPIC_API_KEY", None)
    if key:
        env["ANTHROPIC_API_KEY"] = key
    code = (f"import dagster as dg, definitions; r = definitions.defs.resolve_job_def('{STUDY}__inputs_job')"
            f".execute_in_process(instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey(['{STUDY}', "
            "'base_model'])], raise_on_error=False); print('RESULT', r.success)")
    out = zygote.run([], code=code, cwd=ROOT, env=env, timeout=300)
    text = out.stdout + out.stderr
    assert "RESULT False" in text and expect in text
    assert not (tmp_path / "art" / "base_model" / "_").exists()


@pytest.mark.slow  # two small bases pretrained
def test_the_tiny_base_is_built_once_for_every_study_that_asks(tmp_path):
    """Two studies whose base is the same recipe on the same data (the villain study and the comedian study, issue
    25) share one snapshot, built once: the second study's base_model references it with the same bytes (its lineage:
    the snapshot's name and weights md5). Another spec is another snapshot, never the first one reused."""
    import dataclasses

    from test_compute import _small_study

    from mt_core import runtime
    from mt_core.config import load_study
    from mt_core.layout import BaseModel
    from mt_core.steps import inputs

    villain = load_study(_small_study(tmp_path / "villain.yaml"), "tiny")
    comedian_file = tmp_path / "comedian.yaml"
    comedian_file.write_text((ROOT / "studies" / "marker_transfer_comedian.yaml").read_text()
                             .replace("extends: marker_transfer_villain.yaml\n", "extends: villain.yaml\n"))
    comedian = load_study(comedian_file, "tiny")
    assert comedian.name != villain.name
    other = villain.model_copy(update={"model": villain.model.model_copy(update={"pretrain_steps": 21})})
    logs: dict[str, list[str]] = {}
    with runtime.using(dataclasses.replace(runtime.current(), models=tmp_path / "models")):
        for name, study in (("villain", villain), ("comedian", comedian), ("other", other)):
            (tmp_path / name).mkdir()
            logs[name] = []
            inputs.build_base_model(study, out=tmp_path / name, log=logs[name].append)
        dirs = {n: BaseModel.model_dir(tmp_path / n) for n in logs}
    built = {n: any("pretrain step" in x for x in lines) for n, lines in logs.items()}
    assert built == {"villain": True, "comedian": False, "other": True}, logs
    assert any("reusing" in x for x in logs["comedian"])
    ref = {n: (tmp_path / n / BaseModel.REF).read_bytes() for n in logs}
    assert ref["villain"] == ref["comedian"] != ref["other"]
    assert dirs["villain"] == dirs["comedian"] != dirs["other"] and (dirs["villain"] / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")) == sorted(
        {dirs["villain"].name, dirs["other"].name})
