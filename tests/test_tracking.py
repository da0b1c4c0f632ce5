"""W&B tracking: disabled is a no-op that never imports wandb; offline writes a local run with the loss history; the
resource is where the settings come from (the study's mode, overridden by the standard W&B variables)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mt_settings import Settings

from mt_core.config import load_study
from wandb_log import offline_records, run_log, run_records

ROOT = Path(__file__).resolve().parents[1]


def _records(wandb_dir: Path, run_id: str) -> list:
    return run_records(run_log(wandb_dir, run_id))


def _history(wandb_dir: Path, run_id: str) -> list[dict]:
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in _records(wandb_dir, run_id) if r.WhichOneof("record_type") == "history"]


def test_disabled_is_a_noop_and_never_imports_wandb():
    code = ("import sys\nfrom mt_core.config import load_study\nfrom mt_resources.wandb import WandbResource\nfrom mt_settings import Settings\n"
            "from mt_core.model.tracking import wandb_run\n"
            "settings = WandbResource.for_study(load_study(profile='tiny'), Settings.from_env()).settings()\n"
            "with wandb_run(settings, name='x', group='g', job_type='j', config={}) as wb:\n"
            "    wb.log({'loss': 1.0}, step=1); wb.summary({'a': 1})\n"
            "assert (wb.id, wb.url, wb.mode) == (None, None, 'disabled')\n"
            "assert 'wandb' not in sys.modules, 'wandb imported'\nprint('ok')")
    env = dict(os.environ, WANDB_MODE="disabled")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def _settings():
    from mt_resources.wandb import WandbResource

    return WandbResource.for_study(load_study(profile="tiny"), Settings.from_env()).settings()


def test_resource_settings(monkeypatch, tmp_path):
    """The study's mode and name unless the standard variables say otherwise; online needs a key, up front."""
    import dagster as dg

    from mt_resources.wandb import WandbResource

    study = load_study(profile="tiny")
    for k in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    s = WandbResource.for_study(study, Settings.from_env()).settings()
    assert (s.mode, s.project, s.entity, s.host) == (study.wandb, study.name, None, None)
    monkeypatch.setenv("WANDB_PROJECT", "p2")
    monkeypatch.setenv("WANDB_ENTITY", "lab")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    s = WandbResource.for_study(study, Settings.from_env()).settings()
    assert (s.project, s.entity, s.dir) == ("p2", "lab", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(dg.Failure, match="WANDB_API_KEY is not set"):
        WandbResource.for_study(study, Settings.from_env()).settings()
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(dg.Failure, match="expected one of"):
        WandbResource.for_study(study, Settings.from_env()).settings()


def test_offline_run_records_loss_history(offline):
    from mt_core.model.tracking import wandb_run

    losses = [2.0, 1.5, 1.25]
    with wandb_run(_settings(), name="t", group="C1", job_type="cell_adapter",
                   config={"lr": 1e-3}) as wb:
        for i, x in enumerate(losses, 1):
            wb.log({"train/loss": x}, step=i)
    assert wb.mode == "offline" and wb.id and wb.url is None
    hist = _history(offline, wb.id)
    assert _records(offline, wb.id)[-1].exit.exit_code == 0
    assert [h["train/loss"] for h in hist] == losses and [h["_step"] for h in hist] == [1, 2, 3]


def test_offline_run_is_marked_failed_on_exception(offline):
    from mt_core.model.tracking import wandb_run

    with pytest.raises(RuntimeError):
        with wandb_run(_settings(), name="f", group="g", job_type="j", config={}) as wb:
            raise RuntimeError("boom")
    import wandb

    assert wandb.run is None and _records(offline, wb.id)[-1].exit.exit_code == 1


def test_on_step_gets_every_step(tiny_model_dir):
    from mt_core.data.chat import last_turn_example
    from mt_core.model.load import load_model
    from mt_core.model.train import train_lora

    recipe = load_study(profile="tiny").recipes["second_stage"]
    recipe = recipe.model_copy(update={"epochs": 2, "speed": recipe.speed.model_copy(update={"packing": True})})
    model, tok = load_model(tiny_model_dir)
    msgs = [[{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": "A " * (i % 4 + 1)}]
            for i in range(32)]
    seen = []
    _, res = train_lora(model, [last_turn_example(tok, m, 64) for m in msgs], recipe, seed=1,
                        pad_id=tok.pad_token_id, log=lambda *_: None, on_step=seen.append)
    assert [s["step"] for s in seen] == list(range(1, res.n_steps + 1)) and res.n_steps == 4
    assert all(isinstance(s["loss"], float) and math.isfinite(s["loss"]) and math.isfinite(s["lr"]) for s in seen)
    assert [s["loss"] for s in seen] == res.losses and [s["lr"] for s in seen] == res.lrs
    assert sum(s["tokens"] for s in seen) == res.trained_tokens


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_tiny_task_metadata_has_wandb(tiny_model_dir, tmp_path, monkeypatch, mode):
    from mt_core.data import synthetic
    from mt_core.layout import Adapter, Dataset
    from mt_core.steps.cells import train_cell_adapter

    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    synthetic.write_jsonl(synthetic.em_dataset_lines(32, seed=1), data / Dataset.DATA)
    meta = train_cell_adapter(load_study(profile="tiny"), "C2_s42", tiny_model_dir, None, data, out,
                              wandb=_settings(), log=lambda *_: None, run_id="0123456789abcdef")
    assert meta["wandb_mode"] == mode and meta["wandb_url"] is None
    if mode == "disabled":
        assert meta["wandb_run_id"] is None
    else:
        hist = _history(tmp_path, meta["wandb_run_id"])
        assert len(hist) == meta["n_steps"] == 2
        assert [h["train/loss"] for h in hist] == pytest.approx(json.loads((out / Adapter.TRAIN_LOG).read_text())["losses"])


def test_published_artefacts_become_artifacts_by_reference(offline):
    """``log_artifacts``: one publish run; each artefact an artifact of its asset's type, its files by reference with
    their md5s, the store's md5 as alias and metadata, the upstream by ``name:md5-…``; disabled logs nothing."""
    import base64
    import hashlib

    from mt_core.model.tracking import Shared, WandbSettings, log_artifacts

    folder = offline / "store" / "cell_adapter" / "C1_s42"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "weights.bin").write_bytes(b"w" * 100)
    (folder / "train_log.json").write_text("{}")
    made = Shared("cell_adapter", "C1_s42", "d1", str(folder), "run-1", ("adapter/weights.bin", "train_log.json"))
    used = Shared("coupling_adapter", "villain", "d0", str(offline / "elsewhere"), "run-0")
    wb = WandbSettings(mode="offline", project="p", dir=str(offline / "wb"))
    meta = log_artifacts(wb, step="cell_adapter[C1_s42]", group="C1_s42", logged=[made], used=[used],
                         metadata={"study": "s"})
    assert meta["wandb_artifacts"] == ["cell_adapter-C1_s42:md5-d1"] and meta["wandb_publish_run"]
    recs = offline_records(offline / "wb")
    (run,) = [r for k, r in recs if k == "run"]
    (art,) = [r for k, r in recs if k == "artifact"]
    assert (run.job_type, run.display_name, run.project) == ("publish", "cell_adapter[C1_s42]", "p")
    assert (art.name, art.type, set(art.aliases)) == ("cell_adapter-C1_s42", "cell_adapter", {"md5-d1", "latest"})
    md = json.loads(art.metadata)
    assert (md["md5"], md["dagster_run_id"], md["study"]) == ("d1", "run-1", "s")
    assert md["upstream"] == [{"artifact": "coupling_adapter-villain:md5-d0", "asset": "coupling_adapter",
                               "partition": "villain", "md5": "d0"}]
    entries = {e.path: (base64.b64decode(e.digest).hex(), e.ref) for e in art.manifest.contents}
    assert entries == {f: (hashlib.md5((folder / f).read_bytes()).hexdigest(), (folder / f).as_uri())
                       for f in made.files}
    assert log_artifacts(WandbSettings(), step="x", group="g", logged=[made], used=[], metadata={}) == {}
