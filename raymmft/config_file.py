"""From a YAML file and the command line to one validated ``Config``: every value goes in before
the one validation. The file is read as YAML with unique keys; ``--set a.b=value`` overrides a field
(the value parsed as YAML); dedicated flags (``--name``, ``--storage``) set theirs; the experiment's
name defaults to the file's stem; relative paths are resolved against the working directory.
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


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.lr=1e-4", ...]`` → ``[("train.lr", 0.0001), ...]`` (values parsed as YAML)."""
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects FIELD=VALUE, got '{item}'")
        try:
            out.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"--set {key}: cannot parse value {value!r} as YAML: {problem}"
            ) from None
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one without a word). Merge keys (``<<: *anchor``) still override as YAML says."""

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
        raise ConfigError(f"{path}: YAML syntax error at{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for key, value in [*parse_overrides(overrides), *(fields or {}).items()]:
        set_path(raw, key, value)
    storage = raw.get("storage")
    if storage is None or (isinstance(storage, dict) and storage.get("name") is None):
        set_path(raw, "storage.name", path.stem)
    return validate_config(raw, str(path), base_dir=os.getcwd())


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
