"""Hostile or misleading input (issue 25): refused at once, in one message naming the file, the line or row and the
field, within small bounds of time and memory; a step that meets it fails without a retry and records nothing.

Study cases load a copy of the villain study with one line changed (``load_study`` in this process, except the alias
bomb, loaded in a child process whose memory is capped); dataset cases call the reader on files in tmp_path; the retry
case materializes the ``em_dataset`` asset in this process.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mt_core.config import ConfigError, load_study
from mt_core.io import MAX_LINE_BYTES, DataError, read_chat_jsonl

from test_bad_input import GOOD_ROW, VILLAIN, _line  # the same study variants as the bad-input tests
from test_bad_input import _config_error as _refused, _study as _variant

ROOT = Path(__file__).resolve().parents[1]
TINY_EM = "      em:     {kind: synthetic, rows: 480, seed: 1, md5: c172091dc18fe759ec49c9a70396f95c}"


# ---- the study file: what YAML itself would do ---------------------------------------------------------------------
def _bomb(levels: int = 10, width: int = 9) -> str:
    """A "billion laughs": each level a list of ``width`` aliases of the level before (9**10 nodes expanded)."""
    lines = ["a0: &a0 [lol]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]"
                                 for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# The loader in a child process whose address space is capped 1 GiB above its size after imports (the loader before
# this grew to 2.4-4.1 GB and never answered): the time and the peak of Python allocations of the load alone.
BOUNDED_LOAD = """
import resource, sys, time, tracemalloc
from mt_core.config import ConfigError, load_study
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
tracemalloc.start()
t0 = time.perf_counter()
try:
    load_study(sys.argv[1], "tiny")
    print("LOADED")
except ConfigError as e:
    print("REFUSED", e)
