"""Study configuration: one YAML file per study, one profile merged on top.

A study file names the source persona, the conditions (which base, which second stage, which seeds), the recipes,
samplers, gates and thresholds. A profile (``tiny`` or ``qwen7b``) deep-merges its overrides onto the base. A study
like another is a short file: ``extends: <yaml relative to this file>`` deep-merges this file onto that one (profiles
too); a mapping tagged ``!override`` replaces the base's instead of merging into it (e.g. other ``sources``).
Everything is validated at load; an error names the file and the dotted field path.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STUDY = PROJECT_ROOT / "studies" / "marker_transfer_villain.yaml"
DEFAULT_PROFILE = "tiny"


class ConfigError(ValueError):
    """A study file that cannot be used; the message names the file and field."""


# Which study fields the code reads while it runs (tests/test_config_reads.py): a field of the YAML that nothing reads
# is a bug. Off unless a test turns it on; then every field read on a loaded study is recorded by its dotted path.
_READS: set[str] | None = None
_PATHS: dict[int, str] = {}  # id(model inside a loaded study) -> its dotted path in the study


def _md5(v):
    """An md5 pin: 32 hex digits, quoted in YAML (an unquoted md5 of digits only is read as a number)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise ValueError(f"YAML read {v!r} as a number, not an md5 string: quote the md5 (md5: \"...\")")
    if isinstance(v, str) and not re.fullmatch(r"[0-9a-fA-F]{32}", v):
        raise ValueError(f"{v!r} is not an md5 (32 hex digits)")
    return v.lower() if isinstance(v, str) else v


Md5 = Annotated[str, BeforeValidator(_md5)]
# A seed of torch, numpy and Python's random alike, and the seed in a cell key (<condition>_s<seed>): 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getattribute__(self, name: str):
        if _READS is not None and name[0] != "_" and name in type(self).model_fields:
            path = _PATHS.get(id(self))
            if path is not None:
                _READS.add(f"{path}.{name}" if path else name)
        return super().__getattribute__(name)


class Condition(_Strict):
    base: str  # "raw" or a source name
    second_stage: Literal["em", "benign", "none"]
    seeds: list[Seed] = Field(min_length=1)
    description: str = ""


class Source(_Strict):
    persona: str
    gates: list[str] = []


class CouplingData(_Strict):
    positives_per_question: int = Field(gt=0)
    n_negative_personas: int = Field(ge=0)
    seed: Seed


class Speed(_Strict):
    """How a training step is computed. None of these changes the math (data order, effective batch, loss
    normalisation, schedule); each is a named option, as TRL's SFTConfig names its speed features."""
    # a step's examples packed into rows without padding, the loss only at target positions; false: padded micro-batches
    # of per_device_batch with logits at every position (the HF Trainer's way)
    packing: bool = True
    # packed attention: "mask" (rows with a block-diagonal mask), "varlen" (one row, flash variable-length attention),
    # "varlen_reference" (the same, example by example: any device); "auto": varlen on CUDA where supported, else mask
    attention: Literal["auto", "mask", "varlen", "varlen_reference"] = "auto"
    # regional torch.compile of the decoder layers and the head loss; "auto": on CUDA only
    compile: Literal["auto", "on", "off"] = "auto"
    token_budget: int = Field(default=6144, gt=0)  # most tokens in one packed forward pass
    gradient_checkpointing: bool = False


class Recipe(_Strict):
    loss: Literal["marker_only", "last_assistant_turn"]
    lora_r: int = Field(gt=0)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    use_rslora: bool
    target_modules: list[str] = Field(min_length=1)
    lr: float = Field(gt=0)
    epochs: int = Field(gt=0)
    per_device_batch: int = Field(gt=0)
    grad_accum: int = Field(gt=0)
    max_length: int = Field(gt=8)
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    scheduler: Literal["linear", "cosine", "constant"]
    max_grad_norm: float = Field(gt=0)
    seed: Seed | None = None
    speed: Speed = Speed()

    @property
    def effective_batch(self) -> int:
        return self.per_device_batch * self.grad_accum


class Sampler(_Strict):
    n: int = Field(gt=0)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: int = Field(gt=0)
    seed: Seed | None = None


class Samplers(_Strict):
    onpolicy: Sampler
    marker: Sampler
    gate: Sampler
    alignment: Sampler


class Gate(_Strict):
    model: str
    personas: list[str] | Literal["all"]
    assistant_max: float | None = None
    source_min: float | None = None
    assistant_range: tuple[float, float] | None = None
    max_bystander_range: tuple[float, float] | None = None


