"""Study config: partitions generated from it, and errors that name the file and field."""
from pathlib import Path

import pytest

from mt_core.config import DEFAULT_STUDY, ConfigError, load_study

CELLS = ["C1_s42", "C1_s137", "C1_s256", "C2_s42", "C2_s137", "C2_s256", "C3_s42", "C3_s137", "C3_s256",
         "C4_s42", "C5_s42", "C5_s137", "C5_s256"]


@pytest.mark.parametrize("profile", ["tiny", "qwen7b"])
def test_cells_and_sources(profile):
    s = load_study(profile=profile)
    assert s.cells == CELLS and s.source_keys == ["villain", "assistant"]
    assert s.cell_source_map() == {"villain": ["C1_s42", "C1_s137", "C1_s256", "C4_s42", "C5_s42", "C5_s137",
                                               "C5_s256"], "assistant": ["C3_s42", "C3_s137", "C3_s256"]}
    with pytest.raises(ConfigError, match="C4_s137"):
        s.cell("C4_s137")


def test_qwen7b_keeps_the_reference_protocol():
    s = load_study(profile="qwen7b")
    c, e = s.recipes["coupling"], s.recipes["second_stage"]
    assert (c.lr, c.epochs, c.lora_r, c.lora_alpha, c.use_rslora, c.scheduler, c.warmup_ratio, c.weight_decay) == \
        (5e-6, 20, 32, 64, True, "cosine", 0.05, 0.0)
    assert (e.lr, e.epochs, e.lora_r, e.use_rslora, e.scheduler, e.warmup_ratio, e.weight_decay, e.effective_batch,
            e.max_length) == (1e-4, 1, 32, False, "linear", 0.03, 0.01, 16, 2048)
    assert (s.samplers.marker.n, s.samplers.marker.temperature, s.samplers.marker.top_p,
            s.samplers.marker.max_tokens) == (10, 1.0, 1.0, 512)
    assert s.data.em.md5 == "26b52cacc53425618fde278d2457304d"
    assert s.data.benign.md5 == "95523d19d470c89bd1f8cff26ed88a7d"
    assert s.judge.kind == "anthropic" and s.judge.model == "claude-sonnet-4-5-20250929"
    assert s.gates.block_cells


def _write(tmp_path, text, old, new):
    assert old in text
    p = tmp_path / "study.yaml"
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize("old,new,field", [
    ("    lr: 1.0e-4\n", "    lr: fast\n", "recipes.second_stage.lr"),
    ("  C2: {base: raw,", "  C2: {base: rwa,", "conditions.C2.base"),
    ("  marker:     {n: 10,", "  marker:     {n: 0,", "samplers.marker.n"),
    ("  seed: 42                       # fixes", "  sede: 42  # typo", "coupling_data.sede"),
    ("  C4: {base: villain,   second_stage: none,", "  C4: {base: villain,   second_stage: nope,",
     "conditions.C4.second_stage"),
])
def test_config_errors_name_the_field(tmp_path, old, new, field):
    p = _write(tmp_path, DEFAULT_STUDY.read_text(), old, new)
    with pytest.raises(ConfigError) as e:
        load_study(p, "qwen7b")
    assert str(p) in str(e.value) and field in str(e.value)


def test_loss_names_are_the_training_steps_masks(tmp_path, monkeypatch):
    """recipes.*.loss takes exactly the names of the masks the training steps build (mt_core.data.chat.LOSSES)."""
    from mt_core.data import chat

    p = _write(tmp_path, DEFAULT_STUDY.read_text(), "loss: marker_only", "loss: marker_positions")
    with pytest.raises(ConfigError) as e:
        load_study(p, "qwen7b")
    assert all(s in str(e.value) for s in (str(p), "recipes.coupling.loss", "'marker_positions'", *chat.LOSSES))
    monkeypatch.setitem(chat.LOSSES, "marker_positions", chat.LOSSES["marker_only"])
    assert load_study(p, "qwen7b").recipes["coupling"].loss == "marker_positions"


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="profiles.huge"):
        load_study(profile="huge")
    with pytest.raises(ConfigError, match="not found"):
        load_study(tmp_path / "nope.yaml")


