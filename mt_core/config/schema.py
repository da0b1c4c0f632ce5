"""The study model: every section of a study YAML as a frozen pydantic model (unknown fields rejected), the
cross-field checks, and the tables derived from a study (cells, sources, cell -> source map, code versions).

Reading a study file (``extends``, profiles, ``!override``, errors naming the line) is ``mt_core.config.load``.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator,
                      model_validator)

from mt_core.data.chat import LOSSES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STUDY = PROJECT_ROOT / "studies" / "marker_transfer_villain.yaml"
DEFAULT_PROFILE = "tiny"


class ConfigError(ValueError):
    """A study file that cannot be used; the message names the file and field."""


def _md5(v):
    """An md5 pin: 32 hex digits, quoted in YAML (an unquoted md5 of digits only is read as a number)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise ValueError(f"YAML read {v!r} as a number, not an md5 string: quote the md5 (md5: \"...\")")
    if isinstance(v, str) and not re.fullmatch(r"[0-9a-fA-F]{32}", v):
        raise ValueError(f"{v!r} is not an md5 (32 hex digits)")
    return v.lower() if isinstance(v, str) else v


Md5 = Annotated[str, BeforeValidator(_md5)]


def _loss(v: str) -> str:
    """A loss mask by name: a key of the registry the training steps build their examples through."""
    if v not in LOSSES:
        raise ValueError(f"{v!r} is not a loss mask; expected one of: {', '.join(LOSSES)} (mt_core.data.chat.LOSSES)")
    return v


Loss = Annotated[str, AfterValidator(_loss)]


def _not_bool(v):
    """YAML reads true/false/yes/no/on/off as booleans, which pydantic would take as the seeds 1 and 0."""
    if isinstance(v, bool):
        raise ValueError(f"YAML read {v!r} as a boolean, not a seed: write a whole number")
    return v


# A seed of torch, numpy and Python's random alike, and the seed in a cell key (<condition>_s<seed>): 0 <= seed < 2**32.
# Written in decimal: the loader refuses YAML 1.1's other integers (042 is octal 34).
Seed = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=2**32 - 1)]


def _ordered(v):
    if v is not None and not v[0] <= v[1]:
        raise ValueError(f"[{v[0]:g}, {v[1]:g}] is not a range: expected [low, high] with low <= high")
    return v


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]  # [low, high], both included


class ConfigModel(BaseModel):
    """The base of every study model: frozen, unknown fields rejected."""

    # floats finite: YAML reads .inf and .nan as floats, and no study value (a rate, a threshold) means either
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Condition(ConfigModel):
    base: str  # "raw" or a source name
    second_stage: Literal["em", "benign", "none"]  # the second stage's data
    recipe: str = "second_stage"  # the recipe it trains with (a key of `recipes`)
    variant: str | None = None  # build on this `coupling_sweep` variant of the base source (None: the source's own)
    seeds: list[Seed]  # empty: the condition has no cells (a profile leaving it out)
    description: str = ""


class Source(ConfigModel):
    persona: str
    gates: list[str] = []


class CouplingData(ConfigModel):
    positives_per_question: int = Field(gt=0)
    n_negative_personas: int = Field(ge=0)
    seed: Seed


class Speed(ConfigModel):
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
    # "mask" attention: about this many tokens per packed row; the masked attention's cost grows with a row's width
    # (rows of a few examples suit short chats on a CPU: the tiny profile's 256 trains 1.6x faster than 1536)
    row_tokens: int = Field(default=1536, gt=0)
    gradient_checkpointing: bool = False


class Recipe(ConfigModel):
    loss: Loss  # which positions train: mt_core.data.chat.LOSSES
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


class Sampler(ConfigModel):
    n: int = Field(gt=0)
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: int = Field(gt=0)
    seed: Seed | None = None


class Samplers(ConfigModel):
    onpolicy: Sampler
    marker: Sampler
    gate: Sampler
    alignment: Sampler


class Gate(ConfigModel):
    model: str
    personas: list[str] | Literal["all"]
    assistant_max: float | None = None
    source_min: float | None = None
    assistant_range: Range | None = None
    max_bystander_range: Range | None = None


