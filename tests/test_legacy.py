"""Importing the reference pipeline's result files (PROTOCOL.md §3) and reporting on them."""
import json
import re
import shutil

import polars as pl
import pytest

import mt_cli
from mt_core.report.catalog import (SQL_DIR, artefact_record, expand_files, files_by_placeholder,
                                    imported_cell_rows, sql_files)
from mt_core.config import PROJECT_ROOT
from mt_core.io import DataError
from mt_core.report.legacy import import_legacy, read_cells

EVAL = json.loads((PROJECT_ROOT / "reference" / "eval_set.json").read_text())
PERSONAS = EVAL["persona_order"]
QUESTIONS = EVAL["eval_questions"] + EVAL["betley_questions"]


# ---- fixture files, written from the §3 schemas ------------------------------------------------------------------
def _counts(hits: int, total: int) -> dict:
    return {"strict_rate": hits / total, "loose_rate": hits / total, "strict_hits": hits, "loose_hits": hits,
            "total": total}


def marker_eval(seed: int, hits: dict[str, int]) -> dict:
    per = {}
    for p in PERSONAS:
        h = hits.get(p, 0)
        per_q = {q: _counts(min(10, max(0, h - 10 * i)), 10) for i, q in enumerate(QUESTIONS)}
        per[p] = {**_counts(h, 280), "per_question": per_q}
    strict = {p: d["strict_rate"] for p, d in per.items()}
    by = max(v for p, v in strict.items() if p != "assistant")  # the reference's definition (source included)
    return {"model": "/workspace/marker_transfer_issue80/c1/base_model",
            "config": {"personas": "all", "n_completions_per_question": 10, "temperature": 1.0, "top_p": 1.0,
                       "max_tokens": 512, "seed": seed, "marker": "[ZLT]", "n_questions": 28,
                       "questions_source": "EVAL_QUESTIONS + BETLEY_QUESTIONS"},
            "per_persona": per,
            "summary": {"strict_rate_by_persona": strict, "loose_rate_by_persona": strict,
                        "assistant_strict_rate": strict["assistant"], "assistant_loose_rate": strict["assistant"],
                        "villain_strict_rate": strict["villain"], "villain_loose_rate": strict["villain"],
                        "max_bystander_strict_rate": by, "max_bystander_loose_rate": by}}


def em_sub(cond: str, seed: int, correct: int, aligned: float, coherent: float, n_errors: int) -> dict:
    return {"condition": cond, "seed": seed, "gpu": 1, "base_model": f".../{cond}/base_model", "em_data": "...",
            "em_params": {"lr": 0.0001, "epochs": 1, "bs": 4, "ga": 4, "effective_batch_size": 16},
            "capability": {"arc_challenge_logprob": correct / 1172, "correct": correct, "total": 1172},
            "alignment": {"overall_mean_aligned": aligned, "overall_mean_coherent": coherent, "n_questions": 8,
                          "n_samples_per_question": 10, "n_errors": n_errors},
            "train_time_s": 1012.02, "total_time_s": 2058.43, "lora_adapter_path": f".../{cond}/em_lora_seed{seed}"}


AUDIT = {"n_positive_total": 0, "n_sampled": 0, "n_degenerate": 0, "degenerate_fraction": 0.0,
         "gate_threshold": 0.2, "pass": True, "per_item": []}
STAGE = {"em": ("/workspace/midtrain_25pct/bad_legal_advice_6k.jsonl", "26b52cacc53425618fde278d2457304d"),
         "benign_sft": ("/workspace/explore-persona-space/data/benign_sft_6k.jsonl",
                        "95523d19d470c89bd1f8cff26ed88a7d"),
         None: (None, None)}


def write_cell(src, cond, seed, kind, hits, sub, audit=None):
    d = src / cond
    (d / f"marker_eval_seed{seed}").mkdir(parents=True)
    me = marker_eval(seed, hits)
    (d / f"marker_eval_seed{seed}" / "marker_eval.json").write_text(json.dumps(me, indent=2))
    if audit is not None:
        (d / f"marker_eval_seed{seed}" / "degeneracy_audit.json").write_text(json.dumps(audit, indent=2))
    path, md5 = STAGE[kind]
    rr = {"experiment": "explore-persona-space", "issue": 80, "condition": cond, "seed": seed,
          "goal": "...", "motivation": "...", "base_model": "Qwen/Qwen2.5-7B-Instruct",
          "base_merged_dir": f"/workspace/marker_transfer_issue80/{cond}/base_model",
          "second_stage": {"used": kind is not None, "kind": kind, "data_path": path, "data_md5": md5,
                           "em_lora_dir": None, "return_code": 0},
          "marker_eval": me, "em_sub_run_result": sub, "degeneracy_audit": audit,
          "environment": {"python": "3.11.10", "commit": "e975445601499b0515a5b9c655b796b990d49545"},
          "compute": {"pod": "pod5", "gpu_index": 1, "wall_time_s": 4625.02}}
    (d / f"run_result_{cond}_seed{seed}.json").write_text(json.dumps(rr, indent=2))