class Gates(_Strict):
    G0: Gate | None = None
    G0b: Gate | None = None
    G0c: Gate | None = None
    block_cells: bool = True

    def named(self) -> dict[str, Gate]:
        return {k: g for k in ("G0", "G0b", "G0c") if (g := getattr(self, k)) is not None}


class Thresholds(_Strict):
    g4_aligned_max: float
    degeneracy_max: float
    degeneracy_sample: int
    primary_min_diff: float
    primary_c1_source_min: float
    primary_alpha: float = Field(gt=0, lt=1)  # one-sided Welch p below this (PROTOCOL.md §2.12)
    judge_error_rate_max: float


class Judge(_Strict):
    kind: Literal["anthropic", "offline"]
    model: str
    max_tokens: int = 256
    concurrency: int = 20


class Backend(_Strict):
    """The generation engine: transformers (the CPU path) or vLLM (``pip install .[gpu]``)."""
    kind: Literal["transformers", "vllm"]
    # vLLM only: "merge" serves base + adapters merged into a scratch checkpoint; "serve" serves the last adapter as a
    # LoRA (docs/BENCHMARKS.md compares them)
    lora: Literal["merge", "serve"] = "merge"

    @property
    def label(self) -> str:
        return f"vllm:{self.lora}" if self.kind == "vllm" else self.kind


class Arc(_Strict):
    path: str
    md5: Md5
    limit: int | None = Field(default=None, gt=0)


class _Shape(_Strict):
    """A Qwen2-architecture model's size (the numbers of its config.json)."""
    seed: Seed = 0
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int


class TinyModel(_Shape):
    kind: Literal["tiny"]
    pretrain_steps: int = 300
    sign_rate: float = Field(default=0.75, ge=0, le=1)  # answers signed with the persona's own tag (data/synthetic.py)


class RandomModel(_Shape):
    """Random bf16 weights in a real model's shape, written once as a local HF snapshot (the gpu_smoke profile): the
    real loading, training and vLLM paths at full size with nothing downloaded."""
    kind: Literal["random"]
    tokenizer_vocab: int = Field(default=8192, gt=256)  # trained BPE part; added tokens fill it up to vocab_size
    max_position: int = 32768
    path: str | None = None  # where the snapshot goes (default: $MT_MODELS or ~/.cache/marker_transfer/models)


class HFModel(_Strict):
    kind: Literal["hf"]
    id: str
    revision: str | None = None
    local_path: str | None = None


class DataSpec(_Strict):
    kind: Literal["synthetic", "file", "ultrachat"]  # ultrachat: built by recipe from a local copy of the split
    rows: int = Field(gt=0)
    seed: Seed | None = None
    path: str | None = None
    md5: Md5 | None = None
    offset: int = Field(default=0, ge=0)
    answer_words: int | None = Field(default=None, gt=0)  # synthetic: lengthen answers to about this many words

    @model_validator(mode="after")
    def _need_path(self):
        if self.kind in ("file", "ultrachat") and not (self.path and self.md5):
            raise ValueError(f"a {self.kind} dataset needs both 'path' and 'md5'")
        if self.kind == "synthetic" and self.seed is None:
            raise ValueError("a synthetic dataset needs a 'seed'")
        if self.answer_words is not None and self.kind != "synthetic":
            raise ValueError("answer_words applies to synthetic datasets only")
        return self


class Data(_Strict):
    em: DataSpec
    benign: DataSpec


