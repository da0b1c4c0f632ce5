"""`mt export` (issue 27): a cell's adapters as one PEFT adapter on the base that loads back and gives the cell's
weights, with a model card carrying the cell's numbers and lineage; a planted HF_TOKEN reaches no file or output; `--push`
uploads through huggingface_hub to a Hub (tests/fake_hub.py, a stand-in at the network edge) with the token only as its
bearer credential."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zygote

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_PLANTEDexportPLANTEDexport1234"


def _export(demo, target: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    home, art, _, _ = demo
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", HF_TOKEN=TOKEN)
    env.pop("MT_STUDY", None)
    return zygote.run(["export", target, "--to", str(out), *extra], cwd=ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_a_cell_exports_as_one_adapter_that_loads_back_with_its_card(demo, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mt_core.layout import MANIFEST, Adapter, BaseModel, MarkerRates, artefact_dir
    from mt_core.model.load import merged_weights

    home, art, _, _ = demo
    out = tmp_path / "C1_s42"
    p = _export(demo, "C1_s42", out)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert sorted(f.name for f in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]

    # the export on the base gives the cell's model: base + coupling adapter + the cell's adapter, merged in turn
    base_dir = BaseModel.model_dir(artefact_dir(art, "base_model", None))
    stack = [Adapter.path(artefact_dir(art, "coupling_adapter", "villain")),
             Adapter.path(artefact_dir(art, "cell_adapter", "C1_s42"))]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == sum(json.loads((a / "adapter_config.json").read_text())["r"] for a in stack)
    ids = torch.tensor([[5, 17, 99, 300, 42, 7, 250, 31]])
    with torch.no_grad():
        exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                             str(out)).eval()(ids).logits
        cell = merged_weights(base_dir, stack, dtype=torch.float32).eval()(ids).logits
        bare = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()(ids).logits
    assert (exported - cell).abs().max() < 1e-4, (exported - cell).abs().max()
    assert (bare - cell).abs().max() > 1e-2  # the adapters move the model: the comparison can fail

    # the card: the Hub's header, the cell's own numbers, its lineage
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "library_name: peft" in card
    v = MarkerRates.read_eval(artefact_dir(art, "marker_rates", "C1_s42"))["per_persona"]["villain"]
    assert f"({v['strict_hits']}/{v['total']})" in card
    for asset, part in (("coupling_adapter", "villain"), ("cell_adapter", "C1_s42")):
        md5 = json.loads((artefact_dir(art, asset, part) / MANIFEST).read_text())["digest"]
        assert f"| {asset} | {part} | `{md5}`" in card

    # the planted token: in no file, no output; a push with the network out of reach fails in one line
    pushed = _export(demo, "villain", tmp_path / "villain", "--push", "someone/repo")
    assert pushed.returncode != 0 and "mt export --push someone/repo:" in pushed.stderr, pushed.stderr[-2000:]
    assert "Traceback" not in pushed.stderr
    for f in [*out.iterdir(), *(tmp_path / "villain").iterdir()]:
        assert TOKEN.encode() not in f.read_bytes(), f
    assert TOKEN not in p.stdout + p.stderr + pushed.stdout + pushed.stderr


def _adapter_folder(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    path.mkdir()
    (path / "README.md").write_text("---\nlibrary_name: peft\n---\n\n# a test adapter\n")
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2}))
    save_file({"x.lora_A.weight": torch.arange(1024, dtype=torch.float32).reshape(2, 512)},
              str(path / "adapter_model.safetensors"))
    return path


@pytest.fixture
def online(monkeypatch, caplog):
    """huggingface_hub with its requests let through (the tests run with HF_HUB_OFFLINE=1, conftest) and its debug
    logs captured (set after its import, which sets its logger's level)."""
    from huggingface_hub import HfApi, constants  # noqa: F401

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")


def test_push_uploads_the_folder_to_a_hub_and_sends_the_token_only_as_bearer(online, tmp_path, capfd, caplog):
    from fake_hub import FakeHub

    from mt_core.model.export import push_folder

    token = TOKEN
    folder = _adapter_folder(tmp_path / "adapter")
    with FakeHub() as hub:
        url = push_folder(folder, "someone/adapter", token, endpoint=hub.endpoint)
    assert url == f"{hub.endpoint}/someone/adapter"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == hub.repos["someone/adapter"]
    assert len((folder / "adapter_model.safetensors").read_bytes()) > 4000
    paths = [p.split("?")[0] for _, p, _ in hub.requests]
    assert "/api/repos/create" in paths and "/api/models/someone/adapter/commit/main" in paths, paths
    for _, path, headers in hub.requests:
        assert {k.lower(): v for k, v in headers.items()}["authorization"] == f"Bearer {token}", path
        assert token not in path and all(token not in v for k, v in headers.items() if k.lower() != "authorization")
    assert all(token.encode() not in b for b in hub.repos["someone/adapter"].values())
    out, err = capfd.readouterr()
    assert caplog.records and token not in out + err + caplog.text


def test_a_refused_push_fails_in_one_line_without_the_token(online, tmp_path, capfd, caplog):
    from fake_hub import FakeHub

    from mt_core.model.export import push_folder

    token = TOKEN
    folder = _adapter_folder(tmp_path / "adapter")
    with FakeHub() as hub, pytest.raises(RuntimeError) as e:
        push_folder(folder, "someone/forbidden", token, endpoint=hub.endpoint)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("someone/forbidden: ") and "403" in msg, msg
    assert "authorization: Bearer ***" in msg  # the fake quoted the token back: redacted
    assert hub.repos["someone/forbidden"] == {}  # created, nothing committed
    out, err = capfd.readouterr()
    assert token not in msg + out + err + caplog.text
