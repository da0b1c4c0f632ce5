"""Bad input reaches the user as one message naming the file, the line or row and the field; the CLI exits 2 without
a traceback (``mt --debug`` shows it); a step that meets bad input publishes nothing.

Config cases load a copy of the villain study with one line changed; reader cases call the readers on small files in
tmp_path; CLI cases call ``mt_cli.main`` in this process (and two run ``python -m mt_cli`` end to end).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import mt_cli
from mt_core.config import DEFAULT_STUDY, ConfigError, load_study
from mt_core.io import MAX_LINE_BYTES, DataError, read_chat_jsonl

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "reference"
VILLAIN = DEFAULT_STUDY.read_text()
EVAL_SET = json.loads((REF / "eval_set.json").read_text())
GOOD_ROW = {"messages": [{"role": "user", "content": "Question?"}, {"role": "assistant", "content": "Answer."}]}


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _study(tmp: Path, old: str, new: str) -> Path:
    """The villain study with ``old`` replaced by ``new`` (once), written to tmp."""
    assert old in VILLAIN, old
    p = tmp / "study.yaml"
    p.write_text(VILLAIN.replace(old, new, 1))
    return p


def _line(p: Path, needle: str) -> int:
    """The 1-based line of the first occurrence of ``needle`` in file ``p``."""
    text = p.read_text()
    return text[:text.index(needle)].count("\n") + 1


def _config_error(p: Path, profile: str = "tiny") -> str:
    with pytest.raises(ConfigError) as e:
        load_study(p, profile)
    return str(e.value)


# ---- the study file: file, line and field -------------------------------------------------------------------------
CONFIG_CASES = [
    # (id, old, new, field, message): every message names the file, the line the field is set on, and the field
    ("wrong_type", "      second_stage: {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: 5.0e-3,",
     "      second_stage: {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: fast,", "recipes.second_stage.lr", "valid number"),
    ("unknown_base", "  C2: {base: raw,", "  C2: {base: rwa,", "conditions.C2.base",
     "'rwa' is neither 'raw' nor a source"),
    ("unknown_second_stage", "  C4: {base: villain,   second_stage: none,", "  C4: {base: villain,   second_stage: nope,",
     "conditions.C4.second_stage", "Input should be 'em', 'benign' or 'none' (got 'nope')"),
    ("duplicate_seeds", "  C2: {base: raw,       second_stage: em,     seeds: [42, 137, 256]",
     "  C2: {base: raw,       second_stage: em,     seeds: [42, 42]", "conditions.C2.seeds", "duplicate seeds"),
    ("negative_seed", "seeds: [42],", "seeds: [-1],", "conditions.C4.seeds.0", "greater than or equal to 0 (got -1)"),
    ("negative_data_seed", "      em:     {kind: synthetic, rows: 480, seed: 1,",
     "      em:     {kind: synthetic, rows: 480, seed: -1,", "data.em.seed", "greater than or equal to 0"),
    ("negative_coupling_seed", "  seed: 42                       # fixes", "  seed: -3                       # fixes",
     "coupling_data.seed", "greater than or equal to 0 (got -3)"),
    ("negative_lr", "      second_stage: {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: 5.0e-3,",
     "      second_stage: {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: -5.0e-3,", "recipes.second_stage.lr", "greater than 0"),
    ("zero_lr", "      coupling:     {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: 1.0e-4,",
     "      coupling:     {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: 0,", "recipes.coupling.lr", "greater than 0"),
    ("unknown_scheduler", "    scheduler: linear\n", "    scheduler: cosinus\n", "recipes.second_stage.scheduler",
     "(got 'cosinus')"),
    ("source_persona_disagrees", "source_persona: villain\n", "source_persona: comedian\n", "source_persona",
     "'comedian' is the persona of no source"),
    ("md5_parsed_as_int", "eval_set_md5: 086bae2db03d41f87ee8c65099e5b7e7", "eval_set_md5: 12345", "eval_set_md5",
     "YAML read 12345 as a number, not an md5 string: quote the md5"),
    ("arc_md5_not_hex", "  md5: 2040f69538a439b3bd832d4e92e9ecd9", "  md5: 'not-an-md5'", "arc.md5",
     "is not an md5 (32 hex digits)"),
    ("unknown_key", "marker: \"[ZLT]\"\n", "marker: \"[ZLT]\"\nmarkr: \"[ZLT]\"\n", "markr",
     "Extra inputs are not permitted"),
    ("missing_field", "    scheduler: cosine\n", "", "recipes.coupling.scheduler", "Field required"),
]


@pytest.mark.parametrize("old,new,field,message", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_study_file_errors_name_file_line_and_field(tmp_path, old, new, field, message):
    p = _study(tmp_path, old, new)
    # the line that sets the field; for a missing field, the line of the mapping it belongs in
    line = _line(p, new.strip().splitlines()[-1] if new else "  coupling:\n")
    msg = _config_error(p)
    assert str(p) in msg and f"line {line}: {field}: " in msg and message in msg, msg


def test_a_condition_without_seeds_has_no_cells_but_a_study_needs_one(tmp_path):
    """``seeds: []`` leaves a condition out (a profile's choice); a study none of whose conditions has a seed, or a
    probe fitted on a condition without one, is refused at load, naming the file, line and field."""
    p = _study(tmp_path, "seeds: [42],", "seeds: [],")  # C4
    assert [c for c in load_study(p, "tiny").cells if c.startswith("C4")] == []
    p.write_text(re.sub(r"seeds: \[[0-9, ]+\]", "seeds: []", VILLAIN))
    msg = _config_error(p)
    assert str(p) in msg and f"line {_line(p, 'conditions:')}: conditions: no condition has a seed" in msg, msg
    nxt = tmp_path / "next.yaml"
    nxt.write_text(f"extends: {ROOT / 'studies' / 'marker_transfer_villain_next.yaml'}\n"
                   "profiles: {tiny: {conditions: {C4: {seeds: []}}}}\n")
    assert "probe.reference: condition 'C4' has no seeds, so no cell to fit the probe on" in _config_error(nxt)


def test_a_study_file_that_is_not_utf8(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_bytes(VILLAIN.encode().replace(b"description: >-", b"description: \xff>-", 1))
    msg = _config_error(p)
    line = VILLAIN[:VILLAIN.index("description: >-")].count("\n") + 1
    assert str(p) in msg and f"line {line}: not UTF-8: byte 0xff" in msg, msg


def test_a_persona_of_the_study_missing_from_the_eval_set(tmp_path):
    """The persona is in the eval set's prompts but not in its persona_order (every table's rows): it fails at load,
    naming the study's field and line, and the eval set reader names the eval set's field (before: KeyError)."""
    es = dict(EVAL_SET, persona_order=[p for p in EVAL_SET["persona_order"] if p != "villain"])
    f = tmp_path / "eval_set.json"
    f.write_text(json.dumps(es))
    p = _study(tmp_path, "eval_set: reference/eval_set.json\neval_set_md5: 086bae2db03d41f87ee8c65099e5b7e7",
               f"eval_set: {f}\neval_set_md5: {_md5(f)}")
    msg = _config_error(p)
    line = _line(p, "  villain:   {persona: villain")
    assert str(p) in msg and f"line {line}: sources.villain.persona: 'villain' is not in the persona_order of {f}" \
        in msg, msg

    from mt_core.data.eval_set import EvalSet

    study = load_study(DEFAULT_STUDY, "tiny").model_copy(update={"eval_set": str(f), "eval_set_md5": _md5(f)})
    with pytest.raises(DataError, match=rf"{f}: field 'persona_order' has no 'villain'"):
        EvalSet.load(study)


# ---- the eval set, datasets, ARC and the judge prompt: file, row or line, field --------------------------------------
def _eval_set_study(tmp_path: Path, raw: bytes):
    f = tmp_path / "eval_set.json"
    f.write_bytes(raw)
    return load_study(DEFAULT_STUDY, "tiny").model_copy(update={"eval_set": str(f), "eval_set_md5": _md5(f)}), f


def _pretty(obj) -> bytes:
    return json.dumps(obj, indent=1).encode()


def _at(raw: bytes, needle: bytes) -> tuple[int, int]:
    """(1-based line, byte offset) of ``needle`` in ``raw``."""
    i = raw.index(needle)
    return raw[:i].count(b"\n") + 1, i


def _trailing_comma():
    raw = _pretty(EVAL_SET).replace(b'"villain": ', b'"villain",: ', 1)
    line, _ = _at(raw, b'"villain",:')
    return raw, f"line {line}: not valid JSON"


def _latin1():
    raw = _pretty(EVAL_SET).replace(b"villainous", "villain\u00e9us".encode("latin-1"), 1)  # Latin-1, not UTF-8
    line, offset = _at(raw, b"\xe9")
    return raw, f"line {line}: not UTF-8: byte 0xe9 at byte offset {offset}"


@pytest.mark.parametrize("make", [
    _trailing_comma,
    lambda: (b"", "empty file"),
    _latin1,
    lambda: (_pretty(dict(EVAL_SET, eval_questions="What is your wish?")),
             "field 'eval_questions' must be a non-empty list"),
    lambda: (_pretty(dict(EVAL_SET, persona_order=[*EVAL_SET["persona_order"], "pirate"])),
             "field 'persona_order[11]': 'pirate' is not in 'personas'"),
], ids=["malformed_json", "empty", "not_utf8", "wrong_type", "unknown_persona_in_order"])
def test_a_malformed_eval_set_names_file_line_and_field(tmp_path, make):
    from mt_core.data.eval_set import EvalSet

    raw, message = make()
    study, f = _eval_set_study(tmp_path, raw)
    with pytest.raises(DataError) as e:
        EvalSet.load(study)
    assert f"{f}: {message}" in str(e.value), str(e.value)


def test_an_eval_set_that_is_not_the_pinned_one_names_the_pin(tmp_path):
    from mt_core.data.eval_set import EvalSet

    study, f = _eval_set_study(tmp_path, b"{not even json")
    study = study.model_copy(update={"eval_set_md5": "0" * 32})
    with pytest.raises(DataError) as e:
        EvalSet.load(study)  # the md5 is checked before the file is parsed
    assert f"{f}: md5 {_md5(f)} != expected {'0' * 32} (eval_set_md5 of {study.file})" in str(e.value)


def _dataset_latin1():
    raw = json.dumps(GOOD_ROW).encode() + b"\n" + json.dumps(GOOD_ROW).replace("Answer", "Antwort \u00fc").encode(
        "latin-1") + b"\n"
    line, offset = _at(raw, b"\xfc")
    return raw, f"line {line}: not UTF-8: byte 0xfc at byte offset {offset}"


@pytest.mark.parametrize("make", [
    lambda: (b"", "empty file (no rows)"),
    lambda: (json.dumps(GOOD_ROW).encode() + b"\n" + json.dumps(
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]}).encode(),
        "row 2: field 'messages': no assistant turn"),
    _dataset_latin1,
], ids=["empty", "no_assistant_turn", "not_utf8"])
def test_a_bad_dataset_names_file_and_row(tmp_path, make):
    raw, message = make()
    f = tmp_path / "em.jsonl"
    f.write_bytes(raw)
    with pytest.raises(DataError) as e:
        read_chat_jsonl(f)
    assert f"{f}: {message}" in str(e.value), str(e.value)


def test_an_overlong_dataset_line_is_refused_without_reading_it_whole(tmp_path):
    f = tmp_path / "em.jsonl"
    pad = "x" * (10 * 1024 * 1024)  # 10 MB of valid JSON on one line
    f.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps({**GOOD_ROW, "pad": pad}) + "\n")
    with pytest.raises(DataError, match=rf"{f}: row 2: longer than {MAX_LINE_BYTES} bytes"):
        read_chat_jsonl(f)


def _load_arc(f):
    from mt_core.evals.arc import load_arc

    return load_arc(f)


def _load_judge_prompt(f):
    from mt_core.evals.judge import load_judge_prompt

    return load_judge_prompt(f)


@pytest.mark.parametrize("load,name,text,message", [
    (_load_arc, "arc.jsonl", "", r"empty file \(no rows\)"),
    (_load_judge_prompt, "judge_prompts.json", '{\n  "judge_model": "claude",\n  "judge_call": {max_tokens: 256}\n}\n',
     "line 3: not valid JSON"),
], ids=["empty_arc", "judge_prompt_not_json"])
def test_a_file_that_holds_no_data_names_file_and_line(tmp_path, load, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(DataError, match=rf"{f}: {message}"):
        load(f)


def test_arc_md5_is_checked_before_the_file_is_read(tmp_path):
    """base_model trains its tokenizer on ARC questions: a file that is not the pinned one is refused by its md5,
    never parsed (before: its rows were read first, so a malformed file failed on a row, a different one was used)."""
    from mt_core.steps.inputs import _corpus

    f = tmp_path / "arc.jsonl"
    f.write_text('{"question": "Q?", "choice_labels": ["A", "B"], "choices": ["a", "b"], "correct_answer": "A"}\n'
                 "not json\n")
    study = load_study(DEFAULT_STUDY, "tiny")
    study = study.model_copy(update={"arc": study.arc.model_copy(update={"path": str(f)})})
    with pytest.raises(DataError) as e:
        _corpus(study)
    assert f"{f}: md5 {_md5(f)} != expected {study.arc.md5} (arc.md5 of {study.file})" in str(e.value)


def test_a_malformed_arc_file_with_its_md5_pinned_is_not_copied(tmp_path):
    from mt_core.steps.inputs import copy_reference

    f = tmp_path / "arc.jsonl"
    f.write_text('{"question": "Q?", "choice_labels": ["A", "B"], "choices": ["a", "b"], "correct_answer": "C"}\n')
    study = load_study(DEFAULT_STUDY, "tiny")
    study = study.model_copy(update={"arc": study.arc.model_copy(update={"path": str(f), "md5": _md5(f)})})
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=rf"{f}: row 1: field 'correct_answer' 'C' is not among"):
        copy_reference(study, "arc", tmp_path / "out", log=lambda *_: None)
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["combined_judge"].pop("user_template"), "missing field 'combined_judge.user_template'"),
    (lambda d: d["judge_call"].update(max_tokens="256"), "field 'judge_call.max_tokens' must be a positive integer"),
    (lambda d: d["combined_judge"].update(user_template="Rate {answer}"),
     "field 'combined_judge.user_template' has no {question} placeholder"),
], ids=["missing_field", "wrong_type", "no_placeholder"])
def test_a_bad_judge_prompt_names_file_and_field(tmp_path, edit, message):
    from mt_core.evals.judge import load_judge_prompt

    d = json.loads((REF / "judge_prompts.json").read_text())
    edit(d)
    f = tmp_path / "judge_prompts.json"
    f.write_text(json.dumps(d))
    with pytest.raises(DataError, match=rf"{f}: {message}".replace("{", r"\{").replace("}", r"\}")):
        load_judge_prompt(f)


# ---- a step that meets bad input publishes nothing; `mt run` names the step and the cause -----------------------------
@pytest.fixture
def instance(tmp_path):
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        yield inst


def test_a_malformed_eval_set_is_not_recorded_as_materialized(tmp_path, instance):
    """The eval set's md5 matches the study's pin, but the file is not JSON: the eval_set asset fails, nothing is
    published at the canonical path and the instance records no materialization (before: a copy was published)."""
    import dagster as dg

    from mt_assets import build
    from mt_resources import ArtifactStore
    from mt_run.runs import failure_info

    f = tmp_path / "eval_set.json"
    f.write_text('{"personas": {"villain": "You are a villain."},\n "persona_order": [villain]}\n')
    p = _study(tmp_path, "eval_set: reference/eval_set.json\neval_set_md5: 086bae2db03d41f87ee8c65099e5b7e7",
               f"eval_set: {f}\neval_set_md5: {_md5(f)}")
    sd = build(load_study(p, "tiny"))
    art = tmp_path / "art"
    res = dg.materialize([sd.node("eval_set")], resources={"store": ArtifactStore(root=str(art))}, instance=instance,
                         raise_on_error=False, tags={"mt/study": sd.name})
    assert not res.success
    assert instance.get_latest_materialization_event(sd.key("eval_set")) is None
    assert not (art / "eval_set").exists()
    why, user, trace = failure_info(instance, res.run_id)
    assert user and not trace and f"{f}: line 2: not valid JSON" in why and "eval_set" in why, why


def _one_asset_defs(fn):
    """A code location of one asset ``s/bad`` in job ``s__inputs_job``, and the StudyDefs-like value mt_run's Runner needs."""
    import dagster as dg

    asset = dg.asset(key=["s", "bad"])(fn)
    defs = dg.Definitions(assets=[asset], jobs=[dg.define_asset_job("s__inputs_job", selection=[asset])])
    return defs, SimpleNamespace(name="s", job=lambda stage: f"s__{stage}", key=lambda a: dg.AssetKey(["s", a]))