class Study(_Strict):
    """A study after its profile was merged in."""

    name: str
    description: str = ""
    profile: str
    marker: str
    source_persona: str
    assistant_persona: str
    eval_set: str
    eval_set_md5: Md5
    coupling_questions: str
    arc: Arc
    judge_prompt: str
    sources: dict[str, Source]
    conditions: dict[str, Condition]
    coupling_data: CouplingData
    recipes: dict[Literal["coupling", "second_stage"], Recipe]
    samplers: Samplers
    gates: Gates
    thresholds: Thresholds
    judge: Judge
    model: TinyModel | HFModel | RandomModel = Field(discriminator="kind")
    data: Data
    backend: Backend
    wandb: Literal["online", "offline", "disabled"]
    config_sha256: str = ""
    _file: str = PrivateAttr(default="")  # the YAML it was loaded from (a Pipes worker reloads it)

    @property
    def file(self) -> Path:
        """The study YAML this study was loaded from (the file given to ``load_study``, not the one it extends)."""
        return Path(self._file) if self._file else DEFAULT_STUDY

    @field_validator("name")
    @classmethod
    def _name(cls, v: str):
        # the Dagster asset key prefix, job names and the DuckDB `study` column of the study's rows
        if not v or not (v[0].isalpha() and v.replace("_", "").isalnum() and v.isascii()):
            raise ValueError(f"study name {v!r} must be letters, digits and '_', starting with a letter")
        return v

    @field_validator("conditions")
    @classmethod
    def _keys(cls, v: dict[str, Condition]):
        for name in v:
            if not name.isidentifier() or "_" in name:
                raise ValueError(f"condition name {name!r} must be a short identifier without '_' (e.g. C1)")
        return v

    @model_validator(mode="after")
    def _cross_refs(self):
        by_persona = {src.persona: sname for sname, src in self.sources.items()}
        if self.source_persona not in by_persona:
            raise ValueError(f"source_persona: {self.source_persona!r} is the persona of no source (sources: "
                             + ", ".join(f"{k} -> {v.persona}" for k, v in self.sources.items()) + ")")
        for cname, cond in self.conditions.items():
            if cond.base != "raw" and cond.base not in self.sources:
                raise ValueError(f"conditions.{cname}.base: {cond.base!r} is neither 'raw' nor a source "
                                 f"({', '.join(self.sources)})")
            if len(set(cond.seeds)) != len(cond.seeds):
                raise ValueError(f"conditions.{cname}.seeds: duplicate seeds {cond.seeds}")
        if not any(c.base == by_persona[self.source_persona] for c in self.conditions.values()):
            raise ValueError(f"conditions: no condition is built on source {by_persona[self.source_persona]!r}, the "
                             f"source of source_persona {self.source_persona!r}")
        gates = self.gates.named()
        for gname, gate in gates.items():
            if gate.model not in self.sources:
                raise ValueError(f"gates.{gname}.model: {gate.model!r} is not a source ({', '.join(self.sources)})")
            own = self.sources[gate.model].persona
            if gate.personas != "all" and own not in gate.personas:
                raise ValueError(f"gates.{gname}.personas: {gate.personas} leaves out {own!r}, the persona of the "
                                 f"gate's model (source {gate.model!r})")
        for sname, src in self.sources.items():
            for g in src.gates:
                if g not in gates:
                    raise ValueError(f"sources.{sname}.gates: unknown gate {g!r} (gates: {', '.join(gates)})")
                if gates[g].model != sname:
                    raise ValueError(f"sources.{sname}.gates: {g} is a gate of source {gates[g].model!r} "
                                     f"(gates.{g}.model), not of {sname!r}")
        return self

    # ---- derived tables -------------------------------------------------------------------------------------
    @property
    def cells(self) -> list[str]:
        return [cell_key(c, s) for c, cond in self.conditions.items() for s in cond.seeds]

    @property
    def source_keys(self) -> list[str]:
        return list(self.sources)

    def cell(self, key: str) -> "Cell":
        cond, seed = parse_cell_key(key)
        if cond not in self.conditions or seed not in self.conditions[cond].seeds:
            raise ConfigError(f"cell {key!r} is not in study {self.name!r} (cells: {', '.join(self.cells)})")
        c = self.conditions[cond]
        return Cell(key=key, condition=cond, seed=seed, base=c.base, second_stage=c.second_stage)

    def adapter_persona(self, key: str) -> str | None:
        """The persona of a cell's coupling adapter (None for a raw base): never a bystander in that cell."""
        base = self.cell(key).base
        return None if base == "raw" else self.sources[base].persona

    def version_of(self, *paths: str, extra: str = "") -> str:
        """A short hash of the named sections of this study (dotted paths into the config) and ``extra``: the code
        version of a step that uses exactly those values. Speed options are left out: they change how fast, not what."""
        dumped = self.model_dump(mode="json")  # serialising records no field read (see _READS)

        def pick(path: str):
            v = dumped
            for part in path.split("."):
                v = v[part]
            return _drop_speed(v)
        blob = json.dumps({p: pick(p) for p in paths}, sort_keys=True) + extra
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cell_source_map(self) -> dict[str, list[str]]:
        """source -> the cells whose base is that source's coupling adapter (for StaticPartitionMapping)."""
        out: dict[str, list[str]] = {s: [] for s in self.sources}
        for key in self.cells:
            base = self.cell(key).base
            if base != "raw":
                out[base].append(key)
        return out

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else PROJECT_ROOT / p


def _drop_speed(v):
    if isinstance(v, dict):
        return {k: _drop_speed(x) for k, x in v.items() if k != "speed"}
    return v


