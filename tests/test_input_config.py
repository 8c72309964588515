"""Bad input in a config file and in --set: numbers that are not finite or outside their range,
values of the wrong kind, a --set on a searched field, seeds, the NegLabel corpus, a YAML file
that is not UTF-8, holds a key twice or a --set value that is not YAML. Each through the real CLI,
with the exact one-line message and exit status 2, and nothing run before the error (more
config-file errors: test_config.py)."""

from __future__ import annotations

import pytest
import yaml
from bad_input import EVALUATE, _config, _error


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=.inf", "train.lr: Input should be a finite number, got inf"),
        ("train.lam=.inf", "train.lam: Input should be a finite number, got inf"),
        ("train.lam=.nan", "train.lam: Input should be a finite number, got nan"),
        ("eval.temperature=.inf", "eval.temperature: Input should be a finite number, got inf"),
        (
            "model.temperature=1e6",
            "model.temperature: must be in [0.01, 1] (CLIP clamps the logit scale 1/tau to "
            "[1, 100]), got 1000000.0",
        ),
        (
            "model.temperature=1e-12",
            "model.temperature: must be in [0.01, 1] (CLIP clamps the logit scale 1/tau to "
            "[1, 100]), got 1e-12",
        ),
        (
            "search.objectives=[{metric: id_acc, weight: .nan}]",
            "search.objectives[0].weight: Input should be a finite number, got nan",
        ),
        # YAML's true is not 1: pydantic's lax mode would read it so
        ("train.epochs=true", "train.epochs: must be a number, got true"),
        ("eval.temperature=false", "eval.temperature: must be a number, got false"),
        ("train.seed=-1", "train.seed: Input should be greater than or equal to 0, got -1"),
        (
            "train.seed=1180591620717411303424",  # 2**70: no generator takes it
            "train.seed: Input should be less than or equal to 4294967295, got "
            "1180591620717411303424",
        ),
        ("eval.scores=[mcm, energy, mcm]", "eval.scores: score 'mcm' given twice"),
        (
            "search.objectives=[{metric: id_acc}, {metric: id_acc, mode: min}]",
            "search.objectives: metric 'id_acc' given twice",
        ),
    ],
)
def test_numbers_and_lists_of_the_wrong_kind(tmp_path, capsys, override, message):
    path = _config(tmp_path)
    assert _error(capsys, ["train", str(path), "--set", override]) == f"{path}: {message}"


def test_set_on_a_searched_field_is_an_error(tmp_path, capsys):
    path = _config(tmp_path)
    msg = _error(capsys, ["search", str(path), "--set", "train.lam=.nan"])
    assert msg == f"{path}: train.lam: Input should be a finite number, got nan"
    msg = _error(capsys, ["search", str(path), "--set", "train.lam=0.5"])
    assert msg == (
        "--set train.lam: the field is searched (search.space); give its range there, or drop "
        "it from search.space to fix its value"
    )


def test_seeds_of_the_commands_are_checked_like_the_configs(tmp_path, capsys):
    assert _error(capsys, ["evaluate", *EVALUATE, "--seed", "-1"]) == (
        "--seed must be in [0, 2**32 - 1], got -1"
    )
    assert _error(capsys, ["pretrain-world", "--out", str(tmp_path / "w.pt"), "--seed", "-3"]) == (
        "--seed must be in [0, 2**32 - 1], got -3"
    )


@pytest.mark.parametrize("content", [None, "# nothing\n\n"])
def test_the_neglabel_corpus_is_resolved_before_any_trial(tmp_path, capsys, content):
    words = tmp_path / "words.txt"
    if content is not None:
        words.write_text(content)
    path = _config(
        tmp_path,
        eval={"scores": ["neglabel"], "ood_score": "neglabel", "neglabel": {"corpus": str(words)}},
    )
    msg = _error(capsys, ["search", str(path)])
    if content is None:
        assert msg.startswith(f"unknown NegLabel corpus '{words}' (known: wordnet, world, ")
    else:
        assert msg == f"NegLabel corpus file {words} holds no words (one word per line)"
    assert not (tmp_path / "results" / "sbase").exists()


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    data = _config(tmp_path).read_bytes().replace(b"raymmft-tiny", b"raymmft-t\xffny")
    path.write_bytes(data)
    at = data.index(b"\xff")
    line, column = data[:at].count(b"\n") + 1, at - data[:at].rfind(b"\n")
    assert _error(capsys, ["search", str(path)]) == (
        f"{path}: not UTF-8 text (byte 0xff at line {line}, column {column})"
    )


def test_a_key_given_twice_in_the_yaml(tmp_path, capsys):
    """PyYAML keeps the last of two equal keys without a word; the config refuses it."""
    path = _config(tmp_path)
    text = path.read_text()
    lines = text.splitlines()
    path.write_text(text + "model: {arch: raymmft-small}\n")
    assert _error(capsys, ["search", str(path)]) == (
        f"{path}: YAML syntax error at line {len(lines) + 1}, column 1: key 'model' given twice "
        "in one mapping"
    )
    merged = tmp_path / "merge.yaml"  # a merge key (<<) still overrides, as YAML says
    merged.write_text(
        "base: &b {arch: raymmft-tiny, temperature: 0.05}\nmodel: {<<: *b, temperature: 0.1}\n"
    )
    from raymmft.config_file import UniqueKeyLoader

    assert yaml.load(merged.read_text(), Loader=UniqueKeyLoader)["model"]["temperature"] == 0.1


def test_a_set_value_that_is_not_yaml(tmp_path, capsys):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--set", "train.lr=[1"]) == (
        "--set train.lr: cannot parse value '[1' as YAML: expected ',' or ']', but got "
        "'<stream end>'"
    )
