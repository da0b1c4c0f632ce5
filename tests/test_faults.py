"""Kill -9 at each stage of a cell, then resume: nothing partial is accepted, the killed run is recorded failed, and
the resumed study ends with the same artefacts (md5 for md5) as a run that was never interrupted (issue 14).

One small study (tests/test_compute.py ``_small_study``), one cell with every stage (C1: EM training), driven by
`mt run` in its own process exactly as a researcher runs it. Each fault is a real SIGKILL: ``MT_FAILPOINT`` makes the
process kill itself at a named place (mt_core/faults.py), the step process for inline runs, the Pipes child when the
work runs there. The chain goes stage by stage in one instance: each rerun resumes what the kill before it left and
is killed one stage further on. It starts where `mt run --until coupling` leaves the study, from a copy of the session's
``small_base`` (tests/shared_instances.py), and so does the uninterrupted reference, in an instance of its own.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mt_core.layout import MANIFEST, artefact_dir
import zygote
from shared_instances import copy_instance, small_base
from test_compute import _small_study

ROOT = Path(__file__).resolve().parents[1]
STUDY = "marker_transfer_villain"
CELL = "C1_s42"
CATALOG = "duckdb_catalog"
CELL_ASSETS = ("cell_adapter", "marker_completions", "alignment_completions", "arc_scores", "marker_rates",
               "alignment_scores", "degeneracy_audit")
SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-api03-PLANTED-" + "a1" * 20, "WANDB_API_KEY": "f00d" * 10,
           "HF_TOKEN": "hf_PLANTEDplantedPLANTEDplanted1234"}
# (failpoint, compute mode, the artefacts the kill must leave unpublished)
KILLS = [
    ("train", "inline", ["cell_adapter"]),
    ("train", "pipes", ["cell_adapter"]),  # the Pipes child dies; the step process reports it
    ("publish", "inline", ["cell_adapter"]),  # manifest written, rename not done
    # one step makes the completions and the ARC scores: killed while sampling (its Pipes child) and while scoring
    # ARC (inline), each kill of a process the other mode already covers in the train stage
    ("generate", "pipes", ["marker_completions", "alignment_completions", "arc_scores"]),
    ("arc", "inline", ["marker_completions", "alignment_completions", "arc_scores"]),
    ("judge", "inline", ["alignment_scores"]),
    ("catalog", "inline", ["duckdb_catalog"]),
]


def _env(tmp: Path, name: str, study: Path, **extra) -> tuple[dict, Path, Path]:
    home, art = tmp / f"home_{name}", tmp / f"art_{name}"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", MT_STUDY=str(study),
               WANDB_MODE="disabled", **extra)
    for k in ("MT_RECORD_CONFIG_READS", "MT_FAILPOINT", "MT_COMPUTE"):
        env.pop(k, None)
    return env, home, art


def _mt(env: dict, *args: str, **extra) -> subprocess.CompletedProcess:
    return zygote.run(["run", "--cells", CELL, "--launch", "inline", *args], cwd=ROOT, env={**env, **extra},
                      timeout=900)


def _md5s(home: Path) -> dict[str, str]:
    """The md5 of the latest materialization of every asset partition the instance records."""
    out = {}
    with dg.DagsterInstance.from_config(str(home)) as inst:
        for key in inst.get_asset_keys():
            parts = inst.get_materialized_partitions(key) or {None}
            for p in parts:
                rec = inst.fetch_materializations(dg.AssetRecordsFilter(
                    asset_key=key, asset_partitions=[p] if p else None), limit=1).records
                if rec:
                    out[f"{key.to_user_string()}[{p or '-'}]"] = rec[0].asset_materialization.metadata["md5"].value
    return out


def _sql(env: dict) -> str:
    q = ("SELECT cell, persona, count(*) AS n, sum(strict_hit::int) AS hits FROM completions GROUP BY ALL "
         "ORDER BY ALL")
    p = zygote.run(["sql", q, "--format", "csv"], cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def _counts(home: Path) -> dict[str, int]:
    """How many times each input and coupling asset was materialized."""
    with dg.DagsterInstance.from_config(str(home)) as inst:
        return {a: len(inst.fetch_materializations(dg.AssetKey([STUDY, a]), limit=100).records)
                for a in ("base_model", "em_dataset", "eval_set", "onpolicy_completions", "coupling_adapter")}


def _statuses(home: Path) -> dict[str, str]:
    with dg.DagsterInstance.from_config(str(home)) as inst:
        return {r.run_id: r.status.value for r in inst.get_runs()}


def _published(art: Path, asset: str) -> bool:
    part = None if asset == "duckdb_catalog" else CELL
    return (artefact_dir(art, asset, part) / MANIFEST).exists()


@pytest.mark.slow
def test_killed_at_each_stage_then_resumed_gives_the_uninterrupted_result(tmp_path, tmp_path_factory):
    study = _small_study(tmp_path / "small.yaml")

    # the reference: the same cell, never interrupted, from where the chain starts too (a copy of the session's
    # small_base: `mt run --until coupling`); with planted credentials and W&B writing offline runs, none of which
    # may reach an artefact, a manifest, a Parquet row, the instance (event log, run config) or W&B's files
    wandb_dir = tmp_path / "wandb"
    ref_env, ref_home, ref_art = _env(tmp_path, "ref", study, WANDB_DIR=str(wandb_dir), **SECRETS)
    copy_instance(small_base(tmp_path_factory), ref_home, ref_art)
    p = _mt(ref_env, WANDB_MODE="offline")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    reference = _md5s(ref_home)
    files = [f for d in (ref_home, ref_art, wandb_dir) for f in d.rglob("*") if f.is_file()]
    assert any(f.suffix == ".wandb" for f in files), "W&B wrote no offline run: the probe would prove nothing"
    leaks = {f"{name} in {f}" for f in files for name, v in SECRETS.items() if v.encode() in f.read_bytes()}
    leaks |= {f"{name} in mt run's output" for name, v in SECRETS.items() if v in p.stdout + p.stderr}
    assert not leaks, sorted(leaks)

    # the chain starts where `mt run --until coupling` of this study leaves it (built once per session, copied)
    env, home, art = _env(tmp_path, "chain", study)
    copy_instance(small_base(tmp_path_factory), home, art)
    finished = _counts(home)
    assert finished["coupling_adapter"] == 1 and finished["base_model"] == 1
    killed_runs: list[set[str]] = []
    for point, mode, unpublished in KILLS:
        before = set(_statuses(home))
        p = _mt(env, MT_FAILPOINT=point, MT_COMPUTE=mode)
        label = f"kill at {point} ({mode})"
        if mode == "inline":  # the step ran in the `mt run` process: killed with it
            assert p.returncode == -signal.SIGKILL, f"{label}: exit {p.returncode}\n{p.stdout[-2000:]}"
        else:  # the Pipes child died; the step, the run and `mt run` fail with a message
            assert p.returncode not in (0, -signal.SIGKILL), f"{label}: exit {p.returncode}"
            assert "FAILED" in p.stdout + p.stderr, p.stdout[-2000:]
        for asset in unpublished:
            assert not _published(art, asset), f"{label}: {asset} was published"
        new = set(_statuses(home)) - before
        assert new, f"{label}: no run recorded"
        killed_runs.append(new)
        if point == "train" and mode == "inline":  # `mt status` names the run whose process is gone
            st = zygote.run(["status"], cwd=ROOT, env=env, timeout=300)
            assert st.returncode == 0 and "STARTED" in st.stdout and "is gone" in st.stdout, st.stdout[-2000:]

    # the last rerun resumes and completes; every killed run is then on record as failed, none left STARTED
    p = _mt(env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    status = _statuses(home)
    for (point, mode, _), runs in zip(KILLS, killed_runs):
        assert {status[r] for r in runs} <= {"FAILURE", "SUCCESS"}, f"kill at {point} ({mode}): {runs} {status}"
        assert "FAILURE" in {status[r] for r in runs}, f"kill at {point} ({mode}): no failed run"
    assert "STARTED" not in status.values()
    for asset in CELL_ASSETS + ("duckdb_catalog",):
        assert _published(art, asset), asset

    # what was finished before the first kill was never redone
    assert _counts(home) == finished

    # identical to the uninterrupted run, md5 for md5; the DuckDB catalog (an index whose views name this root's
    # files, in a file format that is not byte-stable) answers the same queries instead
    resumed = _md5s(home)
    assert resumed.keys() == reference.keys()
    diff = {k: (reference[k], resumed[k]) for k in reference if reference[k] != resumed[k] and CATALOG not in k}
    assert not diff, diff
    assert _sql(env) == _sql(ref_env) and CELL in _sql(env)

    # the same partition twice at once (issue 25): one run makes it; the other waits for that run and then uses what
    # it made ("made by run … meanwhile"), also under --force: exactly one new materialization of each asset, none
    # of the inputs or the coupling adapter, and the redone cell is still the reference's, md5 for md5
    def counts() -> dict[str, int]:
        with dg.DagsterInstance.from_config(str(home)) as inst:
            return {a: len(inst.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey([STUDY, a]), asset_partitions=[CELL]), limit=100).records) for a in CELL_ASSETS}

    before = counts()
    cmd = ["run", "--cells", CELL, "--launch", "inline", "--until", "cells", "--force"]
    procs = [zygote.popen(cmd, cwd=ROOT, env=env, merge=True) for _ in range(2)]
    outs = [(q.wait(timeout=900), q.stdout.read()) for q in procs]
    assert [rc for rc, _ in outs] == [0, 0], outs
    waited = [o for _, o in outs if "meanwhile: up to date" in o]
    assert len(waited) == 1 and "is making it; waiting for it" in waited[0], outs
    assert "Traceback" not in waited[0]
    assert {a: n - before[a] for a, n in counts().items()} == {a: 1 for a in CELL_ASSETS}
    assert _counts(home) == finished  # --force with --cells redoes the cell, not the current inputs or adapter
    for asset in CELL_ASSETS:  # each artefact on disk is the one the instance recorded last
        with dg.DagsterInstance.from_config(str(home)) as inst:
            rec = inst.fetch_materializations(dg.AssetRecordsFilter(
                asset_key=dg.AssetKey([STUDY, asset]), asset_partitions=[CELL]), limit=1).records[0]
        manifest = (artefact_dir(art, asset, CELL) / MANIFEST).read_text()
        assert rec.run_id in manifest, asset
    after = _md5s(home)
    assert {k: v for k, v in after.items() if CATALOG not in k} == {k: v for k, v in reference.items()
                                                                     if CATALOG not in k}

    # what the kills left in staging belongs to dead writers: cleaned at once, nothing else touched
    from mt_resources.store import ArtifactStore

    left = list((art / ".staging").glob("*/*"))
    assert ArtifactStore(root=str(art)).clean_staging(older_than_s=0) == len(left)
    assert _md5s(home) == after


def test_a_held_failpoint_says_where_it_is_and_waits_to_be_killed(tmp_path):
    """MT_FAILPOINT_HOLD: the failpoint writes where it holds (pid, Ray node) and blocks until killed from outside."""
    import json
    import time

    hold = tmp_path / "held.json"
    code = "from mt_settings import Settings; Settings.from_env().install(); from mt_core.faults import failpoint; failpoint('train'); failpoint('train'); print('passed')"
    env = {**os.environ, "MT_FAILPOINT": "train:2", "MT_FAILPOINT_HOLD": str(hold), "MT_NODE": "w7"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not hold.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert json.loads(hold.read_text()) == {"pid": proc.pid, "node": "w7", "failpoint": "train"}
    time.sleep(0.5)
    assert proc.poll() is None  # still holding, not killed and not passed through
    proc.send_signal(signal.SIGKILL)
    assert proc.communicate()[0] == "" and proc.returncode == -signal.SIGKILL