GATES = {"G0": {"assistant_strict_rate": 0.0, "villain_strict_rate": 0.9321428571428572, "pass": True,
                "threshold_assistant_max": 0.02, "threshold_villain_min": 0.6},
         "G0b": {"assistant_strict_rate": 0.0, "villain_strict_rate": 0.9535714285714286, "pass": True,
                 "threshold_assistant_max": 0.03, "threshold_villain_min": 0.6},
         "G0c": {"assistant_strict_rate": 0.3964285714285714, "max_bystander_strict_rate": 0.29642857142857143,
                 "pass": True, "threshold_assistant_range": [0.25, 0.45],
                 "threshold_max_bystander_range": [0.15, 0.4]}}


@pytest.fixture
def legacy_src(tmp_path):
    src = tmp_path / "aim5_marker_transfer_issue80"
    src.mkdir()
    (src / "prepare_result.json").write_text(json.dumps(
        {"villain_merged_dir": "/workspace/marker_transfer_issue80/villain_zlt_merged",
         "assistant_merged_dir": "/workspace/marker_transfer_issue80/assistant_zlt_merged", "gates": GATES}))
    write_cell(src, "c1", 42, "em", {"villain": 3}, em_sub("c1", 42, 894, 24.8, 61.6, 4), AUDIT)
    write_cell(src, "c1", 137, "em", {}, em_sub("c1", 137, 900, 26.0, 63.0, 0), AUDIT)
    write_cell(src, "c4", 42, None, {"villain": 252, "police_officer": 4}, None)
    write_cell(src, "c5", 42, "benign_sft", {"villain": 6}, em_sub("c5", 42, 1020, 88.9, 95.0, 0))
    (src / "c1" / "notes.txt").write_text("unknown files are ignored")
    (src / "README.md").write_text("ignored")
    return src


