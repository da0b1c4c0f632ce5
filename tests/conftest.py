"""Shared fixtures: a small tokenizer and a small, quickly pretrained tiny model (built once per session)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "reference"
os.environ["WANDB_MODE"] = "disabled"  # tests never reach W&B; subprocesses inherit it (tracking tests opt in)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
    """A tiny model pretrained for a few steps: enough to exercise loading, training and generation."""
    from mt_core.data import synthetic
    from mt_core.model import tiny

    out = tmp_path_factory.mktemp("tiny_model")
    qs = eval_set["eval_questions"] + eval_set["betley_questions"]
    arc = [json.loads(x) for x in (REF / "arc_challenge_test.jsonl").read_text().splitlines()[:60]]
    texts = [r["question"] + "\n" + "\n".join(f"({l}) {c}" for l, c in zip(r["choice_labels"], r["choices"]))
             for r in arc]
    convs = synthetic.pretraining_conversations(eval_set["personas"], qs, 200, 0)
    tiny.build_tiny_model(out, texts=texts, conversations=convs, vocab_size=512, pretrain_steps=20,
                          log=lambda *_: None)
    return out


# ---- the README's `mt demo` on three cells, once per session (tests/test_e2e.py, tests/test_view.py) ----------------
DEMO_CELLS = ["C4_s42", "C1_s42", "C3_s42"]  # both coupling sources, and a cell with no second stage


def demo_env(home: Path, art: Path, **extra) -> dict:
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled",
               **extra)
    env.pop("MT_STUDY", None)
    return env


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    home, art = tmp_path_factory.mktemp("dagster_home"), tmp_path_factory.mktemp("artifacts")
    from config_reads import subprocess_env  # the study fields the run reads (tests/test_config_reads.py)

    reads = tmp_path_factory.mktemp("reads") / "config_reads.json"
    out = subprocess.run([sys.executable, "-m", "mt_cli", "demo", "--cells", ",".join(DEMO_CELLS), "--log-level",
                          "WARNING"], cwd=ROOT, env=demo_env(home, art, **subprocess_env(reads)),
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return home, art, out.stdout, reads
