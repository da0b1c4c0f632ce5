"""`mt run` says which study fields changed when an asset's code version did ("samplers.alignment.temperature 1.0 ->
0.9"), not only the two code versions: each materialization records what its code version covers
(``code_version_inputs``), and the planner compares that with the study now (mt_run/plan.py ``changed_inputs``)."""
import os
import shutil
from pathlib import Path

import yaml
from test_compute import _small_study

from mt_run.plan import asset_status, changed_inputs

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = "reference/judge_prompts.json"


def test_the_reason_names_each_changed_field_and_file():
    before = {"values": {"samplers.alignment": {"n": 10, "temperature": 1.0, "max_tokens": 48}, "marker": "[ZLT]"},
              "files": {PROMPTS: "aaa"}}
    temp = {"values": {"samplers.alignment": {"n": 10, "temperature": 0.9, "max_tokens": 48}, "marker": "[ZLT]"},
            "files": {PROMPTS: "aaa"}}
    assert changed_inputs(before, temp) == "samplers.alignment.temperature 1.0 -> 0.9"
    assert changed_inputs(before, {**temp, "files": {PROMPTS: "bbb"}}) == \
        f"samplers.alignment.temperature 1.0 -> 0.9, file {PROMPTS} changed"
    many = {"values": {"samplers.alignment": {"n": 1, "temperature": 0.0, "max_tokens": 8}, "marker": "[VLL]"},
            "files": {PROMPTS: "aaa"}}
    assert changed_inputs(before, many) == ('marker "[ZLT]" -> "[VLL]", samplers.alignment.max_tokens 48 -> 8, '
                                            "samplers.alignment.n 10 -> 1 and 1 more")
    # a field the study did not have then, a long value cut short
    grown = {"values": {**temp["values"], "conditions": {"C1": {"seeds": list(range(40))}}}, "files": {}}
    assert changed_inputs(temp, grown) == (f"conditions.C1.seeds (none) -> [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, …, "
                                           f"file {PROMPTS} changed")
    # nothing recorded (a materialization from before the record), or nothing that differs: the code versions
    assert changed_inputs(None, temp) is None and changed_inputs(temp, temp) is None
    old = {"code_version": "60996ffc6680"}
    assert asset_status("a", None, "a8efa312a6f5", lambda *_: old, temp) == "code version 60996ffc6680 -> a8efa312a6f5"
    assert asset_status("a", None, "a8efa312a6f5", lambda *_: {**old, "code_version_inputs": before}, temp) == \
        "samplers.alignment.temperature 1.0 -> 0.9"


def test_a_study_edit_between_two_plans_is_named(tmp_path):
    """em_dataset materialized through Dagster records what its code version covers; after the study's em seed
    changes, planning the inputs stage again names that field (and no other) as the reason to redo it."""
    import dagster as dg

    from mt_assets.location import CodeLocation
    from mt_resources import ArtifactStore, WandbResource
    from mt_resources.store import latest_metadata
    from mt_run.plan import plan_item
    from mt_run.runs import STUDY_TAG
    from mt_settings import Settings

    study = _small_study(tmp_path / "small.yaml")
    home, art = tmp_path / "home", tmp_path / "art"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", MT_STUDY=str(study))
    env.pop("MT_STUDIES", None)

    with dg.DagsterInstance.from_config(str(home)) as inst:
        def plan():  # the inputs stage as `mt run` plans it, from the study file as it is now
            loc = CodeLocation(Settings.from_env(env))
            sd = loc.study()
            return sd, plan_item(loc.defs, sd, "inputs_job", None, lambda a, p: latest_metadata(inst, sd.key(a), p))

        sd, _ = plan()
        res = dg.materialize([sd.node("em_dataset")], instance=inst, tags={STUDY_TAG: sd.name},
                             resources={"store": ArtifactStore(root=str(art)), "wandb": WandbResource(mode="disabled")})
        assert res.success
        recorded = latest_metadata(inst, sd.key("em_dataset"), None)["code_version_inputs"]
        assert recorded["values"]["data.em"]["seed"] == 1 and "marker" in recorded["values"]
        assert "em_dataset" not in plan()[1].reasons  # current

        raw = yaml.safe_load(study.read_text())
        raw["profiles"]["tiny"]["data"]["em"]["seed"] = 3
        raw["profiles"]["tiny"]["samplers"]["alignment"]["temperature"] = 0.5  # not what em_dataset uses
        study.write_text(yaml.safe_dump(raw))
        item = plan()[1]
        assert item.reasons["em_dataset"] == "data.em.seed 1 -> 3", item.reasons
        assert item.reasons["eval_set"] == "missing" and "em_dataset: data.em.seed 1 -> 3" in item.why()
