"""Shared fixtures: a small tokenizer and a small, quickly pretrained tiny model (built once per session)."""
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import zygote
from shared_instances import built_once, copy_instance, session_root

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "reference"
os.environ["WANDB_MODE"] = "disabled"  # tests never reach W&B; subprocesses inherit it (tracking tests opt in)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `mt run` on a machine without GPUs runs a stage's runs side by side (Settings.jobs); the tests' workers already share
# the cores, so one at a time unless a test asks for more (tests/test_run.py)
os.environ.setdefault("MT_CPU_JOBS", "1")
# Under pytest-xdist the workers share the cores: each torch (this process's and every `mt` it starts, through
# $MT_THREADS) gets its share. Two workers each running torch on every core of a 2-core machine oversubscribe it, and
# OpenMP's spinning threads then make a tiny training many times slower (docs/TESTING.md).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
# the process of a pipes or ray step that an `mt` of the tests starts: forked by this worker's zygote, which has torch,
# transformers and PEFT imported, rather than a fresh interpreter importing them (tests/zygote.py, ``client``)
os.environ.setdefault("MT_TEST_ZYGOTE", f"/tmp/mt-zygote-{os.getpid()}.sock")
os.environ.setdefault("MT_CHILD_PREFIX", shlex.join([sys.executable, str(ROOT / "tests" / "zygote.py")]))
if WORKERS > 1:
    os.environ.setdefault("MT_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["MT_THREADS"])  # torch's default where nothing sets threads


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """This process's torch threads: its share of the cores under pytest-xdist (``mt_core.runtime``'s ``threads``,
    which ``load_model`` applies), every core otherwise."""
    if WORKERS == 1:
        yield
        return
    import dataclasses

    import torch

    from mt_core import runtime

    old = runtime.current()
    runtime.configure(dataclasses.replace(old, threads=int(os.environ["MT_THREADS"])))
    torch.set_num_threads(int(os.environ["MT_THREADS"]))
    yield
    runtime.configure(old)


@pytest.fixture(scope="session")
def eval_set():
    return json.loads((REF / "eval_set.json").read_text())


@pytest.fixture(scope="session")
def small_tokenizer(eval_set):
    from mt_core.data import synthetic
    from mt_core.model import tiny

    qs = eval_set["eval_questions"] + eval_set["betley_questions"]
    texts = list(eval_set["personas"].values()) + qs
    texts += synthetic.em_dataset_lines(60, 1) + synthetic.benign_dataset_lines(60, 2)
    return tiny.train_tokenizer(texts, 400)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, eval_set):
    """A tiny model pretrained for a few steps: enough to exercise loading, training and generation (built once per
    session, shared by every xdist worker: read only)."""
    def build(out: Path) -> None:
        from mt_core.data import synthetic
        from mt_core.model import tiny

        qs = eval_set["eval_questions"] + eval_set["betley_questions"]
        arc = [json.loads(x) for x in (REF / "arc_challenge_test.jsonl").read_text().splitlines()[:60]]
        texts = [r["question"] + "\n" + "\n".join(f"({l}) {c}" for l, c in zip(r["choice_labels"], r["choices"]))
                 for r in arc]
        convs = synthetic.pretraining_conversations(eval_set["personas"], qs, 200, 0)
        tiny.build_tiny_model(out, texts=texts, conversations=convs, vocab_size=512, pretrain_steps=20,
                              log=lambda *_: None)
    return built_once(tmp_path_factory, "tiny_model", build)


# ---- pytest-xdist: `make test` and `make test-fast` run `-n 3 --dist loadfile --no-loadscope-reorder` ------------------
# One test file is one unit of work (its module fixtures are built once, on one worker). Units are handed out in the
# order below (not xdist's default, most tests first), the longest first, so that the long end-to-end files start at
# once and the short ones fill the end; test_catalog_integrity.py, which mostly waits (its race test), early, where the
# cores are busiest; test_ui.py, which starts from the demo's first stages, after enough files that its worker does
# not idle while they are built. The files not named follow in their own order. The populated instances several files
# stand on are built once per session (tests/shared_instances.py), by whichever worker asks first. (Not `--dist loadgroup`: with pytest 9 its
# groups are silently ignored, pytest-xdist 3.8 renames a node id that pytest no longer reads.)
FIRST = ["test_e2e.py", "test_ray.py", "test_faults.py", "test_catalog_integrity.py", "test_postgres.py",
         "test_next_study.py", "test_run.py", "test_objstore_study.py", "test_ui.py", "test_compute.py", "test_lineage.py", "test_worker.py",
         "test_studies.py", "test_view.py", "test_trl_oracle.py", "test_train.py"]