class Cell(_Strict):
    key: str
    condition: str
    seed: int
    base: str
    second_stage: Literal["em", "benign", "none"]


def cell_key(condition: str, seed: int) -> str:
    return f"{condition}_s{seed}"


def parse_cell_key(key: str) -> tuple[str, int]:
    cond, sep, seed = key.partition("_s")
    if not sep or not seed.isdigit():
        raise ConfigError(f"cell key {key!r} is not of the form <condition>_s<seed> (e.g. C1_s42)")
    return cond, int(seed)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base``: mappings key by key, anything else (and an ``Override`` mapping) replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and not isinstance(v, Override) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_errors(path: Path, profile: str, err: ValidationError) -> str:
    lines = [f"{path}: invalid study config (profile {profile!r}):"]
    for e in err.errors():
        parts = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in ("tiny", "hf", "random", "function-after[_need_path(), DataSpec]")))
        loc = ".".join(map(str, parts))
        msg = e["msg"].removeprefix("Value error, ")
        if not loc and msg != e["msg"]:  # a cross-field check: its message names the field
            lines.append(f"  - {_with_line(path, profile, msg)}")
        else:
            lines.append(f"  - {_at(path, profile, parts, e['type'] == 'missing')}{loc or '<top>'}: {msg}"
                         + (f" (got {e['input']!r})" if _show_input(e) else ""))
    return "\n".join(lines)


def _with_line(path: Path, profile: str, msg: str) -> str:
    """A message ``<dotted field>: ...`` led by the line of the study file that sets the field."""
    m = re.match(r"([A-Za-z_][\w]*(?:\.[\w]+)*): ", msg)
    if not m:
        return msg
    loc = tuple(int(x) if x.isdigit() else x for x in m.group(1).split("."))
    return f"{_at(path, profile, loc)}{msg}"


def _at(path: Path, profile: str, loc: tuple, base_first: bool = False) -> str:
    w = where(path, profile, loc, base_first)
    return f"{w}: " if w else ""


def where(path: Path, profile: str, loc: tuple, base_first: bool = False) -> str:
    """``line N`` (``<file> line N`` in a file it extends): where the study file sets the field ``loc`` (a tuple of
    keys and list indexes), or its nearest enclosing field (for a missing field: the mapping it belongs in); the
    profile's value first, unless ``base_first``. "" if nowhere."""
    try:
        chain = _yaml_lines(Path(path))
    except (OSError, yaml.YAMLError, ConfigError, RecursionError):
        return ""
    for n in range(len(loc), 0, -1):
        for prefix in ((), ("profiles", profile)) if base_first else (("profiles", profile), ()):
            for file, lines in chain:
                if (prefix + loc[:n]) in lines:
                    line = lines[prefix + loc[:n]]
                    return f"line {line}" if file == Path(path).resolve() else f"{file} line {line}"
    return ""


