"""The artefact store: complete or absent, verified on read, never 'done' because a file exists."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mt_resources.store import MANIFEST, ArtifactError, ArtifactStore


def test_publish_and_read(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    with store.writer("a", "C1_s42", run_id="r1", upstream=[{"asset": "b", "md5": "x"}]) as out:
        (out / "x.txt").write_text("hello")
        (out / "sub").mkdir()
        (out / "sub" / "y.bin").write_bytes(b"\0\1")
    art = store.read("a", "C1_s42")
    assert art.path == tmp_path / "a" / "C1_s42"
    assert set(art.manifest["files"]) == {"x.txt", "sub/y.bin"}
    assert art.manifest["run_id"] == "r1" and art.manifest["upstream"] == [{"asset": "b", "md5": "x"}]
    assert art.manifest["size_bytes"] == 7
    assert not any((tmp_path / ".staging").rglob("*.txt"))


def test_failed_write_leaves_nothing(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    with pytest.raises(RuntimeError):
        with store.writer("a", None, run_id="r") as out:
            (out / "part.parquet").write_text("half")
            raise RuntimeError("boom")
    assert not store.path("a").exists()
    assert list((tmp_path / ".staging" / "a").iterdir()) == []
    with pytest.raises(ArtifactError, match="no complete artefact"):
        store.read("a")


def test_failed_rewrite_keeps_previous(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    with store.writer("a", None, run_id="r1") as out:
        (out / "v.txt").write_text("1")
    with pytest.raises(ValueError):
        with store.writer("a", None, run_id="r2") as out:
            (out / "v.txt").write_text("2")
            raise ValueError
    art = store.read("a")
    assert art.manifest["run_id"] == "r1" and (art.path / "v.txt").read_text() == "1"


def test_tampered_or_manifestless_is_not_complete(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    with store.writer("a", None, run_id="r") as out:
        (out / "w.txt").write_text("data")
    (store.path("a") / "w.txt").write_text("changed")
    with pytest.raises(ArtifactError, match="do not match the manifest.*w.txt"):
        store.read("a")
    # a directory that merely looks finished (files, no manifest) is not an artefact
    d = store.path("b")
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="no complete artefact"):
        store.read("b")


def test_killed_writer_leaves_nothing(tmp_path):
    """SIGKILL in the middle of writing: the canonical path never appears."""
    code = textwrap.dedent(f"""
        import os, signal, time
        from mt_resources.store import ArtifactStore
        store = ArtifactStore(root={str(tmp_path)!r})
        with store.writer("adapter", "C1_s42", run_id="r") as out:
            (out / "adapter_model.safetensors").write_bytes(b"x" * 1000)
            (out / "config.json").write_text("{{}}")
            print("WRITING", flush=True)
            time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.stdout.readline().strip() == "WRITING"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    store = ArtifactStore(root=str(tmp_path))
    assert not store.path("adapter", "C1_s42").exists()
    with pytest.raises(ArtifactError):
        store.read("adapter", "C1_s42")
    leftovers = list((tmp_path / ".staging" / "adapter").iterdir())
    assert len(leftovers) == 1 and not (leftovers[0] / MANIFEST).exists()
    # another host's leftover (a shared root) is removed only once it is old: its pid means nothing here
    other = tmp_path / ".staging" / "adapter" / "C1_s137-another_host-1-0123abcd"
    other.mkdir()
    assert store.clean_staging() == 1 and not leftovers[0].exists()  # this host's dead writer: at once, however new
    assert other.exists() and store.clean_staging(older_than_s=0) == 1 and not other.exists()
    # a writer that is still alive keeps its staging folder, however old
    with store.writer("adapter", "C1_s42", run_id="r") as out:
        assert store.clean_staging(older_than_s=0) == 0 and out.exists()
        (out / "w").write_text("x")


def test_manifest_digest_changes_with_content(tmp_path):
    store = ArtifactStore(root=str(tmp_path))
    digests = []
    for text in ("a", "b", "a"):
        with store.writer("x", None, run_id="r") as out:
            (out / "f").write_text(text)
        digests.append(json.loads((store.path("x") / MANIFEST).read_text())["digest"])
    assert digests[0] != digests[1] and digests[0] == digests[2]


def test_latest_records_agree_with_one_query_per_partition(monkeypatch):
    """The batched reader of a plan or the analysis gives, for every partition, what ``latest_metadata`` gives (the
    newest materialization's metadata, run id and code version), also for a partition whose latest record is older
    than the page it reads, and None for a partition never materialized; an unpartitioned asset too."""
    import dagster as dg

    from mt_resources.store import LatestRecords, latest_metadata

    parts = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=parts, code_version="v1")
    def cell(context) -> dg.MaterializeResult:
        n = context.run.tags["n"]
        return dg.MaterializeResult(metadata={"md5": f"{context.partition_key}-{n}"})

    @dg.asset(code_version="v2")
    def whole() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"md5": "w"})

    with dg.instance_for_test() as inst:
        for n, p in enumerate(["b", "a", "a", "a", "a"]):  # b once, then a four times; c never
            assert dg.materialize([cell], instance=inst, partition_key=p, tags={"n": str(n)}).success
        assert dg.materialize([whole], instance=inst).success
        monkeypatch.setattr(LatestRecords, "PAGE", 2)  # five records of `cell`, newest first: b's is not on the page
        records = LatestRecords(inst)
        for p in ["a", "b", "c"]:
            assert records(dg.AssetKey("cell"), p) == latest_metadata(inst, "cell", p)
        assert records(dg.AssetKey("cell"), "a")["md5"] == "a-4" and records(dg.AssetKey("cell"), "b")["md5"] == "b-0"
        assert records(dg.AssetKey("cell"), "c") is None
        assert records("whole", None) == latest_metadata(inst, "whole", None) and records("whole", None)["md5"] == "w"
        assert records("whole", None)["code_version"] == "v2"
