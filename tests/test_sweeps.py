"""What a cell's engine session is asked: the marker sweep puts each persona's prompt in the system turn, the
alignment sample has no system turn, both with the cell's seed; adapters stack in training order."""
import contextlib

from mt_core.config import load_study
from mt_core.data.eval_set import EvalSet
from mt_core.generate.sampling import Completion
from mt_core.generate.session import Engine
from mt_core.layout import AlignmentCompletions, MarkerCompletions, read_rows
from mt_core.steps import cells


def test_marker_sweep_has_persona_prompts_and_alignment_has_none(tmp_path, monkeypatch):
    study = load_study(profile="tiny")
    es = EvalSet.load(study)
    asked = []

    def gen(chats, spec, what):
        asked.append((what, spec.seed, chats))
        return [[Completion("ok", 1, "stop")] * spec.n for _ in chats]

    @contextlib.contextmanager
    def fake_session(study, model_dir, adapters=(), **kw):
        yield Engine(gen, lambda: None, {"engine_starts": 1, "merges": 0})

    monkeypatch.setattr(cells, "session", fake_session)
    out = {a.asset: tmp_path / a.asset for a in (MarkerCompletions, AlignmentCompletions)}
    for d in out.values():
        d.mkdir()
    meta = cells.cell_generations(study, "C1_s137", tmp_path, [], out, log=lambda *_: None)
    (m_what, m_seed, m_chats), (a_what, a_seed, a_chats) = asked
    assert m_what.startswith("marker") and a_what.startswith("alignment") and m_seed == a_seed == 137
    systems = {c[0]["content"] for c in m_chats}
    assert systems == {es.prompts[p] for p in es.personas} and all(c[1]["role"] == "user" for c in m_chats)
    assert all(len(c) == 1 and c[0]["role"] == "user" for c in a_chats)  # no system turn: the template's default
    assert [c[0]["content"] for c in a_chats] == es.betley_questions
    rows = read_rows(out[MarkerCompletions.asset] / MarkerCompletions.COMPLETIONS)
    assert len(rows) == cells.expected_marker_rows(study) == meta[MarkerCompletions.asset]["n_completions"]
    assert meta["engine_starts"] == 1


def test_adapters_stack_in_training_order(tmp_path):
    from mt_core.layout import Adapter

    coupling, cell = tmp_path / "coupling_adapter" / "villain", tmp_path / "cell_adapter" / "C1_s42"
    for d in (coupling, cell):
        (d / Adapter.DIR).mkdir(parents=True)
    got = cells.model_adapters(coupling, cell)
    assert got == [coupling / Adapter.DIR, cell / Adapter.DIR]  # coupling first: the base the cell adapter trained on
    assert cells.model_adapters(None, cell) == [cell / Adapter.DIR]  # a raw base: the cell's adapter only
    (cell / Adapter.DIR).rmdir()
    assert cells.model_adapters(coupling, cell) == [coupling / Adapter.DIR]  # C4: no second stage
