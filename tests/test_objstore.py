"""Artefacts on object storage (mt_resources/objstore.py): versions, a manifest written last and a pointer switched
after it, so a reader accepts a complete, verified artefact or nothing.

Roots: fsspec's ``memory://``, a local fsspec path (``file://``) and an S3-compatible server on 127.0.0.1 (moto's
server mode), which stands in for object storage across the network's edge (``test_s3_edge_fake_moto_*``). Writers
are killed for real (``MT_FAILPOINT``: SIGKILL) between uploads and before the pointer switch.
"""
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from fsspec.core import url_to_fs

from mt_core.layout import MANIFEST, PROJECT_ROOT, artefact_root
from mt_resources.objstore import POINTER, ObjectStore
from mt_resources.store import ArtifactError, ArtifactStore

ROOT = Path(__file__).resolve().parents[1]
ASSET, PART = "adapter", "C1_s42"
FILES = ["adapter/f0.bin", "adapter/f1.bin", "adapter/f2.bin", "config.json"]  # uploaded in this order


def store_at(root: str) -> ArtifactStore:
    """The store at ``root`` with the test's cache folder ($MT_CACHE, set by the ``cache`` fixture; a subprocess
    inherits it)."""
    return ArtifactStore(root=root, cache=os.environ["MT_CACHE"])


def put(root: str, version: str) -> None:
    """Publish a four-file artefact whose content names ``version`` (the killed writers run this too)."""
    with store_at(root).writer(ASSET, PART, run_id=f"run-{version}",
                                         upstream=[{"asset": "base", "md5": "x"}]) as out:
        (out / "adapter").mkdir()
        for i in range(3):
            (out / "adapter" / f"f{i}.bin").write_bytes(f"{version}:{i};".encode() * (i + 1))
        (out / "config.json").write_text(json.dumps({"version": version}))


def version_of(art) -> str:
    return json.loads((art.path / "config.json").read_text())["version"]


def pointer(o: ObjectStore) -> dict:
    return json.loads(o.fs.cat_file(f"{o.root}/{ASSET}/{PART}/{POINTER}"))


def current(o: ObjectStore) -> str:
    """The store path of the version the pointer names."""
    return f"{o.root}/{ASSET}/{PART}/{pointer(o)['version']}"


