"""docs/PROTOCOL_PARITY.md is generated from the config; undocumented differences are flagged."""
import importlib.util

import pytest

from scripts import parity
from mt_core.config import DEFAULT_STUDY, PROJECT_ROOT as ROOT, load_study


@pytest.fixture(scope="module")
def study():
    return load_study(DEFAULT_STUDY, parity.PARITY_PROFILE)


def test_committed_document_is_current(study):
    doc = ROOT / "docs" / "PROTOCOL_PARITY.md"
    assert doc.read_text() == parity.render(study), "run `python scripts/gen_parity.py` and commit the document"


def test_check_flag_detects_staleness(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gen_parity", ROOT / "scripts" / "gen_parity.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    stale = tmp_path / "PROTOCOL_PARITY.md"
    stale.write_text("old\n")
    monkeypatch.setattr(gen, "DOC", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


def test_enough_rows_and_no_undocumented_difference(study):
    rows = parity.rows(study)
    assert len(rows) >= 40
    assert len({r["key"] for r in rows}) == len(rows)
    assert not [r["key"] for r in rows if r["status"] == parity.UNDOCUMENTED]
    by_key = {r["key"]: r for r in rows}
    assert by_key["recipes.second_stage.lr"]["status"] == "same"
    assert by_key["coupling_data.negative_choice"]["status"].startswith("seeded with random.Random")
    assert by_key["degeneracy.outcome_without_positives"]["ours"] == "no_positives"


def test_undocumented_difference_is_flagged(study):
    recipes = dict(study.recipes)
    recipes["second_stage"] = recipes["second_stage"].model_copy(update={"lr": 2e-4})
    changed = study.model_copy(update={"recipes": recipes})
    by_key = {r["key"]: r for r in parity.rows(changed)}
    assert by_key["recipes.second_stage.lr"]["status"] == parity.UNDOCUMENTED
    assert by_key["recipes.second_stage.lr"]["ours"] == 2e-4
    assert parity.UNDOCUMENTED in parity.render(changed)


def test_values_compare_by_meaning():
    p = parity.Param("x", [0.25, 0.45], lambda s: (0.25, 0.45))
    assert parity.status(p, (0.25, 0.45)) == "same"
    assert parity.status(parity.Param("y", 1, lambda s: True), True) == parity.UNDOCUMENTED  # bool is not 1
    assert parity.status(parity.Param("z", None, lambda s: 0.05, note="why"), 0.05) == "why"


# ---- no row is true by construction: every `ours` reads the code or the study -------------------------------------
def _constant(fn) -> bool:
    """Whether ``fn`` returns without loading anything but constants (no argument, global, closure or attribute)."""
    import dis

    return not [i for i in dis.get_instructions(fn) if i.opname.startswith("LOAD_") and i.opname != "LOAD_CONST"]


def _literal_lambdas(source: str) -> list[str]:
    """The keys of ``Param(...)`` calls in ``source`` whose ``ours`` is a lambda with a literal body."""
    import ast

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Param":
            ours = node.args[2] if len(node.args) > 2 else next((k.value for k in node.keywords if k.arg == "ours"),
                                                                None)
            if isinstance(ours, ast.Lambda) and not any(isinstance(n, ast.Name) for n in ast.walk(ours.body)):
                out.append(ast.unparse(node.args[0]) if node.args else "?")
    return out


def test_the_constant_detectors_can_fail():
    assert _constant(lambda s: True) and _constant(lambda s: "none (atomic, manifest-verified)")
    assert _constant(lambda s: [1, 2]) and not _constant(lambda s: s.marker)
    assert _literal_lambdas('Param("k", 1, lambda s: True)\nParam("j", 2, ours=lambda s: "x" + "y")') == ["'k'", "'j'"]
    assert _literal_lambdas('Param("k", 1, lambda s: s.marker)\nParam("j", 2, _probe)') == []


def test_no_extractor_is_a_constant():
    import inspect

    assert not [p.key for p in parity.REFERENCE if _constant(p.ours)]
    assert not _literal_lambdas(inspect.getsource(parity.reference))


def _row(study, key):
    p = next(p for p in parity.REFERENCE if p.key == key)
    ours = p.ours(study)
    return ours, parity.status(p, ours)


def _patch_adamw(mp):
    from mt_core.model import train

    mp.setattr(train, "ADAMW", {"betas": (0.9, 0.95), "eps": 1e-6})


def _patch_step_tokens(mp):  # a loss normalised by the number of examples instead of the step's trained tokens
    from mt_core.model import train

    mp.setattr(train, "step_tokens", lambda step: len(step))


def _patch_max_model_len(mp):
    from mt_core.generate import vllm_engine

    mp.setattr(vllm_engine.engine_kwargs, "__kwdefaults__",
               {**vllm_engine.engine_kwargs.__kwdefaults__, "max_model_len": 4096})


def _patch_template(mp):  # a template that adds no system turn
    from mt_core.model import tiny

    mp.setattr(tiny, "CHATML_TEMPLATE", tiny.CHATML_TEMPLATE.split("{%- endif %}", 1)[1])


def _patch_arc(mp):
    from mt_core.evals import arc

    mp.setattr(arc, "arc_messages", lambda row: [{"role": "user", "content": f"{row['question']} Answer:"}])


def _patch_label_token(mp):  # score a label by its last token
    from mt_core.evals import arc

    mp.setattr(arc, "label_token", lambda tok, label: tok.encode(label)[-1])


def _patch_truncation(mp):  # truncation that keeps the end of a long chat
    from mt_core.data import chat

    real = chat.encode
    mp.setattr(chat, "last_turn_example",
               lambda tok, msgs, n: chat.Example(real(tok, chat.render(tok, msgs))[-n:], [1] * n))


def _patch_marker_labels(mp):  # a marker_only mask that keeps every completion label
    from mt_core.data import chat

    mp.setattr(chat, "marker_only_labels", lambda ids, labels, marker: labels)


@pytest.mark.parametrize("key, patch, expected", [
    ("optimizer.adamw.betas", _patch_adamw, (0.9, 0.95)),
    ("optimizer.adamw.eps", _patch_adamw, 1e-6),
    ("loss.normalisation", _patch_step_tokens, "neither the step's token mean nor the mean of micro-batch means"),
    ("engine.max_model_len", _patch_max_model_len, 4096),
    ("chat_template.default_system", _patch_template, "none"),
    ("arc.prompt", _patch_arc, "user: '{question} Answer:'"),
    ("arc.scoring", _patch_label_token, None),
    ("truncation.second_stage", _patch_truncation, None),
    ("recipes.coupling.loss", _patch_marker_labels,
     "the last assistant turn (its content and the template's closing tokens)"),
])
def test_rows_follow_the_code(study, monkeypatch, key, patch, expected):
    """Change the value in the code that uses it: the row reports the new value as an undocumented difference."""
    before, status = _row(study, key)
    assert status.startswith("same")
    patch(monkeypatch)
    after, status = _row(study, key)
    assert after != before and status == parity.UNDOCUMENTED
    if expected is not None:
        assert after == expected


def _coupling(study, **update):
    return study.model_copy(update={"recipes": {**study.recipes,
                                                "coupling": study.recipes["coupling"].model_copy(update=update)}})


def test_loss_rows_follow_the_recipe(study):
    """The loss rows say which mask the steps build for the loss the recipe names, not the name."""
    ours, status = _row(_coupling(study, loss="last_assistant_turn"), "recipes.coupling.loss")
    assert ours == _row(study, "recipes.second_stage.loss")[0] and status == parity.UNDOCUMENTED


def test_coupling_source_row_reads_the_recipe(study):
    assert _row(study, "recipes.coupling.source")[0] == "the reference code"
    ours, status = _row(_coupling(study, scheduler="constant", weight_decay=0.01, max_length=2048),
                        "recipes.coupling.source")
    assert ours.startswith("neither: scheduler constant") and status == parity.UNDOCUMENTED
    assert _row(_coupling(study, loss="last_assistant_turn"), "recipes.coupling.source")[0].startswith("neither")


def test_seeding_row_follows_the_engine(study, monkeypatch):
    from mt_core.generate import vllm_engine

    before, _ = _row(study, "samplers.seeding")
    assert before.startswith("one seed per request")
    monkeypatch.setattr(vllm_engine, "request_seed", lambda seed, ids, n=1: seed)
    assert _row(study, "samplers.seeding")[0].startswith("the sampler seed on every request")
    tiny = load_study(DEFAULT_STUDY, "tiny")  # the transformers engine: read from mt_core.generate.hf
    assert _row(tiny, "samplers.seeding")[0].startswith("one generator seeded with the sampler seed per generate call")


def test_version_rows_read_the_pins(study, tmp_path, monkeypatch):
    assert _row(study, "versions.trl")[0] != "0.29.1"
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["trl==0.29.1", "torch>=2"]\n'
                                             '[project.optional-dependencies]\ngpu = ["vllm==0.11.0"]\n')
    monkeypatch.setattr(parity.values, "PYPROJECT", tmp_path / "pyproject.toml")
    ours, status = _row(study, "versions.trl")
    assert ours == "0.29.1" and status.startswith("same")
    assert _row(study, "versions.vllm")[1].startswith("same")
    assert _row(study, "versions.torch")[0] == "not pinned"


def test_a_same_note_does_not_hide_a_difference(study):
    samplers = study.samplers.model_copy(update={"alignment": study.samplers.alignment.model_copy(
        update={"top_p": 0.9})})
    by_key = {r["key"]: r for r in parity.rows(study.model_copy(update={"samplers": samplers}))}
    assert by_key["samplers.alignment.top_p"]["status"] == parity.UNDOCUMENTED
    assert by_key["samplers.alignment.top_k"]["status"].startswith("same (explicit here")


def test_gate_samples_row_follows_run_sweeps(study, monkeypatch):
    from mt_core.steps import common

    ours, _ = _row(study, "gates.samples")
    assert ours.startswith("G0 and G0b: one generation of their 308 distinct chats") and "560 samples shared" in ours
    one_each = lambda gen, sweeps: [sw.rows(gen(*sw.request())) for sw in sweeps]  # noqa: E731 (before 2026-12-08)
    monkeypatch.setattr(common, "run_sweeps", one_each)
    assert _row(study, "gates.samples")[0] == "G0 and G0b: each gate samples its own completions (364 chats generated)"