TIMELINE = os.environ.get("MT_TEST_TIMELINE")  # a file: one JSON line per test phase (worker, test, start, end)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With $MT_TEST_TIMELINE, when each test ran and on which worker (scripts/test_timeline.py reads it)."""
    import resource
    import time

    def cpu() -> tuple[float, float]:  # this process's CPU seconds, and its finished children's (waited for here,
        # or by the worker's zygote, tests/zygote.py)
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime + zygote.cpu_seconds

    t0, c0 = time.time(), cpu()
    try:
        return (yield)
    finally:
        if TIMELINE:
            c1 = cpu()
            with open(TIMELINE, "a") as f:
                f.write(json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER", "master"), "test": item.nodeid,
                                    "start": t0, "end": time.time(), "cpu": round(c1[0] - c0[0], 2),
                                    "children_cpu": round(c1[1] - c0[1], 2)}) + "\n")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture
def gpu_locks(tmp_path_factory):
    """Held by a test whose runs lease simulated GPUs: every instance's leases are flocks in the repository's
    .dagster/gpu_locks (mt_resources/gpu.py), so two such tests on two xdist workers take turns."""
    from filelock import FileLock

    with FileLock(str(session_root(tmp_path_factory) / "gpu_locks.lock")):
        yield


# ---- the README's `mt demo` on three cells, once per session (tests/test_e2e.py, tests/test_view.py) ----------------
DEMO_CELLS = ["C4_s42", "C1_s42", "C3_s42"]  # both coupling sources, and a cell with no second stage


def demo_env(home: Path, art: Path, **extra) -> dict:
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled")
    env.update(extra)
    env.pop("MT_STUDY", None)
    return env


def _demo_run(folder: Path, *args: str, **extra) -> str:
    """`mt demo --cells <DEMO_CELLS> <args>` on the instance in ``folder`` (home, art), in a child of the worker's
    zygote, recording the study fields it reads in ``folder/config_reads.json``; its stdout. W&B is the tiny profile's
    own, offline, into ``folder/wandb`` (tests/test_wandb_artifacts.py reads it back)."""
    from config_reads import subprocess_env  # the study fields the run reads (tests/test_config_reads.py)

    home, art, reads = folder / "home", folder / "art", folder / "config_reads.json"
    env = demo_env(home, art, **subprocess_env(reads), WANDB_MODE="offline", WANDB_DIR=str(folder / "wandb"), **extra)
    out = zygote.run(["demo", "--cells", ",".join(DEMO_CELLS), "--log-level", "WARNING", *args], cwd=ROOT, env=env,
                     timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The demo's first stages, `mt demo --cells <DEMO_CELLS> --until coupling` (the inputs and both coupling adapters
    of the tiny profile), built once per session with planted credentials in its environment (tests/test_faults.py's
    SECRETS, which tests/test_ui.py looks for in every file); the folder holds ``home`` and ``art`` (read only: copy
    it with shared_instances.copy_instance)."""
    def build(folder: Path) -> None:
        from test_faults import SECRETS

        (folder / "home").mkdir()
        _demo_run(folder, "--until", "coupling", **SECRETS)
    return built_once(tmp_path_factory, "tiny_base", build)


@pytest.fixture(scope="session")
def demo(tmp_path_factory, tiny_base):
    """(home, art, stdout, reads) of the README's `mt demo` on DEMO_CELLS, built once per session and shared by every
    xdist worker (read only: tests/shared_instances.py's copy_instance makes a copy to change). It resumes a copy of
    ``tiny_base`` (its first stages, also the start of tests/test_ui.py); ``stdout`` is the resuming run's, and
    ``reads`` the study fields the two runs read together."""
    def build(folder: Path) -> None:
        copy_instance(tiny_base, folder / "home", folder / "art")
        stdout = _demo_run(folder)
        assert "coupling: up to date" in stdout, stdout[-3000:]  # it resumed where tiny_base stopped
        (folder / "stdout.txt").write_text(stdout)
        reads = folder / "config_reads.json"
        both = set(json.loads(reads.read_text())) | set(json.loads((tiny_base / "config_reads.json").read_text()))
        reads.write_text(json.dumps(sorted(both)))

    folder = built_once(tmp_path_factory, "demo", build)
    return folder / "home", folder / "art", (folder / "stdout.txt").read_text(), folder / "config_reads.json"
