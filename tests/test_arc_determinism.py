"""ARC's artefact is the same bytes whichever process scores it (inline, a Pipes child, a Ray job). Those processes
can run torch with different thread counts ($MT_THREADS, else the host's cores: a Ray job's node may have others; a
run `mt run` forked has one), and on the CPU the thread count changes low bits of the forward pass: the scoring pins
one thread (mt_core.evals.arc.one_cpu_thread; docs/RELIABILITY.md)."""
import hashlib

import pytest
import torch

from mt_core.config import load_study
from mt_core.layout import ArcScores
from mt_core.steps.cells import _arc

THREADS = (1, 2, 3, 4, 5, 6, 7, 8)  # each count splits a kernel's work elsewhere (the test model: 5 and 7 differed)


@pytest.fixture
def restore_threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_arc_bytes_do_not_depend_on_torch_threads(tiny_model_dir, tmp_path, restore_threads):
    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    study = load_study(profile="tiny")
    study = study.model_copy(update={"arc": study.arc.model_copy(update={"limit": 120})})  # 4 batches of 32
    md5s = {}
    for n in THREADS:
        torch.set_num_threads(n)
        out = tmp_path / str(n)
        out.mkdir()
        _arc(study, "C1_s42", model, tok, out, log=lambda *_: None)  # the step's own writer: arc.parquet's bytes
        assert torch.get_num_threads() == n  # the process's count is given back
        md5s[n] = hashlib.md5((out / ArcScores.ROWS).read_bytes()).hexdigest()
    assert md5s == {n: md5s[1] for n in THREADS}