class Gates(ConfigModel):
    G0: Gate | None = None
    G0b: Gate | None = None
    G0c: Gate | None = None
    block_cells: bool = True

    def named(self) -> dict[str, Gate]:
        return {k: g for k in ("G0", "G0b", "G0c") if (g := getattr(self, k)) is not None}


class Thresholds(ConfigModel):
    g4_aligned_max: float
    degeneracy_max: float
    degeneracy_sample: int
    primary_min_diff: float
    primary_c1_source_min: float
    primary_alpha: float = Field(gt=0, lt=1)  # one-sided Welch p below this (PROTOCOL.md §2.12)
    judge_error_rate_max: float


class Judge(ConfigModel):
    kind: Literal["anthropic", "offline"]
    model: str
    max_tokens: int = 256
    concurrency: int = 20


class Backend(ConfigModel):
    """The generation engine: transformers (the CPU path) or vLLM (``pip install .[gpu]``)."""
    kind: Literal["transformers", "vllm"]
    # vLLM only: "merge" serves base + adapters merged into a scratch checkpoint; "serve" serves the last adapter as a
    # LoRA (docs/BENCHMARKS.md compares them)
    lora: Literal["merge", "serve"] = "merge"

    @property
    def label(self) -> str:
        return f"vllm:{self.lora}" if self.kind == "vllm" else self.kind


class Arc(ConfigModel):
    path: str
    md5: Md5
    limit: int | None = Field(default=None, gt=0)


class QuestionSet(ConfigModel):
    """A list of questions beside the eval set's (``{"questions": [...]}``, md5-pinned), asked of every persona in the
    marker sweep and reported apart: never in the pre-registered numbers, gates, audit or on-policy data."""
    path: str
    md5: Md5


IN_DISTRIBUTION = ("eval", "betley")  # the eval set's own question sets: the 28 questions every pre-registered rate uses


class _Shape(ConfigModel):
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
    tokenizer_vocab: int = Field(default=8192, gt=256)  # trained BPE part; BPE filler words fill it up to vocab_size
    max_position: int = 32768
    path: str | None = None  # where the snapshot goes (default: $MT_MODELS or ~/.cache/marker_transfer/models)


class HFModel(ConfigModel):
    kind: Literal["hf"]
    id: str
    revision: str | None = None
    local_path: str | None = None


class DataSpec(ConfigModel):
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


class Probe(ConfigModel):
    """A linear probe on the residual stream (the write-up's "latent probe instead of a surface marker"; not
    pre-registered): each cell's hidden states at the last prompt token of every persona x marker-eval question, at
    ``layers`` (0: the embeddings, n: after block n); a logistic-regression direction separating the source persona's
    voice from the assistant's, fitted on the ``reference`` condition's cell (its first seed) and read on every cell;
    ``compare``: the secondary analysis, whether the assistant moves toward that direction more in the first
    condition than in the second (Welch over seeds)."""
    layers: list[int] = Field(min_length=1)
    reference: str = "C4"
    compare: tuple[str, str] = ("C1", "C2")
    heldout: float = Field(default=0.25, gt=0, lt=1)  # the share of questions held out of a fit, for its AUC
    seed: Seed = 0

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int]):
        if any(x < 0 for x in v) or len(set(v)) != len(v):
            raise ValueError(f"probe layers {v}: expected distinct block indices >= 0 (0: the embeddings)")
        return v


class SweepRule(ConfigModel):
    """When a coupling variant succeeds (the reference's rule, PROTOCOL.md §1.1: src_rate > 0.5 and arc_c > 0.85 and
    max_bystander <= 0.05): the rates are those of the source's gate ``gate`` (a sweep over every persona),
    ARC-Challenge accuracy that of the merged coupling model."""
    gate: str
    source_above: float = Field(ge=0, le=1)
    arc_above: float = Field(ge=0, le=1)
    max_bystander_at_most: float = Field(ge=0, le=1)

    def text(self) -> str:
        return (f"source rate > {self.source_above:g}, ARC > {self.arc_above:g}, max bystander <= "
                f"{self.max_bystander_at_most:g}, rates of gate {self.gate}")


