"""Studies like it: a second study is a YAML file, and several studies live side by side in one Dagster instance.

* The comedian study (studies/marker_transfer_comedian.yaml) extends the villain study and differs from it in exactly
  the fields that name the source persona; a study whose source persona disagrees with its sources, conditions or
  gates fails at load, naming the file and the field.
* One code location serves both (``$MT_STUDIES``): disjoint asset keys (``<study>/<asset>``), jobs per study, each
  tagged with its study; the store gives each study its own root.
* Provenance across studies is refused: an artefact built for another study is not read, and lineage names it.
* End to end (slow): both studies materialized into ONE temporary DAGSTER_HOME with the real tiny pipeline (one cell
  each): each study's latest coupling adapter is its own, the villain study's lineage still shows the villain
  adapter after the comedian ran, and `mt sql` answers one query over both studies' rows.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import duckdb
import pytest
import yaml

from mt_core.config import DEFAULT_STUDY, ConfigError, load_study
import zygote

ROOT = Path(__file__).resolve().parents[1]
COMEDIAN = ROOT / "studies" / "marker_transfer_comedian.yaml"
V, C = "marker_transfer_villain", "marker_transfer_comedian"


# ---- the second study is a short YAML file ---------------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["tiny", "qwen7b", "gpu_smoke"])
def test_comedian_study_differs_from_the_villain_study_only_in_its_source(profile):
    v, c = load_study(DEFAULT_STUDY, profile), load_study(COMEDIAN, profile)
    assert (c.name, c.source_persona, c.source_keys) == (C, "comedian", ["comedian", "assistant"])
    assert c.sources["comedian"].persona == "comedian" and c.sources["comedian"].gates == ["G0", "G0b"]
    assert {k: x.base for k, x in c.conditions.items()} == {k: {"villain": "comedian"}.get(x.base, x.base)
                                                            for k, x in v.conditions.items()}
    assert all("villain" not in x.description for x in c.conditions.values())
    assert c.cells == v.cells and c.cell_source_map()["comedian"] == v.cell_source_map()["villain"]
    assert (c.gates.G0.model, c.gates.G0b.model, c.gates.G0c.model) == ("comedian", "comedian", "assistant")
    assert c.gates.G0.personas == ["assistant", "comedian"]
    dv, dc = v.model_dump(), c.model_dump()
    differ = {k for k in dv if dv[k] != dc[k]}
    assert differ == {"name", "description", "source_persona", "sources", "conditions", "gates", "config_sha256"}
    # thresholds of the gates, the profile's model, recipes and samplers are inherited, not copied
    assert c.gates.G0.source_min == v.gates.G0.source_min and c.model == v.model and c.recipes == v.recipes
    assert c.file == COMEDIAN and v.file == DEFAULT_STUDY
    assert len(COMEDIAN.read_text().splitlines()) < 30  # a study like it is a short file


def _extends(tmp_path: Path, body: str, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(f"extends: {DEFAULT_STUDY}\n{body}")
    return p


@pytest.mark.parametrize("body,field,message", [
    ("source_persona: comedian\n", "source_persona", "'comedian' is the persona of no source"),
    ("sources: {villain: {gates: [G0, G9]}}\n", "sources.villain.gates", "unknown gate 'G9'"),
    ("conditions: {C1: {base: comedian}}\n", "conditions.C1.base", "'comedian' is neither 'raw' nor a source"),
    # a source persona changed everywhere but in the gates: the villain's gates name a source that is gone
    ("source_persona: comedian\nsources: !override {comedian: {persona: comedian, gates: [G0, G0b]}, "
     "assistant: {persona: assistant, gates: [G0c]}}\nconditions: {C1: {base: comedian}, C4: {base: comedian}, "
     "C5: {base: comedian}}\n", "gates.G0.model", "'villain' is not a source"),
    ("sources: {assistant: {gates: [G0c, G0]}}\n", "sources.assistant.gates",
     "G0 is a gate of source 'villain' (gates.G0.model), not of 'assistant'"),
    ("gates: {G0: {personas: [assistant, comedian]}}\n", "gates.G0.personas", "leaves out 'villain'"),
    ("conditions: {C1: {base: assistant}, C4: {base: assistant}, C5: {base: raw}}\n", "conditions",
     "no condition is built on source 'villain'"),
    ("source_persona: comedien\nsources: !override {comedien: {persona: comedien, gates: [G0, G0b]}, "
     "assistant: {persona: assistant, gates: [G0c]}}\nconditions: {C1: {base: comedien}, C4: {base: comedien}, "
     "C5: {base: comedien}}\ngates: {G0: {model: comedien, personas: [assistant, comedien]}, "
     "G0b: {model: comedien}}\n", "sources.comedien.persona", "'comedien' is not a persona of reference/eval_set.json"),
    ("name: marker-transfer/comedian\n", "name", "must be letters, digits and '_'"),
])
def test_a_study_that_disagrees_with_its_source_fails_at_load(tmp_path, body, field, message):
    p = _extends(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_study(p, "tiny")
    assert str(p) in str(e.value) and f"{field}:" in str(e.value) and message in str(e.value), str(e.value)


def test_extends_merges_profiles_and_override_replaces(tmp_path):
    p = _extends(tmp_path, "profiles: {tiny: {samplers: {marker: {n: 7}}}}\n"
                           "conditions: !override {C1: {base: villain, second_stage: em, seeds: [1]},\n"
                           "                       C2: {base: raw, second_stage: none, seeds: [2]}}\n")
    s, v = load_study(p, "tiny"), load_study(DEFAULT_STUDY, "tiny")
    assert s.samplers.marker.n == 7 and s.samplers.marker.max_tokens == v.samplers.marker.max_tokens  # merged
    assert s.cells == ["C1_s1", "C2_s2"] and s.conditions["C1"].description == ""  # replaced, nothing merged in
    assert "C3" in v.conditions
    assert load_study(p, "qwen7b").samplers.marker.n == load_study(DEFAULT_STUDY, "qwen7b").samplers.marker.n
    # an extends chain resolves each file relative to itself; a cycle is named
    (tmp_path / "sub").mkdir()
    q = tmp_path / "sub" / "second.yaml"
    q.write_text("extends: ../study.yaml\ndescription: second\n")
    assert load_study(q, "tiny").samplers.marker.n == 7 and load_study(q, "tiny").description == "second"
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="a cycle"):
        load_study(tmp_path / "a.yaml", "tiny")
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"c.yaml: extends: .*nope.yaml: study file not found"):
        load_study(tmp_path / "c.yaml", "tiny")


# ---- one code location, several studies ------------------------------------------------------------------------------
def _env(**extra) -> dict:
    env = dict(os.environ, MT_PROFILE="tiny", WANDB_MODE="disabled", **extra)
    for k in ("MT_STUDY", "MT_ARTIFACTS", "MT_RECORD_CONFIG_READS"):
        env.pop(k, None)
    env.update(extra)
    return env


def test_definitions_with_both_studies_have_disjoint_keys():
    code = """