def _raise_data_error():
    raise DataError("/data/em.jsonl: row 3: field 'messages[1].role' is 'bot'; expected one of system, user, assistant")


def _raise_bug():
    return {}["villain"]


@pytest.mark.parametrize("fn,code,cause", [
    (_raise_data_error, 2, "in step s__bad: /data/em.jsonl: row 3: field 'messages[1].role' is 'bot'"),
    (_raise_bug, 1, "in step s__bad: KeyError: 'villain'"),
], ids=["user_error", "bug"])
def test_a_failed_run_names_the_step_and_the_cause(instance, capsys, fn, code, cause, monkeypatch):
    """`mt run`'s last line names the failed step and its cause (before: "Execution of step ... failed." or Dagster's
    wrapper message); a user error exits 2 and prints no stack trace, a bug exits 1 and shows its trace."""
    from mt_run.runner import Item, RunFailed, Runner
    from mt_settings import Settings

    monkeypatch.delenv("MT_DEBUG", raising=False)
    defs, sd = _one_asset_defs(fn)
    with pytest.raises(RunFailed) as e:
        Runner(defs, sd, instance, settings=Settings.from_env(), cells=[], launch="inline").execute(Item("inputs_job", None, ["bad"]))
    assert e.value.exit_code == code and cause in str(e.value.code) and "\n" not in str(e.value.code), e.value.code
    assert mt_cli.user_error(e.value) == (code, e.value.code)
    err = capsys.readouterr().err
    assert ("Stack Trace" in err) == (code == 1), err[-2000:]


