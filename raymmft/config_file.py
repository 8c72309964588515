"""From a YAML file and the command line to one validated ``Config``: every value goes in before
the one validation. The file is read as YAML with unique keys; ``--set a.b=value`` overrides a field
(the value parsed as YAML); dedicated flags (``--name``, ``--storage``) set theirs; the experiment's
name defaults to the file's stem; relative paths are resolved against the working directory.
YAML is read with bounds (``MAX_YAML_DEPTH`` levels, ``MAX_YAML_VALUES`` values with every alias
counted as the value it repeats), so that a "billion laughs" of aliases or a deep nesting is one
line, not gigabytes or a ``RecursionError``; an error message is cut to ``MAX_MESSAGE`` characters.
``load_experiment_config`` reads back the config an experiment saved (``raymmft_config.json``, the
whole config with its defaults).
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from raymmft.config import Config, validate_config
from raymmft.errors import ConfigError, StorageError
from raymmft.search_space import set_path
from raymmft.storage import Location

EXPERIMENT_CONFIG_FILE = "raymmft_config.json"

# A config is a few sections a few levels deep; these bounds are far above any real one.
MAX_YAML_DEPTH = 64
MAX_YAML_VALUES = 100_000
MAX_MESSAGE = 1000
SHOWN_VALUE = 80  # characters of a --set value quoted in its error


def cut(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters long, a cut marked with ``...``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.lr=1e-4", ...]`` → ``[("train.lr", 0.0001), ...]`` (values parsed as YAML, by the
    config file's loader and within its bounds)."""
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects FIELD=VALUE, got {cut(item, SHOWN_VALUE)!r}")
        try:
            out.append((key.strip(), yaml.load(value, Loader=UniqueKeyLoader)))
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"--set {cut(key, SHOWN_VALUE)}: cannot parse value {cut(value, SHOWN_VALUE)!r} "
                f"as YAML: {problem}"
            ) from None
    return out


class YamlBoundError(yaml.MarkedYAMLError):
    """YAML that is well formed but beyond ``MAX_YAML_DEPTH`` or ``MAX_YAML_VALUES``."""


def _too_deep(mark) -> YamlBoundError:
    return YamlBoundError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)


def check_expanded(root: yaml.Node) -> None:
    """The bounds on a composed document, aliases expanded: at most ``MAX_YAML_DEPTH`` levels and
    ``MAX_YAML_VALUES`` values (scalars, lists and mappings). The walk visits each node once
    (an alias is the node of its anchor: its size is remembered, not recounted), so a document whose
    aliases expand to 10^30 values is refused in time linear in its length. The error marks the
    first value found too large, or a value that contains itself through an alias."""
    known: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels)
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_YAML_DEPTH:
            raise _too_deep(node.start_mark)
        key = id(node)
        if key in open_nodes:
            raise YamlBoundError(
                None,
                None,
                "an alias inside its own anchor's value (a value cannot contain itself)",
                node.start_mark,
            )
        if key not in known:
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            else:
                children = []
            open_nodes.add(key)
            values, levels = 1, 1
            for child in children:
                child_values, child_levels = visit(child, depth + 1)
                values, levels = values + child_values, max(levels, child_levels + 1)
                if values > MAX_YAML_VALUES:
                    raise YamlBoundError(
                        None,
                        None,
                        f"this value holds more than {MAX_YAML_VALUES} values "
                        "(each alias counted as the value it repeats)",
                        node.start_mark,
                    )
            open_nodes.discard(key)
            known[key] = (values, levels)
        values, levels = known[key]
        if depth + levels - 1 > MAX_YAML_DEPTH:
            raise _too_deep(node.start_mark)
        return values, levels

    visit(root, 1)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one without a word), and that a document is refused beyond ``MAX_YAML_DEPTH`` levels
    (while it is composed, before Python's recursion limit) or ``MAX_YAML_VALUES`` values with its
    aliases expanded (``check_expanded``, before anything is constructed). Merge keys
    (``<<: *anchor``) still override as YAML says."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _too_deep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        root = super().compose_document()
        check_expanded(root)
        return root

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the safe loader's own check says what is wrong
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice in one mapping", key_node.start_mark
                )
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


def load_config(
    path: str | Path, overrides: list[str] | None = None, *, fields: dict[str, Any] | None = None
) -> Config:
    """Read a YAML config, apply ``--set`` overrides and ``fields`` (``{dotted.field: value}``
    from dedicated flags such as ``--name``), validate; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column})"
        ) from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        kind = "YAML too large" if isinstance(exc, YamlBoundError) else "YAML syntax error"
        raise ConfigError(f"{path}: {kind} at{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for key, value in [*parse_overrides(overrides), *(fields or {}).items()]:
        set_path(raw, key, value)
    storage = raw.get("storage")
    if storage is None or (isinstance(storage, dict) and storage.get("name") is None):
        set_path(raw, "storage.name", path.stem)
    try:
        return validate_config(raw, str(path), base_dir=os.getcwd())
    except ConfigError as exc:  # a message may quote a value of the file: one bounded line
        raise ConfigError(cut(str(exc), MAX_MESSAGE)) from None


def check_searchable(cfg: Config, overrides: list[str] | None) -> None:
    """What a search needs beyond a valid config: a distribution to draw from, and no ``--set`` on
    a field it draws (``raymmft train`` runs the fixed values and needs neither)."""
    if not cfg.search.distributions:
        raise ConfigError(
            f"search.space gives only fixed values ({', '.join(cfg.search.space)}): give at least "
            "one field a distribution ({uniform: [low, high]}, {choice: [...]}, ...), or run the "
            "fixed values with raymmft train"
        )
    check_not_searched(cfg, overrides)


def check_not_searched(cfg: Config, overrides: list[str] | None) -> None:
    """A search draws its searched fields: a ``--set`` on one would be overridden without a word,
    so it is an error that names the field (``raymmft train`` uses the fixed values, and allows it)."""
    searched = list(cfg.search.distributions)
    for key, _ in parse_overrides(overrides):
        if any(key == s or s.startswith(key + ".") or key.startswith(s + ".") for s in searched):
            raise ConfigError(
                f"--set {key}: the field is searched (search.space); give its range there, or "
                f"drop it from search.space to fix its value"
            )


def load_experiment_config(experiment: str | Location) -> Config:
    """The config saved in an experiment directory (a local path or a URI), with its storage
    pointing at that directory (``raymmft.results.experiment.check_resumable`` first finds out
    that the directory is a started search that may be resumed)."""
    try:
        exp = Location.parse(experiment)
        raw = json.loads(exp.join(EXPERIMENT_CONFIG_FILE).read_text())
    except StorageError as exc:
        raise ConfigError(f"cannot resume {experiment}: {exc}") from None
    except json.JSONDecodeError as exc:
        path = exp.join(EXPERIMENT_CONFIG_FILE)
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    source = str(exp.join(EXPERIMENT_CONFIG_FILE))
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    storage = raw.get("storage") if isinstance(raw.get("storage"), dict) else {}
    raw["storage"] = {**storage, "path": exp.parent.uri, "name": exp.name}
    return validate_config(raw, source, base_dir=os.getcwd())