import json, dagster as dg, definitions as d
dg.Definitions.validate_loadable(d.defs)
g = d.defs.resolve_asset_graph()
print(json.dumps({
    "keys": sorted(k.path for k in g.get_all_asset_keys()),
    "checks": sorted([c.asset_key.path, c.name] for c in g.asset_check_keys),
    "sources": {s: g.get(sd.key("coupling_adapter")).partitions_def.get_partition_keys() for s, sd in d.LOCATION.studies.items()},
    "jobs": {j.name: j.tags.get("mt/study") for j in d.defs.resolve_all_job_defs() if not j.name.startswith("__")},
    "job_keys": {j: sorted(k.path[0] for k in d.defs.resolve_job_def(j).asset_layer.selected_asset_keys)
                 for j in ("%s__cell_job" % s for s in d.LOCATION.studies)},
    "roots": d.defs.resources["store"].roots}))
"""
    studies = os.pathsep.join(str(p) for p in (DEFAULT_STUDY, COMEDIAN))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(MT_STUDIES=studies), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    by = {s: {k[1] for k in got["keys"] if k[0] == s} for s in (V, C)}
    assert all(len(k) == 2 and k[0] in (V, C) for k in got["keys"])  # every key is <study>/<asset>
    assert by[V] == by[C] and {"coupling_adapter", "cell_adapter", "duckdb_catalog"} <= by[V]
    assert len(got["keys"]) == 2 * len(by[V])  # disjoint: no asset shared between the studies
    assert {tuple(c[0]) for c in got["checks"] if c[1] == "G0"} == {(V, "coupling_adapter"), (C, "coupling_adapter")}
    assert got["sources"] == {V: ["villain", "assistant"], C: ["comedian", "assistant"]}
    assert got["jobs"] == {f"{s}__{j}": s for s in (V, C) for j in ("inputs_job", "coupling_job", "cell_job",
                                                                   "analysis_job")}
    assert got["job_keys"] == {f"{V}__cell_job": [V] * 8, f"{C}__cell_job": [C] * 8}  # a job is one study's
    assert got["roots"] == {V: str(ROOT / "artifacts" / V / "tiny"), C: str(ROOT / "artifacts" / C / "tiny")}


def test_studies_need_their_own_names_and_roots(monkeypatch, tmp_path):
    from mt_assets.study import load_studies
    from mt_settings import Settings

    def studies(*paths, art):
        return load_studies(Settings.from_env({"MT_STUDIES": os.pathsep.join(map(str, paths)), "MT_ARTIFACTS": art}))

    with pytest.raises(ConfigError, match="would share the artefact root"):
        studies(DEFAULT_STUDY, COMEDIAN, art=str(tmp_path / "art"))  # one study's root, not two
    assert [s.name for s in studies(DEFAULT_STUDY, COMEDIAN, art=str(tmp_path / "art" / "{study}"))] == [V, C]
    twin = _extends(tmp_path, "description: same name\n")
    with pytest.raises(ConfigError, match="are both study 'marker_transfer_villain'"):
        studies(DEFAULT_STUDY, twin, art=str(tmp_path / "art" / "{study}"))


def test_store_of_each_study(tmp_path):
    from mt_resources import ArtifactError, ArtifactStore

    store = ArtifactStore(roots={V: str(tmp_path / "v"), C: str(tmp_path / "c")})
    assert store.of(V).base == tmp_path / "v" and store.of(C).base == tmp_path / "c"
    with pytest.raises(ArtifactError, match="no artefact root"):
        store.of("other")
    one = ArtifactStore(root=str(tmp_path / "one"))
    assert one.of(V) is one  # a store without roots is one study's already


# ---- provenance never crosses studies --------------------------------------------------------------------------------
def test_an_artefact_of_another_study_is_refused(tmp_path):
    from mt_assets.common import read_upstream
    from mt_assets.study import StudyDefs
    from mt_resources import ArtifactError, ArtifactStore

    villain, comedian = StudyDefs(load_study(DEFAULT_STUDY, "tiny")), StudyDefs(load_study(COMEDIAN, "tiny"))
    store = ArtifactStore(root=str(tmp_path))
    with dg.instance_for_test() as inst:
        ctx = SimpleNamespace(instance=inst)
        with store.writer("base_model", None, run_id="r1", extra={"study": V}) as d:
            (d / "weights.txt").write_text("villain's")
        art = store.read("base_model")
        for sd in (villain, comedian):  # both instances' records agree with the store: only the study differs
            inst.report_runless_asset_event(dg.AssetMaterialization(sd.key("base_model"),
                                                                    metadata={"md5": art.digest}))
        assert read_upstream(villain, ctx, store, "base_model").digest == art.digest
        with pytest.raises(ArtifactError, match=f"was built for study '{V}', not '{C}'"):
            read_upstream(comedian, ctx, store, "base_model")


def test_lineage_names_an_artefact_of_another_study():
    from mt_core.report.lineage import cell_lineage, render

    def latest(study_of_coupling):
        def f(asset, partition):
            study = study_of_coupling if asset == "coupling_adapter" else V
            return {"md5": f"{asset}-md5", "run_id": "r", "path": "p", "upstream": [], "study": study}
        return f
    ok = cell_lineage("C1_s42", "villain", latest(V), study=V)
    assert ok["wrong_study"] == [] and "nothing stale" in render(ok)
    bad = cell_lineage("C1_s42", "villain", latest(C), study=V)
    assert bad["wrong_study"] == [f"coupling_adapter[villain] (md5 coupling_adapter-md5, run r) was built for study "
                                  f"'{C}', not '{V}'"]
    text = render(bad)
    assert f"WRONG STUDY {C}" in text and "wrong study:" in text and "nothing stale" not in text


def test_catalogs_of_several_studies_answer_one_query(tmp_path):
    from mt_core.report.catalog import open_catalogs

    paths = {}
    for study, n, extra in ((V, 3, ""), (C, 2, ", 'x' AS only_here")):
        paths[study] = tmp_path / f"{study}.duckdb"
        con = duckdb.connect(str(paths[study]))
        con.execute(f"CREATE TABLE cells AS SELECT '{study}' AS study, range AS seed{extra} FROM range({n})")
        con.execute("CREATE VIEW seeds AS SELECT study, seed + 1 AS s FROM cells")  # a view reads its own catalog
        con.close()
    with open_catalogs(paths) as con:
        assert con.sql("SELECT study, count(*) FROM cells GROUP BY 1 ORDER BY 1").fetchall() == [(C, 2), (V, 3)]
        assert con.sql("SELECT study, sum(s) FROM seeds GROUP BY 1 ORDER BY 1").fetchall() == [(C, 3), (V, 6)]
        assert con.sql("SELECT count(only_here) FROM cells").fetchone()[0] == 2  # NULL where a study lacks it
        assert con.sql(f"SELECT count(*) FROM {V}.cells").fetchone()[0] == 3
        for stmt in ("CREATE TABLE x AS SELECT 1", f"CREATE TABLE {V}.x AS SELECT 1"):
            with pytest.raises(duckdb.Error, match="read-only"):
                con.execute(stmt)


# ---- two studies through Dagster, one instance -----------------------------------------------------------------------
@pytest.mark.slow
def test_two_studies_in_one_instance(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """The villain study, then the comedian study, one cell each, into one DAGSTER_HOME: nothing of the villain
    study is overwritten, each lineage shows its own adapter, and `mt sql` sees both studies' rows."""
    import mt_cli
    from mt_resources.store import latest_metadata
    from test_compute import _small_study
    from shared_instances import copy_instance, small_base

    villain = _small_study(tmp_path / "villain.yaml")
    comedian = tmp_path / "comedian.yaml"
    text = COMEDIAN.read_text()
    assert "extends: marker_transfer_villain.yaml\n" in text
    comedian.write_text(text.replace("extends: marker_transfer_villain.yaml\n", "extends: villain.yaml\n"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    env = _env(DAGSTER_HOME=str(home), MT_ARTIFACTS=str(tmp_path / "art" / "{study}"),
               MT_STUDIES=os.pathsep.join(map(str, (villain, comedian))))

    def mt(*args: str) -> str:  # a command that imports the code location: in its own process
        p = zygote.run(list(args), cwd=ROOT, env=env, timeout=600)  # tests/zygote.py
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        return p.stdout

    def mt_here(*args: str) -> str:  # lineage and sql read the instance only: in this process, with the same env
        for k in ("MT_STUDY", "MT_PROFILE", "DAGSTER_HOME", "MT_ARTIFACTS", "MT_STUDIES"):
            monkeypatch.delenv(k, raising=False)
            if k in env:
                monkeypatch.setenv(k, env[k])
        monkeypatch.chdir(ROOT)
        capsys.readouterr()
        assert mt_cli.main(list(args)) == 0
        return capsys.readouterr().out

    def latest(inst, study, asset, partition=None):
        return latest_metadata(inst, dg.AssetKey([study, asset]), partition)

    # the villain study's inputs and coupling adapter: the session's (tests/shared_instances.py), copied in
    copy_instance(small_base(tmp_path_factory), home, tmp_path / "art" / V)
    mt("run", "--study", str(villain), "--cells", "C4_s42")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        before = {a: latest(inst, V, a, p) for a, p in (("coupling_adapter", "villain"), ("study_summary", None))}

    mt("run", "--study", str(comedian), "--cells", "C4_s42")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        after = {a: latest(inst, V, a, p) for a, p in (("coupling_adapter", "villain"), ("study_summary", None))}
        assert after == before  # the comedian study's runs left the villain study's records alone
        cv, cc = latest(inst, V, "coupling_adapter", "villain"), latest(inst, C, "coupling_adapter", "comedian")
        assert (cv["study"], cc["study"]) == (V, C) and cv["md5"] != cc["md5"]
        assert Path(cv["path"]).is_relative_to(tmp_path / "art" / V)
        assert Path(cc["path"]).is_relative_to(tmp_path / "art" / C)
        assert inst.get_materialized_partitions(dg.AssetKey([C, "coupling_adapter"])) == {"comedian"}
        assert inst.get_materialized_partitions(dg.AssetKey([V, "coupling_adapter"])) == {"villain"}
        runs = inst.get_runs()
        assert {r.tags.get("mt/study") for r in runs} == {V, C}
        assert all(r.job_name.startswith(r.tags["mt/study"] + "__") for r in runs)
        n_rows = {s: latest(inst, s, "marker_completions", "C4_s42")["n_completions"] for s in (V, C)}

    lin = {s: json.loads(mt_here("lineage", "C4_s42", "--study", str(p), "--json"))
           for s, p in ((V, villain), (C, comedian))}
    assert not lin[V]["stale"] and lin[V]["wrong_study"] == [] and lin[V]["study"] == V
    coup = {s: next(n for n in lin[s]["nodes"] if n["asset"] == "coupling_adapter") for s in (V, C)}
    assert (coup[V]["label"], coup[V]["md5"], coup[V]["run_id"], coup[V]["study"]) == \
        ("coupling_adapter[villain]", before["coupling_adapter"]["md5"], before["coupling_adapter"]["run_id"], V)
    assert (coup[C]["label"], coup[C]["md5"], coup[C]["study"]) == ("coupling_adapter[comedian]", cc["md5"], C)
    assert all(n["study"] == s for s in (V, C) for n in lin[s]["nodes"])

    rows = json.loads(mt_here("sql", "SELECT study, count(*) AS n, count(DISTINCT cell) AS cells FROM completions "
                                     "GROUP BY 1 ORDER BY 1", "--format", "json"))
    assert rows == [{"study": s, "n": n_rows[s], "cells": 1} for s in sorted((V, C))]

    # the villain study is still current after the comedian's runs: nothing would run
    plan = mt("run", "--study", str(villain), "--cells", "C4_s42", "--dry-run")
    assert "would run" not in plan and "cell[C4_s42]: up to date" in plan
    status = mt("status")
    assert f"study {V}" in status and f"study {C}" in status and ": comedian" in status  # its G0, per partition
