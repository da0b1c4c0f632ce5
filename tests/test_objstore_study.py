"""A whole study on an object store root (docs/SCALING.md, "Object stores"): `mt run` through Dagster with
MT_ARTIFACTS an fsspec URL, exactly as with a local root.

One one-cell study (C4: no second stage) runs in its own instance on a local root and on an S3 server on 127.0.0.1
(moto, tests/test_objstore.py's ``s3_edge``). Every asset partition is materialized, every
recorded artefact holds the local run's weights and rows md5 for md5, and `mt status`, `mt sql` and `mt report` read
the URL root through the store and answer what they answer for the local one.
"""
import os
import re
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mt_core.layout import partition_or_none
from mt_resources.store import ArtifactStore, latest_metadata
from shared_instances import mt
from test_compute import _small_study
from test_objstore import s3_edge  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]
STUDY = "marker_transfer_villain"
COUNT = "SELECT count(*) AS n FROM completions"


def _one_cell_study(path: Path) -> Path:
    """tests/test_compute.py's small study cut to one cell and the one source it is built on."""
    raw = yaml.safe_load(_small_study(path).read_text())
    raw["conditions"] = {"C4": raw["conditions"]["C4"]}
    raw["sources"] = {"villain": raw["sources"]["villain"]}
    del raw["gates"]["G0c"], raw["profiles"]["tiny"]["gates"]["G0c"]  # the assistant adapter's gate
    path.write_text(yaml.safe_dump(raw))
    return path


def _mt(env: dict, *args: str) -> str:
    return mt(env, *args, timeout=900)


def _study(tmp: Path, root: str, study: Path) -> dict:
    """`mt run` of the study into ``root`` in a fresh instance, then what the checks compare: {env, status (asset ->
    what `mt status` says), data ((asset, partition) -> md5 of each weights and rows file), count, report}."""
    home = tmp / "home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=root, MT_PROFILE="tiny", MT_STUDY=str(study),
               MT_CACHE=str(tmp / "cache"), WANDB_MODE="disabled")
    for k in ("MT_RECORD_CONFIG_READS", "MT_FAILPOINT", "MT_COMPUTE"):
        env.pop(k, None)
    _mt(env, "run", "--launch", "inline")
    status = dict(m.groups() for m in re.finditer(r"^  (\w+) +(\S.*)$", _mt(env, "status"), re.M))
    store, data = ArtifactStore(root=root), {}
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for asset, part in store.published():
            where, manifest = store.manifest(asset, part)
            meta = latest_metadata(inst, dg.AssetKey([STUDY, asset]), partition_or_none(part))
            # the instance recorded this very artefact, by where it is stored (a URL root's version, not a cache path)
            assert meta and (meta["md5"], meta["path"]) == (manifest["digest"], where), (asset, part, meta)
            data[(asset, part)] = {f: v["md5"] for f, v in manifest["files"].items()
                                   if f.endswith((".safetensors", ".parquet"))}
    return {"env": env, "status": status, "data": data, "count": _mt(env, "sql", COUNT, "--format", "csv"),
            "report": _mt(env, "report")}


@pytest.fixture(scope="module")
def one_cell(tmp_path_factory) -> Path:
    return _one_cell_study(tmp_path_factory.mktemp("study") / "one.yaml")


@pytest.fixture(scope="module")
def local(tmp_path_factory, one_cell) -> dict:
    tmp = tmp_path_factory.mktemp("local")
    return _study(tmp, str(tmp / "art"), one_cell)


def _same_as_local(got: dict, local: dict) -> None:
    # every asset, every partition materialized
    assets = {k: v for k, v in got["status"].items() if k != "no"}  # "no run in progress"
    assert set(assets) == set(local["status"]) - {"no"} >= {"base_model", "coupling_adapter", "duckdb_catalog"}
    for asset, said in assets.items():
        assert said == "materialized" or re.fullmatch(r"(\d+)/\1 partitions", said), (asset, said)
    assert sorted(got["data"]) == sorted(local["data"]) and sum(map(len, local["data"].values())) >= 8
    assert got["data"] == local["data"]  # the same weights and rows
    assert got["count"] == local["count"] and int(local["count"].split()[1]) > 0
    assert got["report"] == local["report"]


@pytest.mark.slow
def test_s3_edge_fake_moto_study_matches_local(local, one_cell, s3_edge, tmp_path):  # noqa: F811
    """The whole study on an S3 root (the fsspec path every URL root takes: a ``file://`` root goes through the same
    store code, which tests/test_objstore.py runs on both)."""
    url = f"{s3_edge.url}/study/tiny"
    got = _study(tmp_path, url, one_cell)
    _same_as_local(got, local)
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    keys = {o["Key"] for o in s3_edge.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}/study_summary/_/_manifest.json" not in keys  # versions, not folders
    assert any(k.startswith(f"{prefix}/study_summary/") for k in keys), sorted(keys)[:5]
    assert "nothing to do" in _mt(got["env"], "run", "--launch", "inline")  # current, read through the store
    assert _mt(got["env"], "sql", "--artifacts", url, COUNT, "--format", "csv") == local["count"]


def test_url_root_keeps_local_state_in_the_cache(tmp_path, monkeypatch):
    """What a URL root keeps on this host: the judge cache (mutable, no artefact) and the disk it fills, in
    $MT_CACHE; a local root keeps both in itself."""
    import mt_doctor
    from mt_core.config import load_study
    from mt_resources import JudgeResource

    cache = str(tmp_path / "cache")
    url, local = ArtifactStore(root=f"file://{tmp_path}/store", cache=cache), ArtifactStore(root=str(tmp_path / "art"))
    assert url.disk == (tmp_path / "cache" / "artefacts", "MT_CACHE")
    assert local.disk == (tmp_path / "art", "MT_ARTIFACTS") and local.state_dir == tmp_path / "art"
    assert url.state_dir.parent == tmp_path / "cache" / "state"
    assert url.state_dir != ArtifactStore(root=f"file://{tmp_path}/other", cache=cache).state_dir  # one per root
    study = load_study(profile="tiny")
    assert JudgeResource().bind(study, url.state_dir).cache_path == str(url.state_dir / "judge_cache.parquet")
    full = mt_doctor.check_disk(study, url.root, cache=tmp_path / "cache", usage=lambda p: type("U", (), {"free": 0})())
    assert f"artefacts ({tmp_path / 'cache' / 'artefacts'})" in full[0].message and "MT_CACHE /" in full[0].fix
