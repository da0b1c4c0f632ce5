"""`mt doctor`: each problem a study can have before GPU work is found, named, and given its fix."""
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
import zygote

import mt_doctor as doc
from mt_core.config import load_study

ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, **qwen) -> object:
    """The villain study's qwen7b profile with ``qwen`` merged in (absolute paths into tmp_path)."""
    raw = yaml.safe_load((ROOT / "studies" / "marker_transfer_villain.yaml").read_text())
    for k, v in qwen.items():
        raw["profiles"]["qwen7b"][k] = {**raw["profiles"]["qwen7b"].get(k, {}), **v} if isinstance(v, dict) else v
    p = tmp_path / "study.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_study(p, "qwen7b")


def _snapshot(tmp_path: Path, corrupt: bool = False) -> Path:
    """An HF-cache-shaped snapshot: weight files are symlinks to blobs named by their sha256."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    weights = {}
    for i in (1, 2):
        data = f"weights {i}".encode()
        sha = hashlib.sha256(data).hexdigest()
        (blobs / sha).write_bytes(data + (b"!" if corrupt and i == 2 else b""))
        name = f"model-0000{i}-of-00002.safetensors"
        (snap / name).symlink_to(blobs / sha)
        weights[f"layer{i}"] = name
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weights}))
    return snap


def test_model_snapshot(tmp_path):
    missing = doc.check_model(_study(tmp_path, model={"local_path": str(tmp_path / "nowhere")}))
    assert [p.check for p in missing] == ["model"] and "config.json missing" in missing[0].message
    assert doc.check_model(_study(tmp_path, model={"local_path": str(_snapshot(tmp_path / "ok"))})) == []
    bad = doc.check_model(_study(tmp_path, model={"local_path": str(_snapshot(tmp_path / "bad", corrupt=True))}))
    assert len(bad) == 1 and "model-00002-of-00002.safetensors: sha256 differs" in bad[0].message
    snap = _snapshot(tmp_path / "gone")
    (snap / "model-00001-of-00002.safetensors").unlink()
    gone = doc.check_model(_study(tmp_path, model={"local_path": str(snap)}))
    assert len(gone) == 1 and "shard missing" in gone[0].message


def test_dataset_md5(tmp_path):
    f = tmp_path / "em.jsonl"
    f.write_text('{"messages": []}\n')
    s = _study(tmp_path, data={"em": {"kind": "file", "path": str(f), "md5": "0" * 32, "rows": 1},
                               "benign": {"kind": "file", "path": str(tmp_path / "no.jsonl"), "md5": "1" * 32,
                                          "rows": 1}})
    probs = doc.check_data(s)
    assert [p.check for p in probs] == ["data", "data"]
    assert "md5 " in probs[0].message and "(data.em.md5)" in probs[0].message
    assert "benign dataset not found" in probs[1].message and "1" * 32 in probs[1].fix


class _FakeMessages(BaseHTTPRequestHandler):
    good_key = "sk-good"

    def do_POST(self):  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers["content-length"]))
        key = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
        if key != self.good_key:
            code, body = 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid key"}}
        else:
            code, body = 200, {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                               "content": [{"type": "text", "text": "o"}], "stop_reason": "max_tokens",
                               "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


def test_judge_key(tmp_path, monkeypatch):
    s = _study(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    (none,) = doc.check_judge(s)
    assert "ANTHROPIC_API_KEY is not set" in none.message
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeMessages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-bad-key-123")
        (bad,) = doc.check_judge(s, base_url=url)
        assert "refused (401)" in bad.message and "sk-bad-key-123" not in str(bad)  # never printed
        monkeypatch.setenv("ANTHROPIC_API_KEY", _FakeMessages.good_key)
        assert doc.check_judge(s, base_url=url) == []
    finally:
        server.shutdown()


def test_gpus(tmp_path):
    s = _study(tmp_path)
    (no_gpu, *_) = doc.check_gpus(s, gpus=lambda: 0)
    assert no_gpu.check == "gpu" and "no GPU visible" in no_gpu.message
    (busy, *_) = doc.check_gpus(s, gpus=lambda: 2, free_gb=lambda: [120.0, 10.0])
    assert "GPU 1: 10 GB free" in busy.message and "GPU 0" not in busy.message
    assert [p.check for p in doc.check_gpus(load_study(profile="tiny"), gpus=lambda: 0)] == []  # tiny: CPU is fine


def test_disk(tmp_path):
    s = _study(tmp_path)
    full = doc.check_disk(s, tmp_path / "art", usage=lambda p: SimpleNamespace(free=5 * doc.GB))
    assert [p.check for p in full] == ["disk", "disk"] and "5.0 GB free" in full[0].message
    assert doc.check_disk(s, tmp_path / "art", usage=lambda p: SimpleNamespace(free=500 * doc.GB)) == []


def test_disk_counts_a_random_snapshot_still_to_be_written(tmp_path, monkeypatch):
    """gpu_smoke's random 7B base, not yet on disk: its bf16 weights (14 GiB) are added to what the study needs."""
    from mt_core.model.random_snapshot import n_params

    monkeypatch.setattr("mt_core.model.random_snapshot.snapshot_dir", lambda m: tmp_path / "no_snapshot")
    s = load_study(profile="gpu_smoke")
    weights = round(2 * n_params(s.model) / doc.GB)
    assert weights == 14
    (p, _) = doc.check_disk(s, tmp_path / "art", usage=lambda p: SimpleNamespace(free=doc.MIN_FREE_GB["hf"] * doc.GB))
    assert p.check == "disk" and f"needs about {doc.MIN_FREE_GB['hf'] + weights} GB" in p.message, p.message


def test_instance_not_writable(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("")
    (p,) = doc.check_instance(f / "home")
    assert p.check == "dagster" and "not writable" in p.message


def test_mt_run_stops_before_any_work(tmp_path):
    """`mt run` runs the doctor first: a real profile without its key, weights or GPUs starts no run at all."""
    import dagster as dg

    home = tmp_path / "home"
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(tmp_path / "art"), MT_PROFILE="qwen7b",
               HF_HOME=str(tmp_path / "hf"))
    env.pop("ANTHROPIC_API_KEY", None)
    p = zygote.run(["run"], cwd=ROOT, env=env, timeout=300)
    assert p.returncode != 0
    assert "mt doctor found problems; nothing was run" in p.stderr and "[judge]" in p.stderr and "[model]" in p.stderr
    with dg.DagsterInstance.from_config(str(home)) as inst:
        assert inst.get_runs() == []