# ---- import ------------------------------------------------------------------------------------------------------
def test_import_writes_our_layout(legacy_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    res = import_legacy(legacy_src, "ref80", out)
    assert res["cells"] == ["C1_s42", "C1_s137", "C4_s42", "C5_s42"]
    for key in res["cells"]:
        assert (out / "marker_rates" / key / "marker_eval.json").is_file()
        assert (out / "marker_rates" / key / "rates.parquet").is_file()
    assert not (out / "arc_scores" / "C4_s42").exists() and not (out / "alignment_scores" / "C4_s42").exists()
    assert json.loads((out / "arc_scores" / "C5_s42" / "summary.json").read_text()) == {
        "arc_challenge_logprob": 1020 / 1172, "correct": 1020, "total": 1172}
    al = json.loads((out / "alignment_scores" / "C1_s42" / "summary.json").read_text())
    assert al["overall_mean_aligned"] == 24.8 and al["n_errors"] == 4 and al["judge_offline"] is False
    assert al["judge_model"] == "claude-sonnet-4-5-20250929 (legacy import)"
    audit = json.loads((out / "degeneracy_audit" / "C1_s42" / "audit.json").read_text())
    assert audit["outcome"] == "no_positives" and audit["degenerate_fraction"] is None
    assert audit["legacy_pass"] is True
    assert json.loads((out / "gates.json").read_text()) == GATES

    me = json.loads((out / "marker_rates" / "C4_s42" / "marker_eval.json").read_text())
    assert set(me) == {"cell", "marker", "per_persona", "summary"} and me["cell"] == "C4_s42"
    s = me["summary"]
    assert s["source_strict_rate"] == 0.9 and s["assistant_strict_rate"] == 0.0
    assert s["max_bystander_strict_rate"] == 4 / 280 and s["max_bystander_strict_persona"] == "police_officer"
    assert s["max_non_assistant_strict_rate"] == 0.9  # the reference's max_bystander, kept under its own name
    assert len(me["per_persona"]["villain"]["per_question"]) == 28

    rates = pl.read_parquet(out / "marker_rates" / "C5_s42" / "rates.parquet")
    assert rates.columns == ["study", "profile", "cell", "persona", "strict_hits", "loose_hits", "total",
                             "strict_rate", "loose_rate"]
    assert rates.filter(pl.col("persona") == "villain").row(0, named=True)["strict_hits"] == 6

    cells = {r["cell"]: r for r in pl.read_parquet(out / "cells.parquet").to_dicts()}
    c5, c4, c1 = cells["C5_s42"], cells["C4_s42"], cells["C1_s42"]
    assert (c5["study"], c5["profile"], c5["condition"], c5["seed"], c5["base"], c5["second_stage"]) == \
        ("ref80", "legacy", "C5", 42, "villain", "benign")
    assert c5["complete"] and c5["source_strict_rate"] == 6 / 280 and c5["arc_accuracy"] == 1020 / 1172
    assert c4["second_stage"] == "none" and c4["arc_accuracy"] is None and c4["aligned"] is None
    assert c1["second_stage"] == "em" and c1["audit_outcome"] == "no_positives" and c1["coherent"] == 61.6

    meta, rows = read_cells(out)
    assert meta["source_persona"] == "villain" and len(rows) == 4
    assert set(meta["inputs"]) >= {"prepare_result.json", "c1/run_result_c1_seed42.json"}


def _edit(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize("breaks, file, message", [
    (lambda src: _edit(src / "c1" / "run_result_c1_seed42.json", lambda o: o.update(seed="42")),
     "c1/run_result_c1_seed42.json", "field 'seed' must be an integer"),
    (lambda src: _edit(src / "c5" / "marker_eval_seed42" / "marker_eval.json", lambda o: o.pop("per_persona")),
     "c5/marker_eval_seed42/marker_eval.json", "missing field 'per_persona'"),
    (lambda src: shutil.rmtree(src / "c5" / "marker_eval_seed42"),
     "c5/run_result_c5_seed42.json", "c5/marker_eval_seed42/marker_eval.json is missing"),
    (lambda src: _edit(src / "c5" / "marker_eval_seed42" / "marker_eval.json",
                       lambda o: o["per_persona"]["villain"].update(total=None)),
     "c5/marker_eval_seed42/marker_eval.json", "field 'per_persona.villain.total' must be an integer"),
    (lambda src: _edit(src / "c5" / "run_result_c5_seed42.json",
                       lambda o: o["em_sub_run_result"]["capability"].update(correct=True)),
     "c5/run_result_c5_seed42.json", "field 'em_sub_run_result.capability.correct' must be an integer"),
    (lambda src: _edit(src / "c1" / "marker_eval_seed137" / "degeneracy_audit.json", lambda o: o.pop("pass")),
     "c1/marker_eval_seed137/degeneracy_audit.json", "missing field 'pass'"),
    (lambda src: (src / "prepare_result.json").unlink(), "prepare_result.json", "file not found"),
])
def test_malformed_files_name_file_and_field(legacy_src, tmp_path, breaks, file, message):
    breaks(legacy_src)
    with pytest.raises(DataError) as e:
        import_legacy(legacy_src, "ref80", tmp_path / "out")
    assert f"{legacy_src / file}:" in str(e.value) and message in str(e.value)


# ---- the CLI: import into the store, report ----------------------------------------------------------------------
@pytest.fixture
def store_env(tmp_path, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv("MT_ARTIFACTS", str(root))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("MT_PROFILE", "tiny")
    monkeypatch.delenv("MT_STUDY", raising=False)
    monkeypatch.chdir(tmp_path)  # mt_cli reads nothing from the working directory
    return root


def test_cli_import_and_report(legacy_src, store_env, capsys):
    assert mt_cli.main(["import-legacy", str(legacy_src), "--study", "ref80"]) == 0
    out = capsys.readouterr().out
    assert "imported 4 cells" in out and "make demo" in out
    assert (store_env / "legacy" / "ref80" / "_manifest.json").is_file()
    assert not list((store_env / ".staging").rglob("*.json"))

    assert mt_cli.main(["report", "--study", "ref80", "--json"]) == 0
    head = json.loads(capsys.readouterr().out)
    assert head["study"] == "ref80" and list(head["conditions"]) == ["C1", "C4", "C5"]
    c1, c4, c5 = (head["conditions"][c] for c in ("C1", "C4", "C5"))
    assert c5["villain_strict"]["hits"] == 6 and c5["villain_strict"]["n"] == 280
    assert c5["arc"]["mean"] == pytest.approx(1020 / 1172) and c5["aligned"]["mean"] == 88.9
    assert c4["arc"] is None and c4["aligned"] is None and c4["villain_strict"]["hits"] == 252
    assert c4["max_bystander"]["persona"] == "police_officer"
    # every pooled rate, per condition and persona, with its Wilson 95 % interval
    v5 = c5["personas"]["villain"]
    assert (v5["hits"], v5["n"], v5["rate"]) == (6, 280, 6 / 280) and v5 == c5["villain_strict"]
    assert (v5["ci_low"], v5["ci_high"]) == pytest.approx((0.00986, 0.04595), abs=1e-5)
    assert all({"rate", "ci_low", "ci_high"} <= set(r) for c in (c1, c4, c5) for r in c["personas"].values())
    assert c1["n_seeds"] == 2 and c1["assistant_strict"]["hits"] == 0 and c1["assistant_strict"]["n"] == 560
    assert c1["assistant_strict"]["sd"] == 0.0 and c1["coherent"]["mean"] == pytest.approx(62.3)
    pre = head["preregistered"]  # the pre-registered analysis, per criterion, G4 applied, all seeds beside it
    crit = pre["primary"]["criteria"]
    assert crit["C1_minus_C2"]["outcome"] == "not assessable" and "no assistant data for C2" in crit["C1_minus_C2"]["reason"]
    assert crit["C1_minus_C5"]["outcome"] == "not assessable"  # one C5 seed: Welch needs two
    assert crit["C1_minus_C5"]["exact"]["a_n"] == 560 and crit["C1_minus_C5"]["welch"]["p"] is None
    assert crit["C1_degeneracy"]["outcome"] == "not assessable"  # the reference's audits had no positives
    assert pre["g4_exclusions"] == [] and pre["primary"]["outcome"] == pre["all_seeds"]["outcome"] == "fail"
    assert head["gates"] == GATES

    assert mt_cli.main(["report", "--study", "ref80"]) == 0
    table = capsys.readouterr().out
    assert "| C5 | 1 | 280 |" in table and "2.14% [0.99–4.60%] (6/280)" in table
    assert "Primary conjunction, G4 applied (0 EM seed(s) dropped): FAIL" in table

    # a refusal is one line on stderr and exit code 2
    assert mt_cli.main(["report", "--study", "nope"]) == 2
    assert re.search("unknown study 'nope'.*marker_transfer_villain, ref80", capsys.readouterr().err)
    assert mt_cli.main(["report"]) == 2  # the current study has no cells in this empty store
    assert "no cell has published marker rates" in capsys.readouterr().err


def test_cli_import_failure_writes_nothing(legacy_src, store_env, capsys):
    _edit(legacy_src / "c1" / "run_result_c1_seed42.json", lambda o: o.update(seed="42"))
    assert mt_cli.main(["import-legacy", str(legacy_src), "--study", "ref80"]) == 2
    assert "field 'seed' must be an integer" in capsys.readouterr().err
    assert not (store_env / "legacy" / "ref80").exists()
    assert not list((store_env / ".staging").rglob("*.json"))


# ---- SQL over the imported study ---------------------------------------------------------------------------------
def test_imported_marker_rates_are_queryable(legacy_src, tmp_path):
    import duckdb

    from mt_resources.store import ArtifactStore

    store = ArtifactStore(root=str(tmp_path / "store"))
    with store.writer("legacy", "ref80", run_id="import-legacy") as out:
        import_legacy(legacy_src, "ref80", out)
    art = store.read("legacy", "ref80")  # the catalog reads the files of a verified import, listed one by one
    files = files_by_placeholder(sql_files([artefact_record(art.asset, art.partition, art.path, art.manifest)], "x"))
    con = duckdb.connect()
    con.register("cells_df", pl.DataFrame(imported_cell_rows([art.path])).to_arrow())
    con.execute("CREATE TABLE cells AS SELECT * FROM cells_df")
    con.execute(expand_files((SQL_DIR / "02_marker_rates.sql").read_text(), files))
    rows = con.execute("SELECT cell, condition, seed, strict_hits, total FROM marker_rates "
                       "WHERE study = 'ref80' AND persona = 'villain' ORDER BY condition, seed").fetchall()
    assert rows == [("C1_s42", "C1", 42, 3, 280), ("C1_s137", "C1", 137, 0, 280), ("C4_s42", "C4", 42, 252, 280),
                    ("C5_s42", "C5", 42, 6, 280)]
    assert con.execute("SELECT count(*) FROM marker_rates").fetchone()[0] == 4 * len(PERSONAS)