print("SECONDS", time.perf_counter() - t0)
print("PEAK_MB", tracemalloc.get_traced_memory()[1] / 2**20)
"""


def test_an_alias_bomb_is_refused_in_2s_and_200mb(tmp_path):
    p = tmp_path / "study.yaml"
    p.write_text(VILLAIN + _bomb())
    out = subprocess.run([sys.executable, "-c", BOUNDED_LOAD, str(p)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert "REFUSED" in lines, (out.stdout + out.stderr)[-2000:]
    assert lines["REFUSED"] == f"{p}: line {_line(p, 'a5:')}: a5: its aliases expand to more than 100000 nodes " \
                               f"(a study file is a few hundred); write the values out"
    assert float(lines["SECONDS"]) < 2 and float(lines["PEAK_MB"]) < 200, lines


def test_a_duplicate_key_is_refused_naming_line_and_key(tmp_path):
    """YAML keeps the last of two equal keys without a word; the study file refuses them."""
    p = _variant(tmp_path, "    lr: 1.0e-4\n", "    lr: 1.0e-4\n    lr: 3.0e-4\n")
    msg = _refused(p)
    first = _line(p, "    lr: 1.0e-4")
    assert msg == (f"{p}: line {first + 1}: recipes.second_stage.lr: duplicate key 'lr' (also on line {first}); "
                   f"YAML would keep the last value only, so remove one")


def test_a_seed_written_with_a_leading_zero_is_refused(tmp_path):
    """YAML 1.1 reads 042 as octal 34: the study planned cell C4_s34."""
    old = "seeds: [42],           description: \"villain+[ZLT] coupling adapter, no second stage\""
    p = _variant(tmp_path, old, old.replace("[42]", "[042]"))
    msg = _refused(p)
    assert msg.startswith(f"{p}: line {_line(p, '[042]')}: conditions.C4.seeds.0: 042 is read by YAML as the integer "
                          f"34"), msg


def test_a_boolean_seed_is_refused(tmp_path):
    """YAML reads true as a boolean, which pydantic took as seed 1: the study planned cell C4_s1."""
    old = "seeds: [42],           description: \"villain+[ZLT] coupling adapter, no second stage\""
    p = _variant(tmp_path, old, old.replace("[42]", "[true]"))
    msg = _refused(p)
    assert f"line {_line(p, '[true]')}: conditions.C4.seeds.0: YAML read True as a boolean, not a seed" in msg, msg
    assert str(p) in msg


# ---- the study file: values checked where they are declared ---------------------------------------------------------
@pytest.mark.parametrize("marker", ['""', '"   "'], ids=["empty", "blank"])
def test_an_empty_marker_is_refused(tmp_path, marker):
    """An empty marker loaded and planned; the scorer raised after the training."""
    p = _variant(tmp_path, 'marker: "[ZLT]"', f"marker: {marker}")
    msg = _refused(p)
    assert str(p) in msg and f"line {_line(p, 'marker:')}: marker: the marker must be some text" in msg, msg


def test_an_infinite_learning_rate_is_refused(tmp_path):
    old = "second_stage: {lora_r: 8, lora_alpha: 16, lora_dropout: 0.0, lr: 5.0e-3,"
    p = _variant(tmp_path, old, old.replace("5.0e-3", ".inf"))
    msg = _refused(p)
    assert str(p) in msg and f"line {_line(p, 'lr: .inf')}: recipes.second_stage.lr: Input should be a finite " \
                             f"number" in msg, msg


@pytest.mark.parametrize("old,new,field", [
    ("assistant_range: [0.25, 0.90]", "assistant_range: [0.90, 0.25]", "gates.G0c.assistant_range"),
    ("max_bystander_range: [0.0, 0.40]", "max_bystander_range: [0.40, 0.0]", "gates.G0c.max_bystander_range"),
], ids=["assistant_range", "max_bystander_range"])
def test_an_inverted_range_is_refused(tmp_path, old, new, field):
    """G0c passes when a rate lies in [low, high]: an inverted range can never pass."""
    p = _variant(tmp_path, old, new)
    msg = _refused(p)
    lo, hi = new.rsplit("[", 1)[1].rstrip("]}").split(", ")
    assert str(p) in msg and f"line {_line(p, new)}: {field}: [{float(lo):g}, {float(hi):g}] is not a range" in msg, msg


# ---- dataset rows: refused before they are parsed -------------------------------------------------------------------
def _dataset(tmp: Path, second: str) -> Path:
    f = tmp / "em.jsonl"
    f.write_text(json.dumps(GOOD_ROW) + "\n" + second + "\n")
    return f


DEEP = '{"messages": [{"role": "user", "content": ' + "[" * 200_000 + "]" * 200_000 + "}]}"


def test_a_deeply_nested_row_is_refused_by_row_and_field(tmp_path):
    """200,000 levels: json.loads recursed until a RecursionError (a 70-line traceback, then retries)."""
    f = _dataset(tmp_path, DEEP)
    with pytest.raises(DataError) as e:
        read_chat_jsonl(f)
    col = DEEP.index("[[") + 62  # content's 62nd bracket opens level 65 (the row, messages, the message: 3 levels)
    assert str(e.value) == (f"{f}: row 2: field 'messages[0].content[0][0][0]...' nested deeper than 64 levels (at "
                            f"column {col}); not a JSONL row")


def test_a_huge_row_is_refused_by_row(tmp_path):
    """A 2 MB chat row: valid JSON, but no chat row is that long (the limit was 4 MB)."""
    row = {"messages": [{"role": "user", "content": "q" * (2 << 20)}, {"role": "assistant", "content": "a"}]}
    f = _dataset(tmp_path, json.dumps(row))
    assert MAX_LINE_BYTES <= 1 << 20
    with pytest.raises(DataError, match=rf"^{f}: row 2: longer than {MAX_LINE_BYTES} bytes"):
        read_chat_jsonl(f)


def test_a_user_error_in_a_step_fails_at_once_and_records_nothing(tmp_path):
    """The deep row through the em_dataset asset (which has a retry policy for reading files): one failure naming the
    file, row and field, taken as a user error (`mt run` exits 2 on it), no retry, nothing recorded or published."""
    import dagster as dg

    from mt_assets import build
    from mt_resources import ArtifactStore, WandbResource
    from mt_run.runs import STUDY_TAG, RunFailed, failure_info
    from mt_settings import Settings

    data = _dataset(tmp_path, DEEP)
    md5 = hashlib.md5(data.read_bytes()).hexdigest()
    p = _variant(tmp_path, TINY_EM, f"      em:     {{kind: file, path: '{data}', md5: '{md5}', rows: 2}}")
    sd = build(load_study(p, "tiny"), Settings.from_env(dict(os.environ, MT_RETRY_DELAY_S="0")))
    home, art = tmp_path / "home", tmp_path / "art"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        res = dg.materialize([sd.node("em_dataset")], resources={"store": ArtifactStore(root=str(art)),
                                                                "wandb": WandbResource(mode="disabled")},
                             instance=inst, raise_on_error=False, tags={STUDY_TAG: sd.name})
        assert not res.success
        events = [e.dagster_event.event_type_value for e in inst.all_logs(res.run_id) if e.dagster_event]
        assert "STEP_UP_FOR_RETRY" not in events and "STEP_RESTARTED" not in events, events
        why, user, trace = failure_info(inst, res.run_id)
        assert user and not trace and "\n" not in why, why
        assert f"{data}: row 2: field 'messages[0].content[0][0][0]...' nested deeper than 64 levels" in why, why
        assert RunFailed(why, user).exit_code == 2
        assert inst.get_latest_materialization_event(sd.key("em_dataset")) is None
    assert not any(art.rglob("data.jsonl"))  # neither published nor left in staging


def test_a_bad_judge_prompt_fails_the_judge_step_at_once(tmp_path):
    """The judge is made ready before its step reads the completions; a broken prompt file fails `alignment_scores` once,
    as a user error naming the file and field, never retried (it raised outside the publishing code and was retried
    twice) and nothing recorded."""
    import dagster as dg

    from mt_assets import build
    from mt_resources import ArtifactStore, JudgeResource, WandbResource
    from mt_run.runs import STUDY_TAG, failure_info
    from mt_settings import Settings

    prompt = tmp_path / "judge_prompts.json"
    d = json.loads((ROOT / "reference" / "judge_prompts.json").read_text())
    d["combined_judge"].pop("user_template")
    prompt.write_text(json.dumps(d))
    text = VILLAIN.replace("judge_prompt: reference/judge_prompts.json", f"judge_prompt: {prompt}", 1)
    head, _, tail = text.rpartition("    judge: {kind: offline}")  # the tiny profile's (the last one)
    p = tmp_path / "study.yaml"
    p.write_text(head + "    judge: {kind: anthropic}" + tail)
    sd = build(load_study(p, "tiny"), Settings.from_env(dict(os.environ, MT_RETRY_DELAY_S="0")))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        res = dg.materialize([sd.node("alignment_scores")], instance=inst,
                             resources={"store": ArtifactStore(root=str(tmp_path / "a")), "judge": JudgeResource(),
                                        "wandb": WandbResource(mode="disabled")},
                             raise_on_error=False, partition_key="C1_s42", tags={STUDY_TAG: sd.name})
        assert not res.success
        events = [e.dagster_event.event_type_value for e in inst.all_logs(res.run_id) if e.dagster_event]
        assert "STEP_UP_FOR_RETRY" not in events and "STEP_RESTARTED" not in events, events
        why, user, trace = failure_info(inst, res.run_id)
        assert user and not trace and f"{prompt}: missing field 'combined_judge.user_template'" in why, why
        assert inst.get_latest_materialization_event(sd.key("alignment_scores")) is None
