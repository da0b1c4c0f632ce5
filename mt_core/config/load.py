"""Reading a study file: one YAML file per study, one profile merged on top.

A study file names the source persona, the conditions (which base, which second stage, which seeds), the recipes,
samplers, gates and thresholds. A profile (``tiny`` or ``qwen7b``) deep-merges its overrides onto the base. A study
like another is a short file: ``extends: <yaml relative to this file>`` deep-merges this file onto that one (profiles
too); a mapping tagged ``!override`` replaces the base's instead of merging into it (e.g. other ``sources``).
Everything is validated at load (``mt_core.config.schema``); an error names the file, the line and the dotted field
path.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from mt_core.config.schema import DEFAULT_PROFILE, DEFAULT_STUDY, ConfigError, Study


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


# What one study file may make the YAML loader build. Aliases repeat a part of the tree, so a few lines can expand to
# billions of nodes (a "billion laughs") that the deep merge, the config hash and validation would then walk; a study
# file is a few hundred nodes, nested a few levels.
MAX_ALIASES = 100
MAX_NODES = 100_000  # the tree with every alias expanded
MAX_DEPTH = 64
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")


class _Refused(yaml.YAMLError):
    """Something the loader refuses in a study file, at ``mark`` (the node's place) and ``field`` (its dotted path)."""

    def __init__(self, mark, field: tuple, message: str):
        super().__init__(message)
        self.mark, self.field, self.message = mark, field, message


class _Loader(yaml.SafeLoader):
    """A SafeLoader that also refuses what would mislead or overwhelm the study's loading: aliases past a budget,
    nesting past ``MAX_DEPTH``, duplicate keys (YAML keeps the last silently) and integers not written in decimal
    (YAML 1.1 reads ``042`` as octal 34). Each refusal names the node's line and dotted field."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0
        self._path: list = []  # the dotted path of the node being composed (None: the root, or a key)
        self._fields: dict[int, tuple] = {}  # id(node) -> its dotted path, for the refusals made after composing

    def _here(self) -> tuple:
        return tuple(p for p in self._path if p is not None)

    def compose_node(self, parent, index):
        event = self.peek_event()
        self._path.append(index.value if isinstance(index, yaml.ScalarNode) else index)
        try:
            if isinstance(event, yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    raise _Refused(event.start_mark, self._here(), f"more than {MAX_ALIASES} aliases (*name) in one "
                                   "file; write the values out")
            if len(self._path) > MAX_DEPTH:
                raise _Refused(event.start_mark, self._here(), f"nested deeper than {MAX_DEPTH} levels")
            node = super().compose_node(parent, index)
            self._fields.setdefault(id(node), self._here())
            return node
        finally:
            self._path.pop()

    def compose_document(self):
        node = super().compose_document()
        self._check_expansion(node)
        return node

    def _check_expansion(self, root) -> None:
        """Refuse a tree that, its aliases expanded, has more than MAX_NODES nodes or contains itself. Each distinct
        node is sized once (an alias shares its anchor's node), so this costs the file's size, not the expansion's."""
        size: dict[int, int] = {}
        open_: set[int] = set()  # on the current path: meeting one again is a cycle (an alias inside its own anchor)
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if id(node) in size:
                continue
            kids = ([n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
            if not done:
                if id(node) in open_:
                    raise _Refused(node.start_mark, self._fields.get(id(node), ()), "an alias refers to the "
                                   "mapping or list that contains it")
                open_.add(id(node))
                stack.append((node, True))
                stack.extend((k, False) for k in kids)
                continue
            open_.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            if size[id(node)] > MAX_NODES:
                raise _Refused(node.start_mark, self._fields.get(id(node), ()), f"its aliases expand to more than "
                               f"{MAX_NODES} nodes (a study file is a few hundred); write the values out")

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: keys written next to it override the merged ones, by design
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeConstructor names it
                if seen is not key_node:
                    raise _Refused(key_node.start_mark, (*self._fields.get(id(node), ()), key),
                                   f"duplicate key {key!r} (also on line {seen.start_mark.line + 1}); YAML would keep "
                                   "the last value only, so remove one")
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        value = super().construct_yaml_int(node)
        if not _DECIMAL.fullmatch(node.value):
            raise _Refused(node.start_mark, self._fields.get(id(node), ()), f"{node.value} is read by YAML as the "
                           f"integer {value} (a leading 0 is octal, 0x hex, 0b binary, a colon base 60); write it in "
                           "decimal digits, or quote it if it is text")
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("!override", lambda loader, node: Override(loader.construct_mapping(node, deep=True)))


def _dotted(field: tuple) -> str:
    return ".".join(map(str, field)) or "<top>"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: study file not found")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - a SafeLoader, one extra tag
    except _Refused as e:  # one line: the file, the line, the field
        raise ConfigError(f"{path}: line {e.mark.line + 1}: {_dotted(e.field)}: {e.message}") from None
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
    """Load the study file ``path`` (default: the villain study, ``DEFAULT_STUDY``) under ``profile`` (default:
    ``DEFAULT_PROFILE``, tiny). Which study and profile a command means is its caller's to say (``mt_settings``)."""
    path = Path(path or DEFAULT_STUDY)
    profile = profile or DEFAULT_PROFILE
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