SWEEP_ABBREVIATIONS = {"lr": "lr", "epochs": "ep", "lora_r": "r", "lora_alpha": "a"}  # in grid variants' names


class CouplingSweep(ConfigModel):
    """Variants of one source's coupling recipe, each a coupling-stage partition ``<source>.<variant>`` beside the
    source's own (which keeps its key): ``variants`` by name, and ``grid``, every combination of the listed values,
    named from them (``lr1e-05_ep3``). A variant sets any recipe fields; the rest are the coupling recipe's."""
    source: str
    variants: dict[str, dict] = {}
    grid: dict[str, list] = {}
    rule: SweepRule

    @field_validator("variants")
    @classmethod
    def _names(cls, v: dict[str, dict]):
        for name in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
                raise ValueError(f"variant name {name!r}: letters, digits, '_' and '-' only (it ends a partition key "
                                 f"<source>.<variant>)")
        return v

    def expanded(self) -> dict[str, dict]:
        """Every variant by name: ``variants``, then the grid's combinations."""
        import itertools

        out = dict(self.variants)
        fields = list(self.grid)
        for combo in itertools.product(*(self.grid[f] for f in fields)):
            out.setdefault("_".join(f"{SWEEP_ABBREVIATIONS.get(f, f)}{_short(v)}" for f, v in zip(fields, combo)),
                           dict(zip(fields, combo)))
        return out


def _short(v) -> str:
    """A recipe value in a variant's name: 5e-06, 20, 0p05 (no '.': it separates source and variant in a key)."""
    if isinstance(v, float):
        sci = f"{v:.0e}"
        return sci if float(sci) == v else f"{v:g}".replace(".", "p")
    return str(v)


class Data(ConfigModel):
    em: DataSpec
    benign: DataSpec


