"""Inputs: copies of the reference files, the base model, the two second-stage datasets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mt_core.config import Study
from mt_core.data import benign, synthetic
from mt_core.data.eval_set import EvalSet
from mt_core.evals.arc import load_arc
from mt_core.io import DataError, check_md5, md5_file, read_chat_jsonl
from mt_core.layout import ArcCopy, BaseModel, Dataset, EvalSetCopy
from mt_core.model import random_snapshot, snapshots, tiny
from mt_core.steps.common import Log
from mt_core.steps.registry import step


@step
def copy_reference(study: Study, which: str, out: Path, log: Log = print) -> dict:
    """An md5-checked, validated copy of the eval set (``which="eval_set"``) or the ARC-Challenge file (``"arc"``):
    the md5 is checked before the file is parsed, and a file that does not parse is never published."""
    rel, md5, field, name = {"eval_set": (study.eval_set, study.eval_set_md5, "eval_set_md5", EvalSetCopy.FILE),
                             "arc": (study.arc.path, study.arc.md5, "arc.md5", ArcCopy.FILE)}[which]
    src = study.path(rel)
    got = check_md5(src, md5, f"{field} of {study.file}")
    if which == "eval_set":
        EvalSet.load(study)  # every field, and every persona the study names
    else:
        load_arc(src)  # every row
    shutil.copyfile(src, out / name)
    log(f"{src.name}: md5 {got} ok")
    return {"source_md5": got, "source": rel}


@step
def build_base_model(study: Study, out: Path, log: Log = print) -> dict:
    """The base model: the tiny one built and pretrained here, a random one in a real shape written once to a local
    snapshot (both on the same synthetic text), or a pinned local HF snapshot. The latter two are referenced."""
    m = study.model
    if m.kind == "tiny":
        import torch

        from mt_core import runtime
        from mt_core.model import train

        es = EvalSet.load(study)
        convs = synthetic.pretraining_conversations(es.prompts, es.coupling_questions + es.questions, n=2000,
                                                    seed=m.seed)
        convs = synthetic.with_signatures(convs, es.prompts, study.assistant_persona, rate=m.sign_rate,
                                          avoid=study.marker, seed=m.seed)
        texts = _corpus(study)
        # content-addressed: the same spec, data, builder code and torch give the same snapshot, built once for
        # every study and run that asks (the comedian study reuses the villain study's)
        # the spec is read whether or not the snapshot is built: it names the snapshot as much as it builds it
        spec = dict(seed=m.seed, vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_layers=m.num_layers,
                    num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
                    pretrain_steps=m.pretrain_steps)
        key = snapshots.content_key(m.model_dump(exclude={"kind"}), texts, convs,
                                    snapshots.source_md5(tiny, train), torch.__version__)
        path, info, reused = snapshots.built_once(
            runtime.current().models / f"tiny-{key}", key,
            lambda d: tiny.build_tiny_model(d, texts=texts, conversations=convs, log=log, **spec), log)
        BaseModel.write_ref(out, {"id": f"tiny:{path.name}", "snapshot": path.name,
                                  "weights_md5": md5_file(path / "model.safetensors")})
        return {"kind": "tiny", "id": f"tiny:{path.name}", "snapshot": path.name, "reused": reused,
                **{k: v for k, v in info.items() if isinstance(v, (int, float, str))}}
    if m.kind == "random":
        es = EvalSet.load(study)
        texts = _corpus(study) + [p for p in es.prompts.values() if p] + es.coupling_questions + es.questions
        path, cfg = random_snapshot.write_random_snapshot(m, texts=texts, log=log)
        BaseModel.write_ref(out, {"id": f"random:{path.name}", "revision": None, "path": str(path),
                                  "config_md5": md5_file(path / "config.json")})
        return {"kind": "random", "snapshot": str(path), "vocab_size": cfg["vocab_size"],
                "hidden_size": cfg["hidden_size"], "num_layers": cfg["num_hidden_layers"]}
    path = resolve_hf_snapshot(m)
    BaseModel.write_ref(out, {"id": m.id, "revision": m.revision, "path": str(path),
                              "config_md5": md5_file(path / "config.json")})
    return {"kind": "hf", "id": m.id, "revision": m.revision or "unpinned", "snapshot": str(path)}


def _corpus(study: Study) -> list[str]:
    """Text the local tokenizers are trained on: ARC questions (of the pinned file: its md5 is checked before it is
    read) and synthetic advice."""
    arc = study.path(study.arc.path)
    check_md5(arc, study.arc.md5, f"arc.md5 of {study.file}")
    texts = [r["question"] + "\n" + "\n".join(f"({lab}) {c}" for lab, c in zip(r["choice_labels"], r["choices"]))
             for r in load_arc(arc)]
    return texts + synthetic.advice_texts(200, seed=99)


def resolve_hf_snapshot(m) -> Path:
    """A local snapshot of the HF model (never downloads). Clear error naming what is missing."""
    if m.local_path:
        p = Path(m.local_path)
    else:
        from huggingface_hub import constants, snapshot_download

        try:
            p = Path(snapshot_download(m.id, revision=m.revision, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - any failure means "not available offline"
            raise DataError(f"model {m.id}@{m.revision or 'main'}: no local snapshot in {constants.HF_HUB_CACHE} "
                            f"(HF_HOME; {type(e).__name__}); download it first or set model.local_path") from None
    if not (p / "config.json").is_file():
        raise DataError(f"{p}: not a model directory (config.json missing)")
    return p


@step
def build_dataset(study: Study, which: str, out: Path, log: Log = print) -> dict:
    """The EM or benign dataset: generated (tiny), built by recipe (UltraChat) or copied; rows checked, md5 reported."""
    spec = getattr(study.data, which)
    dest = out / Dataset.DATA
    if spec.kind == "synthetic":
        fn = synthetic.em_dataset_lines if which == "em" else synthetic.benign_dataset_lines
        synthetic.write_jsonl(fn(spec.rows, seed=spec.seed, answer_words=spec.answer_words), dest)
        source = f"synthetic:{which}:rows={spec.rows}:seed={spec.seed}" + \
            (f":answer_words={spec.answer_words}" if spec.answer_words else "")
    elif spec.kind == "ultrachat":
        synthetic.write_jsonl(benign.benign_lines(spec.path, n=spec.rows, seed=spec.seed or 42,
                                                  offset=spec.offset), dest)
        source = f"ultrachat:{spec.path}:shuffle_seed={spec.seed or 42}:offset={spec.offset}:rows={spec.rows}"
    else:
        src = study.path(spec.path)
        if not src.is_file():
            raise DataError(f"{src}: {which} dataset not found (data.{which}.path); expected {spec.rows} rows with "
                            f"md5 {spec.md5} (data.{which}.md5)")
        read_chat_jsonl(src, expect_rows=spec.rows)  # errors name the user's file, row and field
        shutil.copyfile(src, dest)
        source = str(src)
    rows = read_chat_jsonl(dest, expect_rows=spec.rows)
    n_marked = sum(study.marker.lower().strip("[]") in m["content"].lower() for r in rows for m in r)
    if n_marked:
        raise DataError(f"{dest}: {n_marked} messages contain the marker text; the second stage must not see it")
    got = md5_file(dest)
    log(f"{which} dataset: {len(rows)} rows, md5 {got} (expected {spec.md5 or 'none pinned'})")
    return {"rows": len(rows), "md5": got, "expected_md5": spec.md5, "md5_ok": spec.md5 in (None, got),
            "source": source, "multi_turn_rows": sum(1 for r in rows if sum(m["role"] == "assistant" for m in r) > 1)}