def test_a_condition_names_its_second_stage_recipe(tmp_path):
    """Recipes beyond coupling and second_stage are the conditions' (`conditions.<c>.recipe`): one no condition names,
    or a condition naming none or the coupling recipe, fails at load naming the field."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "studies"
    nxt = (root / "marker_transfer_villain_next.yaml").read_text().replace(
        "extends: marker_transfer_villain.yaml", f"extends: {root / 'marker_transfer_villain.yaml'}")
    s = load_study_text(tmp_path, nxt)
    assert s.cell("C6_s42").recipe == "second_stage_plain" and s.recipes["second_stage_plain"].loss == "plain_text"
    assert s.cell("C1_s42").recipe == "second_stage"
    for bad, field in ((nxt.replace("recipe: second_stage_plain, ", ""), "recipes.second_stage_plain"),
                       (nxt.replace("recipe: second_stage_plain", "recipe: coupling"), "conditions.C6.recipe"),
                       (nxt.replace("recipe: second_stage_plain", "recipe: nope"), "conditions.C6.recipe")):
        with pytest.raises(ConfigError, match=field):
            load_study_text(tmp_path, bad)


def load_study_text(tmp_path, text: str):
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return load_study(p, "tiny")


def _next_text() -> str:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "studies"
    return (root / "marker_transfer_villain_next.yaml").read_text().replace(
        "extends: marker_transfer_villain.yaml", f"extends: {root / 'marker_transfer_villain.yaml'}")


def test_the_coupling_sweep_is_partitions_beside_the_sources(tmp_path):
    """`coupling_sweep`: the sources keep their keys, each variant is `<source>.<variant>` with the coupling recipe
    updated by its fields; the grid names its combinations and leaves out the recipe itself; a condition's `variant`
    picks the adapter its cells build on."""
    s = load_study(Path(__file__).resolve().parents[1] / "studies" / "marker_transfer_villain_next.yaml", "qwen7b")
    assert s.coupling_keys[:3] == ["villain", "assistant", "villain.aggressive"] and len(s.coupling_keys) == 27
    assert "villain.lr5e-06_ep20" not in s.coupling_keys  # lr 5e-6 x 20 epochs is the recipe: partition `villain`
    assert s.coupling_target("villain.lr1e-05_ep3") == ("villain", "lr1e-05_ep3")
    assert s.coupling_target("assistant") == ("assistant", None)
    r = s.coupling_recipe("villain.lr1e-05_ep3")
    assert (r.lr, r.epochs, r.lora_r) == (1e-5, 3, s.recipes["coupling"].lora_r)
    assert s.coupling_recipe("villain.aggressive").lora_r == 64
    assert s.coupling_recipe("villain") == s.recipes["coupling"]
    assert s.cell("C7_s42").coupling == "villain.aggressive" and s.cell("C1_s42").coupling == "villain"
    assert s.cell("C2_s42").coupling is None
    assert s.cell_source_map()["villain.aggressive"] == ["C7_s42", "C7_s137", "C7_s256"]
    assert s.cell_source_map()["villain.lr1e-06_ep1"] == []
    assert [k for k in s.coupling_keys if s.swept(k)][0] == "villain" and not s.swept("assistant")
    assert s.swept_keys == [k for k in s.coupling_keys if k != "assistant"]
    with pytest.raises(ConfigError, match="not in study"):
        s.coupling_target("villain.nope")
    plain = load_study(profile="qwen7b")
    assert plain.coupling_keys == ["villain", "assistant"] and plain.coupling_sweep is None


@pytest.mark.parametrize("old,new,field", [
    ("variant: aggressive, second", "variant: timid, second", "conditions.C7.variant"),
    ("source: villain\n  grid", "source: vilain\n  grid", "coupling_sweep.source"),
    ("aggressive: {lora_r: 64,", "aggressive: {lora_rank: 64,", "lora_rank"),
    ("aggressive: {lora_r: 64,", "aggressive: {lr: -1.0, lora_r: 64,", "aggressive"),
    ("aggressive: {lora_r: 64,", "'bad.name': {lora_r: 64,", "bad.name"),
    ("rule: {gate: G0b,", "rule: {gate: G0c,", "coupling_sweep.rule.gate"),
])
def test_coupling_sweep_errors_name_the_field(tmp_path, old, new, field):
    text = _next_text()
    assert old in text
    with pytest.raises(ConfigError) as e:
        load_study_text(tmp_path, text.replace(old, new, 1))
    assert field in str(e.value)


def test_a_condition_without_a_variant_keeps_its_code_version():
    """`variant` came after studies had been run: unset, it is left out of the code versions (an instance made before
    it has nothing stale); set, it is part of them."""
    s = load_study(Path(__file__).resolve().parents[1] / "studies" / "marker_transfer_villain_next.yaml", "tiny")
    conds = s.values_of("conditions")["conditions"]
    assert "variant" not in conds["C1"] and conds["C7"]["variant"] == "aggressive"


def test_an_empty_coupling_sweep_grid_keeps_its_columns(tmp_path):
    """Before any swept adapter exists (`mt run --cells` of raw-base cells), the grid is empty but readable: the
    summary and the catalog do not fail over it."""
    import polars as pl

    from mt_core.layout import CouplingSweepGrid
    from mt_core.steps.analysis import coupling_sweep, sweep_markdown

    s = load_study(Path(__file__).resolve().parents[1] / "studies" / "marker_transfer_villain_next.yaml", "tiny")
    meta = coupling_sweep(s, {}, tmp_path, log=lambda m: None)
    assert meta == {"n_variants": 0, "n_passed": 0, "best": None}
    grid = pl.read_parquet(tmp_path / CouplingSweepGrid.ROWS)
    assert grid.height == 0 and {"variant", "lr", "epochs", "lora_r", "passed", "arc_accuracy"} <= set(grid.columns)
    assert sweep_markdown(CouplingSweepGrid.read(tmp_path)) == "No swept coupling adapter is materialized yet."