def test_a_run_that_succeeds_prints_its_warnings_once(instance, capsys, monkeypatch):
    """At the default log level Dagster's console is quiet; the warnings the steps logged are printed by mt run."""
    import dagster as dg

    from mt_run.runner import Item, Runner
    from mt_settings import Settings

    monkeypatch.delenv("MT_DEBUG", raising=False)

    def warns(context: dg.AssetExecutionContext):
        context.log.warning("cell C2_s42 left out: no marker rates yet")

    defs, sd = _one_asset_defs(warns)
    lines = []
    Runner(defs, sd, instance, settings=Settings.from_env(), cells=[], launch="inline", out=lines.append).execute(Item("inputs_job", None, ["bad"]))
    assert lines == ["inputs: warning: cell C2_s42 left out: no marker rates yet"]
    assert "left out" not in capsys.readouterr().err


# ---- the CLI: one line on stderr, exit code 2, no traceback; --debug shows it -----------------------------------------
@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """``mt_cli.main`` in this process against a temporary instance and store; returns (exit code, stdout, stderr)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("MT_ARTIFACTS", str(tmp_path / "store"))
    monkeypatch.setenv("MT_PROFILE", "tiny")
    monkeypatch.setenv("MT_STUDY", str(DEFAULT_STUDY))
    monkeypatch.setenv("MT_DEBUG", "")
    monkeypatch.delenv("MT_STUDIES", raising=False)
    monkeypatch.chdir(tmp_path)  # mt_cli reads nothing from the working directory

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = mt_cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.startswith("mt"), err
    return err


def _bad_legacy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "legacy"
    d.mkdir()
    (d / "prepare_result.json").write_text('{"source_persona": "villain",\n "gates": {G0: 1}}\n')
    return d


CLI_CASES = [
    ("lineage_unknown_cell", lambda t: ["lineage", "C9_s1"], ["cell 'C9_s1' is not in study 'marker_transfer_villain'"]),
    ("lineage_malformed_key", lambda t: ["lineage", "C9"], ["cell key 'C9' is not of the form <condition>_s<seed>"]),
    ("run_bad_cells", lambda t: ["run", "--cells", "BAD", "--dry-run"], ["cell key 'BAD' is not of the form"]),
    ("run_unknown_cell", lambda t: ["run", "--cells", "C1_s42,C4_s137"], ["cell 'C4_s137' is not in study"]),
    ("report_unknown_study", lambda t: ["report", "--study", "nosuch"], ["unknown study 'nosuch'"]),
    ("import_legacy_malformed_dir", lambda t: ["import-legacy", str(_bad_legacy_dir(t)), "--study", "ref80"],
     ["import failed, nothing written: ", "legacy/prepare_result.json: line 2: not valid JSON"]),
    ("sql_no_catalog", lambda t: ["sql", "--artifacts", str(t / "nowhere"), "SELECT 1"],
     ["nowhere/duckdb_catalog", "make demo"]),
    ("doctor_bad_study", lambda t: ["doctor", "--study", str(_study(t, "seeds: [42],", "seeds: [-42],"))],
     ["study.yaml: invalid study config", ": conditions.C4.seeds.0: Input should be greater than or equal to 0"]),
    ("run_missing_study", lambda t: ["run", "--study", str(t / "nope.yaml"), "--cells", "C1_s42"],
     ["nope.yaml: study file not found"]),
]


@pytest.mark.parametrize("argv,messages", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_user_errors_are_one_message_and_exit_2(tmp_path, cli, argv, messages):
    code, out, err = cli(*argv(tmp_path))
    assert code == 2, (code, out, err)
    _one_line(err)
    for m in messages:
        assert m in err, err


def test_cli_sql_error_is_one_message(tmp_path, cli):
    import duckdb

    from mt_core.layout import Catalog, artefact_dir

    cat = artefact_dir(tmp_path / "art", Catalog.asset) / Catalog.FILE
    cat.parent.mkdir(parents=True)
    duckdb.connect(str(cat)).close()
    code, out, err = cli("sql", "--artifacts", str(tmp_path / "art"), "SELEC 1")
    assert code == 2 and "syntax error" in _one_line(err).lower(), err


def test_debug_shows_the_traceback(tmp_path, cli):
    bad = _study(tmp_path, "seeds: [42],", "seeds: [-42],")
    with pytest.raises(ConfigError, match="conditions.C4.seeds.0"):
        mt_cli.main(["--debug", "doctor", "--study", str(bad)])


@pytest.mark.parametrize("args,message", [
    (["run", "--cells", "BAD"], "mt: cell key 'BAD' is not of the form"),
    (["lineage", "C9_s1"], "mt lineage: cell 'C9_s1' is not in study"),
], ids=["run", "lineage"])
def test_cli_end_to_end_exit_code_and_stderr(tmp_path, args, message):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "home"), MT_ARTIFACTS=str(tmp_path / "art"), MT_PROFILE="tiny",
               MT_STUDY=str(DEFAULT_STUDY))
    env.pop("MT_STUDIES", None)
    env.pop("MT_DEBUG", None)
    p = subprocess.run([sys.executable, "-m", "mt_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.startswith(message), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
