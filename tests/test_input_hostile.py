"""Hostile input that used to hang, recurse or pass silently (issue 25, causes 8-11): YAML whose
aliases expand without bound or that nests without end, class names the tokenizer cannot tell
apart or cuts, a NegLabel corpus of which mining keeps nothing, and datasets that are one folder on
disk under two names or that loop through links. Each through the real CLI in a fresh interpreter
(a config written by a user in a folder of their own), with a timeout, the exact one-line message
and exit status 2, and nothing written; then the rules as units."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from raymmft.errors import ConfigError

LAUGHS = 9  # nine levels of ten aliases: 10**9 values once expanded


def _cli(cwd: Path, *argv: str, timeout: float = 120) -> str:
    """The one ``error:`` line of ``raymmft ARGV`` run in ``cwd`` (exit status 2), within
    ``timeout`` seconds; nothing may be written under ``cwd / "results"``."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "raymmft.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert time.monotonic() - started < timeout
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr[
        -2000:
    ]
    assert not (cwd / "results").exists(), "nothing written for a bad input"
    return result.stderr.removeprefix("error: ").rstrip("\n")


def _images(folder: Path, count: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")


def _search_config(cwd: Path, text: str = "", **data: str) -> Path:
    """A small search on ImageFolder datasets (relative paths, as a user writes them)."""
    data = {
        "id_train": "imagefolder:./data?split=train",
        "id_val": "imagefolder:./data?split=val",
        "ood_val": ["imagefolder:./ood"],
        **data,
    }
    raw = {
        "model": {"arch": "raymmft-tiny", "temperature": 0.05},
        "data": data,
        "train": {"epochs": 1, "batch_size": 2},
        "eval": {"scores": ["mcm"], "ood_score": "mcm"},
        "search": {"space": {"train.lam": {"uniform": [0.0, 1.0]}}, "num_samples": 1},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "storage": {"path": "./results"},
    }
    path = cwd / "search.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True) + text)
    _images(cwd / "ood" / "x", 1)
    return path


def _laughs(levels: int, template: str = "top: {}") -> str:
    """YAML anchors ``l0 .. l<levels>``, each a list of ten aliases of the one before."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n" + template.format(f"*l{levels}") + "\n"


# --- cause 8: YAML within bounds ------------------------------------------------------------------


def test_an_alias_bomb_in_a_config_is_one_line_at_once(tmp_path):
    """A billion laughs in a config: refused when it is read (before, it grew without bound and
    printed a line of megabytes)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(
        "model: {arch: raymmft-tiny}\nsearch: {space: {train.lam: {uniform: [0, 1]}}}\n"
        + _laughs(LAUGHS, "data: {{id_train: {{uri: 'builtin:shapes', classes: [{}, '']}}}}")
    )
    started = time.monotonic()
    assert _cli(tmp_path, "search", str(path), timeout=60) == (
        f"{path}: YAML too large at line 7, column 5: this value holds more than 100000 values "
        "(each alias counted as the value it repeats)"
    )
    assert time.monotonic() - started < 30


def test_an_alias_bomb_in_a_set_value_is_one_line_at_once(tmp_path):
    path = _search_config(tmp_path)
    # a flow sequence whose items anchor and alias one another: [&a [x, ...], &b [*a, ...], ...]
    items = ["&l0 [" + ", ".join(["x"] * 10) + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, LAUGHS + 1)]
    value = "[" + ", ".join(items) + "]"
    message = _cli(tmp_path, "search", str(path), "--set", f"data.id_train.classes={value}")
    assert message == (
        f"--set data.id_train.classes: cannot parse value {value[:77] + '...'!r} as YAML: this "
        "value holds more than 100000 values (each alias counted as the value it repeats)"
    )


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    assert _cli(tmp_path, "search", str(path), timeout=60) == (
        f"{path}: YAML too large at line 1, column 71: nested more than 64 levels deep"
    )
    config = _search_config(tmp_path)
    value = "{a: " * 3000 + "1" + "}" * 3000
    assert _cli(tmp_path, "search", str(config), "--set", f"train.lam={value}") == (
        f"--set train.lam: cannot parse value {value[:77] + '...'!r} as YAML: nested more than "
        "64 levels deep"
    )


def _load(text: str):
    from raymmft.config_file import UniqueKeyLoader

    return yaml.load(text, Loader=UniqueKeyLoader)


def _bound_error(text: str) -> str:
    from raymmft.config_file import YamlBoundError

    with pytest.raises(YamlBoundError) as caught:
        _load(text)
    mark = caught.value.problem_mark
    return f"{mark.line + 1}:{mark.column + 1} {caught.value.problem}"


def test_yaml_bounds_count_what_aliases_expand_to(monkeypatch):
    from raymmft import config_file
    from raymmft.config_file import MAX_YAML_DEPTH

    # an alias shares its anchor's node: a few thousand values stay cheap and load as before
    assert _load(_laughs(3))["top"] == [[[["x"] * 10] * 10] * 10] * 10
    assert _bound_error(_laughs(4)) == (
        "5:5 this value holds more than 100000 values (each alias counted as the value it repeats)"
    )
    with monkeypatch.context() as patch:  # the bound, exactly: the root, the list and its items
        patch.setattr(config_file, "MAX_YAML_VALUES", 100)
        assert len(_load("a: [" + ", ".join(["1"] * 97) + "]")["a"]) == 97
        assert _bound_error("a: [" + ", ".join(["1"] * 98) + "]") == (
            "1:1 this value holds more than 100 values (each alias counted as the value it repeats)"
        )
    # merge keys repeat their mappings too
    merged = "m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\n"
    for i in range(1, 7):
        merged += f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}\n"
    assert _bound_error(merged).startswith("5:14 this value holds more than 100000 values")
    # depth: literal nesting, and nesting that only aliases make deep
    nested: list = []
    for _ in range(MAX_YAML_DEPTH - 2):
        nested = [nested]
    assert _load("a: " + "[" * (MAX_YAML_DEPTH - 1) + "]" * (MAX_YAML_DEPTH - 1))["a"] == nested
    assert _bound_error("a: " + "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH) == (
        "1:67 nested more than 64 levels deep"
    )
    half = "[" * 40 + "]" * 40
    assert _bound_error(f"a: &a {half}\nb: [{'[' * 30}*a{']' * 30}]\n") == (
        "1:4 nested more than 64 levels deep"
    )
    assert _bound_error("a: &a [1, *a]\n") == (
        "1:4 an alias inside its own anchor's value (a value cannot contain itself)"
    )


def test_a_message_that_quotes_a_long_value_is_cut(tmp_path):
    from raymmft.config_file import MAX_MESSAGE, load_config

    path = tmp_path / "long.yaml"
    name = "n" * 5000
    path.write_text(
        "model: {arch: raymmft-tiny}\nsearch: {space: {train.lam: {uniform: [0, 1]}}}\n"
        f"data: {{id_train: {{uri: 'builtin:shapes', split: train, classes: [{name}, {name}]}}, "
        "id_val: 'builtin:shapes?split=val'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message) == MAX_MESSAGE and message.endswith("n...")
    assert message == f"{path}: data.id_train.classes: class '{name}"[: MAX_MESSAGE - 3] + "..."
    path.write_text(path.read_text().replace(f"[{name}, {name}]", "[" + "a, " * 50000 + "'']"))
    with pytest.raises(ConfigError, match=r"class name 50001 of 50001 is empty$"):
        load_config(path)