def versions(o: ObjectStore) -> dict[str, set[str]]:
    """Each version under the partition and the files it holds."""
    top = f"{o.root}/{ASSET}/{PART}/_v/"
    out: dict[str, set[str]] = {}
    for p in o.fs.find(top):
        v, _, name = p[len(top):].partition("/")
        out.setdefault(v, set()).add(name)
    return out


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every reader's cache in the test's folder (a subprocess inherits it)."""
    monkeypatch.setenv("MT_CACHE", str(tmp_path / "mt-cache"))
    return tmp_path / "mt-cache" / "artefacts"


@pytest.fixture(params=["memory", "file"])
def url(request, tmp_path):
    if request.param == "file":
        yield f"file://{tmp_path}/store"
        return
    u = f"memory://mt-test-{uuid.uuid4().hex[:8]}/study/tiny"
    yield u
    fs, path = url_to_fs(u)
    if fs.exists(path):  # the memory filesystem is one per process
        fs.rm(path, recursive=True)


def test_publish_and_read_back_verified(url, cache, tmp_path):
    put(url, "v1")
    art = store_at(url).read(ASSET, PART)
    assert art.path == cache / art.digest and version_of(art) == "v1" and art.partition == PART
    # the same manifest as the local store's, and the same digest for the same files
    put(str(tmp_path / "local"), "v1")
    local = store_at(str(tmp_path / "local")).read(ASSET, PART).manifest
    assert sorted(art.manifest["files"]) == FILES and art.digest == local["digest"]
    assert {k: v for k, v in art.manifest.items() if k != "created"} == {k: v for k, v in local.items()
                                                                          if k != "created"}
    # on the store: one version holding every file and the manifest, and the pointer naming it with its digest
    o = ObjectStore(url, cache=tmp_path / "cold")
    assert pointer(o)["digest"] == art.digest and pointer(o)["version"].startswith("_v/")
    assert list(versions(o).values()) == [{*FILES, MANIFEST}]
    # a reader elsewhere (an empty cache) downloads, verifies and renames into its cache; no temporary folder stays
    cold = o.read(ASSET, PART)
    assert cold.path == tmp_path / "cold" / art.digest and cold.manifest == art.manifest and version_of(cold) == "v1"
    assert json.loads((cold.path / MANIFEST).read_text()) == art.manifest
    assert list((tmp_path / "cold" / ".tmp").iterdir()) == []
    assert not any((cache / ".staging").rglob("*.bin"))


def test_listing_and_location_without_reading_files(url, cache, tmp_path):
    """What the lineage table, the catalog and the CLI list: the published partitions and their manifests, files
    unread; an artefact's location (what a materialization records) is its version's URL, read back through it."""
    from mt_resources.objstore import read_url

    for root in (url, str(tmp_path / "local")):
        st = store_at(root)
        assert st.published() == []
        put(root, "v1")
        assert st.published() == st.published(ASSET) == [(ASSET, PART)] and st.published("other") == []
        where, manifest = st.manifest(ASSET, PART)
        art = st.read(ASSET, PART)
        assert manifest == art.manifest and where == art.location == art.provenance()["path"]
        with pytest.raises(ArtifactError, match="no complete artefact"):
            st.manifest(ASSET, "C9_s1")
    assert art.url is None and where == str(art.path)  # local: the folder itself
    art = store_at(url).read(ASSET, PART)
    assert "/_v/" in art.url and read_url(art.url, cache) == art  # the partition's current version, in this cache


def test_republish_switches_the_pointer_and_gc_keeps_the_current(url, tmp_path):
    put(url, "v1")
    first = store_at(url).read(ASSET, PART)
    put(url, "v2")
    art = store_at(url).read(ASSET, PART)
    assert version_of(art) == "v2" and art.manifest["run_id"] == "run-v2" and art.digest != first.digest
    o = ObjectStore(url, cache=tmp_path / "cold")
    old = [v for v in versions(o) if f"_v/{v}" != pointer(o)["version"]]
    assert len(versions(o)) == 2 and len(old) == 1
    # the old version is not read: damaging it changes nothing for a reader
    o.fs.pipe_file(f"{o.root}/{ASSET}/{PART}/_v/{old[0]}/config.json", b"garbage")
    assert version_of(o.read(ASSET, PART)) == "v2"
    assert o.gc(older_than_s=3600) == []  # too young: it could be a writer still uploading
    assert o.gc(older_than_s=0) == [o.fs.unstrip_protocol(f"{o.root}/{ASSET}/{PART}/_v/{old[0]}")]
    assert list(versions(o)) == [pointer(o)["version"][3:]]
    assert version_of(ObjectStore(url, cache=tmp_path / "cold2").read(ASSET, PART)) == "v2"


def test_tampered_file_is_refused(url, tmp_path):
    put(url, "v1")
    o = ObjectStore(url, cache=tmp_path / "cold")
    f = f"{current(o)}/adapter/f1.bin"
    o.fs.pipe_file(f, b"X" * len(o.fs.cat_file(f)))  # same size: only the md5 tells
    with pytest.raises(ArtifactError, match=r"do not match the manifest \(adapter/f1.bin\)"):
        o.read(ASSET, PART)
    assert [p.name for p in (tmp_path / "cold").iterdir()] == [".tmp"]  # nothing cached
    # a reader whose cache holds the verified bytes still refuses a store whose files are not the manifest's
    o.fs.pipe_file(f, b"longer than before")
    with pytest.raises(ArtifactError, match=r"do not match the manifest \(adapter/f1.bin\)"):
        store_at(url).read(ASSET, PART)
    o.fs.rm(f)
    with pytest.raises(ArtifactError, match=r"adapter/f1.bin"):
        store_at(url).read(ASSET, PART)


def test_a_pointer_without_its_manifest_or_digest_is_refused(url, tmp_path):
    store = store_at(url)
    with pytest.raises(ArtifactError, match=r"no complete artefact .*no _current.json"):
        store.read(ASSET, PART)
    put(url, "v1")
    o = ObjectStore(url, cache=tmp_path / "cold")
    ptr, base = pointer(o), f"{o.root}/{ASSET}/{PART}"
    o.fs.pipe_file(f"{base}/{POINTER}", json.dumps({**ptr, "digest": "0" * 32}).encode())
    with pytest.raises(ArtifactError, match="the pointer's digest 0+ is not the manifest's"):
        store.read(ASSET, PART)
    o.fs.pipe_file(f"{base}/{POINTER}", json.dumps({**ptr, "version": "_v/never-written"}).encode())
    with pytest.raises(ArtifactError, match=r"_v/never-written, which has no _manifest.json"):
        store.read(ASSET, PART)
    o.fs.pipe_file(f"{base}/{POINTER}", json.dumps(ptr).encode())
    o.fs.rm(f"{base}/{ptr['version']}/{MANIFEST}")
    with pytest.raises(ArtifactError, match=r"which has no _manifest.json \(a partial or removed version\)"):
        store.read(ASSET, PART)


def test_a_damaged_cache_copy_is_fetched_again(url):
    put(url, "v1")
    store = store_at(url)
    art = store.read(ASSET, PART)
    (art.path / "config.json").write_text('{"version": "changed"}')
    again = store.read(ASSET, PART)
    assert again.path == art.path and version_of(again) == "v1"


def test_a_failed_write_publishes_nothing(url, cache):
    with pytest.raises(RuntimeError):
        with store_at(url).writer(ASSET, PART, run_id="r") as out:
            (out / "part.parquet").write_text("half")
            raise RuntimeError("boom")
    o = ObjectStore(url, cache)
    assert not o.fs.exists(f"{o.root}/{ASSET}")
    assert list((cache / ".staging" / ASSET).iterdir()) == []
    with pytest.raises(ArtifactError, match="no complete artefact"):
        store_at(url).read(ASSET, PART)


def test_url_roots_pass_through_and_local_roots_are_unchanged(tmp_path, monkeypatch):
    study = SimpleNamespace(name="villain", profile="tiny")
    assert artefact_root(study, "s3://bucket/prefix/{study}/{profile}") == "s3://bucket/prefix/villain/tiny"
    assert artefact_root(study, "file:///shared/{study}") == "file:///shared/villain"
    assert artefact_root(study, "store/{study}") == PROJECT_ROOT / "store" / "villain"
    assert store_at(str(tmp_path)).path(ASSET, PART) == tmp_path / ASSET / PART
    with pytest.raises(ArtifactError, match="is an object store: this code path assumes a local root"):
        store_at("s3://bucket/prefix").path(ASSET, PART)


# ---- writers killed for real ----------------------------------------------------------------------------------------
def killed_writer(root: str, version: str, failpoint: str) -> None:
    p = subprocess.run([sys.executable, "-c", "from mt_settings import Settings; Settings.from_env().install(); "
                        f"from tests.test_objstore import put; put({root!r}, {version!r})"],
                       cwd=ROOT, env={**os.environ, "MT_FAILPOINT": failpoint}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])


def partial(failpoint: str) -> set[str]:
    """What a writer killed at ``failpoint`` left in its version: two files, or everything but the pointer."""
    return set(FILES[:2]) if failpoint == "upload:2" else {*FILES, MANIFEST}


def kill_and_rerun(url: str, tmp_path: Path, first: str, second: str) -> None:
    """A first write killed at ``first``: nothing to read; rerun. A rewrite killed at ``second``: the previous version
    is read; rerun. Then only the current version survives gc."""
    store, o = store_at(url), ObjectStore(url, cache=tmp_path / "cold")
    killed_writer(url, "v1", first)
    assert list(versions(o).values()) == [partial(first)]
    with pytest.raises(ArtifactError, match="no complete artefact"):
        store.read(ASSET, PART)
    put(url, "v1")
    assert version_of(store.read(ASSET, PART)) == "v1"
    killed_writer(url, "v2", second)
    assert sorted(map(sorted, versions(o).values())) == sorted(map(sorted, [partial(first), partial(second),
                                                                            {*FILES, MANIFEST}]))
    assert version_of(o.read(ASSET, PART)) == "v1"  # an empty cache: what the store holds is the previous version
    assert store.clean_staging(older_than_s=0) == 2  # the killed writers' local staging
    put(url, "v2")
    assert version_of(store.read(ASSET, PART)) == "v2"
    assert len(o.gc(older_than_s=0)) == 3 and len(versions(o)) == 1
    assert version_of(ObjectStore(url, cache=tmp_path / "cold2").read(ASSET, PART)) == "v2"


@pytest.mark.parametrize("failpoint", ["upload:2", "publish"])
def test_killed_writer_on_a_local_fsspec_root(tmp_path, failpoint):
    kill_and_rerun(f"file://{tmp_path}/store", tmp_path, failpoint, failpoint)


# ---- an S3-compatible server across the edge (moto) ---------------------------------------------------------------
BUCKET = "mt-artefacts"


@pytest.fixture(scope="module")
def s3_edge(tmp_path_factory):
    """moto's S3 server on 127.0.0.1, configured the way a real endpoint is: AWS_ENDPOINT_URL and credentials in the
    environment (fake ones), which s3fs, boto3 and the killed writers' subprocesses all read."""
    import logging

    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    nowhere = str(tmp_path_factory.mktemp("aws") / "none")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "fake",
                     "AWS_SECRET_ACCESS_KEY": "fake", "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": nowhere,
                     "AWS_SHARED_CREDENTIALS_FILE": nowhere, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(k, raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield SimpleNamespace(url=f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}", s3=boto3.client("s3"))
        s3fs.S3FileSystem.clear_instance_cache()  # its instances point at this server
    server.stop()


def test_s3_edge_fake_moto_publish_read_republish(s3_edge, tmp_path):
    url = f"{s3_edge.url}/rw/tiny"
    put(url, "v1")
    assert version_of(store_at(url).read(ASSET, PART)) == "v1"
    o = ObjectStore(url, cache=tmp_path / "cold")
    art = o.read(ASSET, PART)
    assert version_of(art) == "v1" and art.path == tmp_path / "cold" / art.digest
    put(url, "v2")
    assert version_of(store_at(url).read(ASSET, PART)) == "v2"
    assert version_of(ObjectStore(url, cache=tmp_path / "cold2").read(ASSET, PART)) == "v2"
    # a file changed on the server, behind the store's back (same size)
    key = f"{current(o)}/adapter/f1.bin".split("/", 1)[1]
    body = s3_edge.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3_edge.s3.put_object(Bucket=BUCKET, Key=key, Body=b"X" * len(body))
    with pytest.raises(ArtifactError, match=r"do not match the manifest \(adapter/f1.bin\)"):
        ObjectStore(url, cache=tmp_path / "cold3").read(ASSET, PART)
    s3_edge.s3.delete_object(Bucket=BUCKET, Key=f"{current(o)}/{MANIFEST}".split("/", 1)[1])
    with pytest.raises(ArtifactError, match="which has no _manifest.json"):
        store_at(url).read(ASSET, PART)


def test_s3_edge_fake_moto_killed_writer(s3_edge, tmp_path):
    kill_and_rerun(f"{s3_edge.url}/kill/tiny", tmp_path, "upload:2", "publish")