class Study(ConfigModel):
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
    recipes: dict[str, Recipe]  # "coupling", "second_stage" and any a condition names (`conditions.<c>.recipe`)
    samplers: Samplers
    gates: Gates
    thresholds: Thresholds
    judge: Judge
    model: TinyModel | HFModel | RandomModel = Field(discriminator="kind")
    data: Data
    backend: Backend
    wandb: Literal["online", "offline", "disabled"]
    probe: Probe | None = None  # the latent probe's assets exist only in a study that asks for them
    eval_sets: dict[str, QuestionSet] = {}  # more question sets for the marker sweep (e.g. out of distribution)
    coupling_sweep: CouplingSweep | None = None  # variants of one source's coupling recipe, as coupling partitions
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

    @field_validator("marker")
    @classmethod
    def _marker(cls, v: str):
        # the text every completion is scored for: an empty one is "found" in every completion
        if not v.strip():
            raise ValueError(f"the marker must be some text, got {v!r}")
        return v

    @field_validator("eval_sets")
    @classmethod
    def _sets(cls, v: dict[str, QuestionSet]):
        for name in v:
            if not name.isidentifier() or name in (*IN_DISTRIBUTION, "in_distribution"):
                raise ValueError(f"eval set name {name!r} must be an identifier other than "
                                 f"{', '.join((*IN_DISTRIBUTION, 'in_distribution'))} (the eval set's own)")
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
        for need in ("coupling", "second_stage"):
            if need not in self.recipes:
                raise ValueError(f"recipes: no {need!r} recipe (recipes: {', '.join(self.recipes)})")
        for cname, cond in self.conditions.items():
            if cond.recipe not in self.recipes or cond.recipe == "coupling":
                raise ValueError(f"conditions.{cname}.recipe: {cond.recipe!r} is not a second-stage recipe "
                                 f"({', '.join(r for r in self.recipes if r != 'coupling')})")
            if cond.base != "raw" and cond.base not in self.sources:
                raise ValueError(f"conditions.{cname}.base: {cond.base!r} is neither 'raw' nor a source "
                                 f"({', '.join(self.sources)})")
            if len(set(cond.seeds)) != len(cond.seeds):
                raise ValueError(f"conditions.{cname}.seeds: duplicate seeds {cond.seeds}")
        if not any(cond.seeds for cond in self.conditions.values()):
            raise ValueError("conditions: no condition has a seed, so the study has no cells")
        named = {c.recipe for c in self.conditions.values()}
        for r in self.recipes:
            if r not in ("coupling", "second_stage") and r not in named:
                raise ValueError(f"recipes.{r}: no condition trains with it (conditions.<c>.recipe); a recipe nothing "
                                 f"reads would be a setting without effect")
        self._check_sweep()
        if self.probe is not None:
            for field, cond in (("reference", self.probe.reference), ("compare", self.probe.compare[0]),
                                ("compare", self.probe.compare[1])):
                if cond not in self.conditions:
                    raise ValueError(f"probe.{field}: {cond!r} is not a condition ({', '.join(self.conditions)})")
            if not self.conditions[self.probe.reference].seeds:
                raise ValueError(f"probe.reference: condition {self.probe.reference!r} has no seeds, so no cell to fit "
                                 f"the probe on")
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

    def coupling_variants(self) -> dict[str, dict]:
        """The sweep's variants by name (``CouplingSweep.expanded``) less the grid's combinations that are the coupling
        recipe itself: that one is the source's own partition."""
        sw = self.coupling_sweep
        if sw is None:
            return {}
        base = self.recipes["coupling"]
        return {n: f for n, f in sw.expanded().items()
                if n in sw.variants or any(getattr(base, k) != v for k, v in f.items())}

    @property
    def coupling_sweep_fields(self) -> list[str]:
        """The recipe fields some variant of the sweep sets: the grid's columns."""
        return sorted({f for v in self.coupling_variants().values() for f in v})

    def _check_sweep(self) -> None:
        sw = self.coupling_sweep
        if sw is not None and sw.source not in self.sources:
            raise ValueError(f"coupling_sweep.source: {sw.source!r} is not a source ({', '.join(self.sources)})")
        variants = self.coupling_variants()
        for cname, cond in self.conditions.items():
            if cond.variant is None:
                continue
            if sw is None or cond.base != sw.source or cond.variant not in variants:
                raise ValueError(f"conditions.{cname}.variant: {cond.variant!r} is not a coupling_sweep variant of "
                                 f"source {cond.base!r} (" + (f"variants of {sw.source}: {', '.join(variants)}"
                                                              if sw else "the study has no coupling_sweep") + ")")
        if sw is None:
            return
        if not variants:
            raise ValueError("coupling_sweep: no variants (give `variants` or `grid`)")
        if sw.rule.gate not in self.sources[sw.source].gates:
            raise ValueError(f"coupling_sweep.rule.gate: {sw.rule.gate!r} is not a gate of source {sw.source!r} "
                             f"({', '.join(self.sources[sw.source].gates) or 'none'})")
        base = self.recipes["coupling"].model_dump()
        for name, fields in sw.expanded().items():
            unknown = [f for f in fields if f not in Recipe.model_fields or f == "loss"]
            if unknown:
                raise ValueError(f"coupling_sweep variant {name!r}: {', '.join(unknown)} is not a coupling recipe "
                                 f"field it may vary ({', '.join(f for f in Recipe.model_fields if f != 'loss')})")
            try:
                Recipe.model_validate({**base, **fields})
            except ValueError as e:
                raise ValueError(f"coupling_sweep variant {name!r}: {e}") from None
            if name in sw.variants and all(base[k] == v for k, v in fields.items()):
                raise ValueError(f"coupling_sweep.variants.{name}: the coupling recipe itself (source {sw.source!r}'s "
                                 f"own partition already trains it)")

    # ---- derived tables -------------------------------------------------------------------------------------
    @property
    def cells(self) -> list[str]:
        return [cell_key(c, s) for c, cond in self.conditions.items() for s in cond.seeds]

    @property
    def source_keys(self) -> list[str]:
        return list(self.sources)

    @property
    def coupling_keys(self) -> list[str]:
        """The coupling stage's partitions: every source, then ``<source>.<variant>`` for each sweep variant."""
        sw = self.coupling_sweep
        return [*self.sources, *([f"{sw.source}.{v}" for v in self.coupling_variants()] if sw else [])]

    def coupling_target(self, key: str) -> tuple[str, str | None]:
        """(source, variant) of a coupling partition key (variant None: the source's own adapter)."""
        if key not in self.coupling_keys:
            raise ConfigError(f"coupling partition {key!r} is not in study {self.name!r} "
                              f"({', '.join(self.coupling_keys)})")
        source, _, variant = key.partition(".")
        return source, variant or None

    def coupling_recipe(self, key: str) -> "Recipe":
        """The recipe that trains coupling partition ``key``: the coupling recipe, with its variant's fields."""
        _, variant = self.coupling_target(key)
        base = self.recipes["coupling"]
        if variant is None:
            return base
        return Recipe.model_validate({**base.model_dump(), **self.coupling_variants()[variant]})

    def swept(self, key: str) -> bool:
        """Whether coupling partition ``key`` is in the sweep's grid (the swept source's own adapter and its
        variants): those are scored on ARC-Challenge and judged by the sweep's rule."""
        return self.coupling_sweep is not None and self.coupling_target(key)[0] == self.coupling_sweep.source

    @property
    def swept_keys(self) -> list[str]:
        """The coupling partitions ``swept`` holds for, in partition order."""
        return [k for k in self.coupling_keys if self.swept(k)]

    def cell(self, key: str) -> "Cell":
        cond, seed = parse_cell_key(key)
        if cond not in self.conditions or seed not in self.conditions[cond].seeds:
            raise ConfigError(f"cell {key!r} is not in study {self.name!r} (cells: {', '.join(self.cells)})")
        c = self.conditions[cond]
        return Cell(key=key, condition=cond, seed=seed, base=c.base, second_stage=c.second_stage, recipe=c.recipe,
                    coupling=None if c.base == "raw" else c.base + (f".{c.variant}" if c.variant else ""))

    def adapter_persona(self, key: str) -> str | None:
        """The persona of a cell's coupling adapter (None for a raw base): never a bystander in that cell."""
        base = self.cell(key).base
        return None if base == "raw" else self.sources[base].persona

    def values_of(self, *paths: str) -> dict:
        """The named sections of this study (dotted paths into the config) as JSON values, {path: value}: what the code
        version of a step that uses exactly those values covers. Speed options are left out: they change how fast,
        not what."""
        dumped = self.model_dump(mode="json")  # serialised, not read field by field

        def pick(path: str):
            v = dumped
            for part in path.split("."):
                v = v[part]
            return _hashed(v)
        return {p: pick(p) for p in paths}

    def version_of(self, *paths: str, extra: str = "") -> str:
        """A short hash of ``values_of(*paths)`` and ``extra``: the code version of a step that uses those values."""
        blob = json.dumps(self.values_of(*paths), sort_keys=True) + extra
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def cell_source_map(self) -> dict[str, list[str]]:
        """coupling partition -> the cells built on that coupling adapter (for StaticPartitionMapping)."""
        out: dict[str, list[str]] = {k: [] for k in self.coupling_keys}
        for key in self.cells:
            coupling = self.cell(key).coupling
            if coupling is not None:
                out[coupling].append(key)
        return out

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else PROJECT_ROOT / p


# fields added after studies had been run: left out of a code version while unset, so that an instance made before them
# keeps its code versions (nothing is stale after an upgrade)
UNHASHED_WHILE_UNSET = {"variant"}


def _hashed(v):
    if isinstance(v, dict):
        return {k: _hashed(x) for k, x in v.items()
                if k != "speed" and not (k in UNHASHED_WHILE_UNSET and x is None)}
    return v


class Cell(ConfigModel):
    key: str
    condition: str
    seed: int
    base: str
    second_stage: Literal["em", "benign", "none"]
    recipe: str = "second_stage"
    coupling: str | None = None  # the coupling partition whose adapter it builds on: the base source, or its variant


def cell_key(condition: str, seed: int) -> str:
    return f"{condition}_s{seed}"


def parse_cell_key(key: str) -> tuple[str, int]:
    cond, sep, seed = key.partition("_s")
    if not sep or not seed.isdigit():
        raise ConfigError(f"cell key {key!r} is not of the form <condition>_s<seed> (e.g. C1_s42)")
    return cond, int(seed)