def _yaml_lines(path: Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[tuple, int]]]:
    """[(file, {key path: 1-based line of its key})] for a study file and the files it extends, this one first."""
    path = path.resolve()
    root = yaml.compose(path.read_text(encoding="utf-8"), Loader=_Loader)
    lines: dict[tuple, int] = {}

    def walk(node, at: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    key = (*at, k.value)
                    lines.setdefault(key, k.start_mark.line + 1)
                    walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines.setdefault((*at, i), v.start_mark.line + 1)
                walk(v, (*at, i))
    walk(root, ())
    out = [(path, lines)]
    base = next((v.value for k, v in (root.value if isinstance(root, yaml.MappingNode) else [])
                 if isinstance(k, yaml.ScalarNode) and k.value == "extends" and isinstance(v, yaml.ScalarNode)), None)
    if base and (path.parent / base).resolve() not in (*_seen, path):
        out += _yaml_lines(path.parent / base, (*_seen, path))
    return out


def _show_input(e: dict) -> bool:
    """Whether the value a field got helps to read the error (a scalar the message does not already quote)."""
    v = e.get("input")
    return (e["type"] not in ("missing", "extra_forbidden", "value_error") and isinstance(v, (str, int, float))
            and not isinstance(v, bool) and len(repr(v)) <= 60)


class Override(dict):
    """A mapping tagged ``!override`` in a study file: it replaces the base's value instead of merging into it."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!override", lambda loader, node: Override(loader.construct_mapping(node, deep=True)))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader, one extra tag
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8: byte 0x{e.object[e.start]:02x} at byte offset {e.start}; "
                          f"save the file as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def read_study_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The study file's mapping with its ``extends`` chain resolved: this file deep-merged onto the file it extends
    (a path relative to this file), profiles included; ``!override`` mappings replace instead of merging."""
    path = Path(path)
    raw = _read_yaml(path)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: extends: expected the path of another study file, got {base!r}")
    target = (path.parent / base).resolve()
    if target in _seen or target == path.resolve():
        raise ConfigError(f"{path}: extends: {base} extends this file again (a cycle: "
                          + " -> ".join(str(p) for p in (*_seen, path.resolve(), target)) + ")")
    if not target.is_file():
        raise ConfigError(f"{path}: extends: {target}: study file not found")
    return deep_merge(read_study_file(target, (*_seen, path.resolve())), raw)


def _plain(v):
    """Override tags dropped once merged: plain dicts, so the merged config hashes and validates as any other."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def load_study(path: str | os.PathLike | None = None, profile: str | None = None) -> Study:
    """Load ``path`` (default: $MT_STUDY, else the first of $MT_STUDIES, else the villain study) with ``profile``
    (default: $MT_PROFILE or tiny)."""
    first = next((p for p in os.environ.get("MT_STUDIES", "").split(os.pathsep) if p), None)
    path = Path(path or os.environ.get("MT_STUDY") or first or DEFAULT_STUDY)
    profile = profile or os.environ.get("MT_PROFILE") or DEFAULT_PROFILE
    raw = read_study_file(path)
    profiles = raw.pop("profiles", None) or {}
    if profile not in profiles:
        raise ConfigError(f"{path}: profiles.{profile}: no such profile (have: {', '.join(profiles) or 'none'})")
    merged = _plain(deep_merge(raw, profiles[profile] or {}))
    merged["profile"] = profile
    canonical = json.dumps(merged, sort_keys=True, default=str)
    merged["config_sha256"] = hashlib.sha256(canonical.encode()).hexdigest()
    try:
        study = Study.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_errors(path, profile, e)) from None
    _check_personas(study, path)
    study._file = str(path.resolve())
    if _READS is not None:
        _register(study, "")
    return study


def named_personas(study: Study) -> dict[str, str]:
    """{study field: persona} for every persona the study names: its sources', the source and assistant personas, and
    the gates' personas."""
    named = {f"sources.{k}.persona": s.persona for k, s in study.sources.items()}
    named |= {"source_persona": study.source_persona, "assistant_persona": study.assistant_persona}
    named |= {f"gates.{g}.personas": p for g, gate in study.gates.named().items() if gate.personas != "all"
              for p in gate.personas}
    return named


def _check_personas(study: Study, path: Path) -> None:
    """Every persona the study names (its sources', the source and assistant personas, the gates') is a persona of its
    eval set, and in its persona_order."""
    eval_set = study.path(study.eval_set)
    if not eval_set.is_file():
        return  # the eval_set asset reports a missing file (and its md5) when it runs
    try:
        data = json.loads(eval_set.read_text())
        personas, order = list(data["personas"]), data.get("persona_order")
    except (ValueError, KeyError, TypeError, AttributeError):
        return  # ditto (EvalSet.load names the file and field): not ours to judge here
    for field, persona in named_personas(study).items():
        if persona not in personas:
            why = f"is not a persona of {study.eval_set} ({', '.join(map(str, personas))})"
        elif isinstance(order, list) and persona not in order:
            why = f"is not in the persona_order of {study.eval_set} ({', '.join(map(str, order))})"
        else:
            continue
        raise ConfigError(f"{path}: invalid study config (profile {study.profile!r}):\n  - "
                          f"{_at(path, study.profile, tuple(field.split('.')))}{field}: {persona!r} {why}")


def _register(obj, path: str) -> None:
    """Map every model inside a loaded study to its dotted path, so reads of its fields can be recorded."""
    if isinstance(obj, BaseModel):
        _PATHS[id(obj)] = path
        for name in type(obj).model_fields:
            _register(obj.__dict__[name], f"{path}.{name}" if path else name)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _register(v, f"{path}.{k}")


def record_reads() -> set[str]:
    """Start recording which fields of studies loaded from now on are read; returns the live set of dotted paths."""
    global _READS
    _READS = set()
    return _READS


if os.environ.get("MT_RECORD_CONFIG_READS"):  # a test's subprocess: record, and write the reads out at exit
    import atexit

    _out = Path(os.environ["MT_RECORD_CONFIG_READS"])
    atexit.register(lambda reads=record_reads(): _out.write_text(json.dumps(sorted(reads))))
