"""Hostile input that used to hang, recurse or pass silently (issue 25, causes 8-11): YAML whose
aliases expand without bound or that nests without end, class names the tokenizer cannot tell
apart or cuts, a NegLabel corpus of which mining keeps nothing, and datasets that are one folder on
disk under two names or that loop through links. Each through the real CLI in a fresh interpreter
(a config written by a user in a folder of their own), with a timeout, the exact one-line message
and exit status 2, and nothing written; then the rules as units."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import yaml
from PIL import Image

from raymmft.errors import ConfigError, DataError

LAUGHS = 9  # nine levels of ten aliases: 10**9 values once expanded


def _cli(cwd: Path, *argv: str, timeout: float = 120) -> str:
    """The one ``error:`` line of ``raymmft ARGV`` run in ``cwd`` (exit status 2), within
    ``timeout`` seconds; no experiment may be left in ``cwd / "results"``."""
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
    results = cwd / "results"
    assert not results.exists() or not any(results.iterdir()), "no experiment for a bad input"
    return result.stderr.removeprefix("error: ").rstrip("\n")


def _images(folder: Path, count: int = 5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")


def _search_config(cwd: Path, evaluation: dict | None = None, **data: str) -> Path:
    """A small search on ImageFolder datasets (relative paths, as a user writes them), with the
    ``eval`` section ``evaluation`` and the datasets ``data`` given."""
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
        "eval": evaluation or {"scores": ["mcm"], "ood_score": "mcm"},
        "search": {"space": {"train.lam": {"uniform": [0.0, 1.0]}}, "num_samples": 1},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "storage": {"path": "./results"},
    }
    path = cwd / "search.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
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


# --- cause 9: class names the text encoder can tell apart ------------------------------------------


def test_class_names_that_tokenise_alike_are_refused(tmp_path):
    for name in ("Cat", "cat", "dog"):
        _images(tmp_path / "data" / name)
    path = _search_config(tmp_path)
    assert _cli(tmp_path, "search", str(path)) == (
        f"data.id_train (imagefolder:{tmp_path}/data?split=train): classes 'Cat' and 'cat' give "
        "the same prompt tokens (the tokenizer lowercases and normalises text): raymmft-tiny "
        "cannot tell them apart; rename one"
    )


def test_a_class_whose_prompt_is_cut_is_refused(tmp_path):
    """raymmft-tiny reads 24 tokens: two names that differ after their 20th word would be one."""
    for name in ("a", "b"):
        _images(tmp_path / "data" / name)
    common = " ".join(["striped"] * 20)
    (tmp_path / "names.txt").write_text(f"{common} cat\n{common} dog\n")
    names = "&classnames_file=./names.txt"
    path = _search_config(
        tmp_path,
        id_train=f"imagefolder:./data?split=train{names}",
        id_val=f"imagefolder:./data?split=val{names}",
    )
    assert _cli(tmp_path, "search", str(path)) == (
        f"data.id_train (imagefolder:{tmp_path}/data?split=train&classnames_file={tmp_path}/"
        f"names.txt): class '{common[:57]}...': its prompt 'a photo of a {{}}.' is longer than "
        "raymmft-tiny's context of 24 tokens, and would be cut; give the class a shorter name"
    )


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from raymmft.model import text_tokenizer

    tokenizer = text_tokenizer("raymmft-tiny")
    assert tokenizer.context_length == 24  # the architecture's, not open_clip's default of 77
    return tokenizer


@pytest.mark.parametrize(
    "first, second",
    [
        ("Cat", "cat"),
        ("big  dog", " Big Dog"),
        ("caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")),  # NFC and NFD
        ("fish & chips", "fish &amp; chips"),
        ("cat", "\uff43\uff41\uff54"),  # fullwidth letters
    ],
)
def test_names_the_tokenizer_normalises_to_one_are_one_class(tiny_tokenizer, first, second):
    from raymmft.text import check_class_prompts, tokenize_class_prompts

    message = (
        f"classes {first!r} and {second!r} give the same prompt tokens (the tokenizer lowercases "
        "and normalises text): raymmft-tiny cannot tell them apart; rename one"
    )
    with pytest.raises(DataError) as caught:
        check_class_prompts(
            tiny_tokenizer, ["bird", first, second], ["a {}."], model="raymmft-tiny"
        )
    assert str(caught.value) == message
    # training tokenises its prompts under the same rule
    with pytest.raises(DataError, match="^classes .* the text encoder cannot tell them apart"):
        tokenize_class_prompts(tiny_tokenizer, [first, "bird", second])


def test_prompts_are_the_tokenizer_ids_and_fit_the_context_exactly(tiny_tokenizer):
    from raymmft.text import check_class_prompts, tokenize_class_prompts

    names = ["cat", "dog", "red circle"]
    ids = check_class_prompts(tiny_tokenizer, names, ["a photo of a {}.", "The nice {}."])
    expected = tiny_tokenizer(
        [t.format(n) for n in names for t in ("a photo of a {}.", "The nice {}.")]
    )
    assert ids.equal(expected)
    assert tokenize_class_prompts(tiny_tokenizer, names).equal(expected[::2])
    # "a photo of a {}." takes 7 of the 24 positions (start, 5 tokens, end): 17 words fit
    fits = " ".join(["cat"] * 17)
    assert (tokenize_class_prompts(tiny_tokenizer, [fits, "dog"])[0] != 0).sum() == 24
    with pytest.raises(DataError) as caught:
        tokenize_class_prompts(tiny_tokenizer, ["dog", fits + " cat"])
    assert str(caught.value) == (
        f"class '{(fits + ' cat')[:57]}...': its prompt 'a photo of a {{}}.' is longer than the "
        "text encoder's context of 24 tokens, and would be cut; give the class a shorter name"
    )


def test_imagenet_class_names_are_told_apart():
    """open_clip's ImageNet names hold 'missile' and 'sunglasses' twice; raymmft's do not."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from raymmft.model import text_tokenizer
    from raymmft.text import check_class_prompts, imagenet_classnames

    tokenizer = text_tokenizer("ViT-B-32")
    names = imagenet_classnames()
    assert [i for i, (a, b) in enumerate(zip(names, IMAGENET_CLASSNAMES)) if a != b] == [744, 836]
    assert names[744] == "projectile" and names[836] == "sunglass"
    assert check_class_prompts(tokenizer, names, ["a photo of a {}."]).shape == (1000, 77)
    with pytest.raises(DataError, match="^classes 'missile' and 'missile' give the same"):
        check_class_prompts(tokenizer, IMAGENET_CLASSNAMES, ["a photo of a {}."])


# --- cause 10: a NegLabel corpus read as the tokenizer reads it -------------------------------------

# the ID classes café and hot dog: after a byte-order mark, in NFD, in capitals, with spaces
ID_LIKE_WORDS = "\ufeffCafe\u0301\n  HOT   DOG \nHot\u00a0dog\nhot_dog\n"


def _neglabel_config(tmp_path: Path, words: str) -> Path:
    for name in ("caf\u00e9", "hot dog"):
        _images(tmp_path / "data" / name)
    (tmp_path / "words.txt").write_text(words, encoding="utf-8")
    neglabel = {"corpus": "./words.txt"}
    return _search_config(
        tmp_path, {"scores": ["neglabel"], "ood_score": "neglabel", "neglabel": neglabel}
    )


def test_a_corpus_mining_keeps_nothing_of_is_refused_before_the_search(tmp_path):
    path = _neglabel_config(tmp_path, ID_LIKE_WORDS)
    assert _cli(tmp_path, "search", str(path)) == (
        f"eval.neglabel.corpus {tmp_path}/words.txt: NegLabel mining keeps no words: 0 nouns and "
        "0 adjectives (4 more equal an ID class name) with keep_fraction=0.15; use a larger "
        "corpus or keep_fraction"
    )


def test_corpus_words_meet_the_id_names_as_the_tokenizer_reads_them(tmp_path):
    from raymmft.config import NegLabelConfig
    from raymmft.ood.corpus import read_word_file
    from raymmft.ood.neglabel import mining_candidates

    words = tmp_path / "words.txt"
    words.write_text(ID_LIKE_WORDS + "tea\nfish &amp; chips\n# a comment\nwaffle\n" * 1)
    corpus = read_word_file(words)
    assert corpus.nouns[0] == "Cafe\u0301"  # the byte-order mark is not part of the word
    ids = ["caf\u00e9", "hot dog", "Fish & Chips"]
    nouns, adjs, kept, _ = mining_candidates(corpus, ids, NegLabelConfig(keep_fraction=0.5))
    assert (nouns, adjs, kept) == (["tea", "waffle"], [], 1)
    with pytest.raises(ValueError) as caught:
        mining_candidates(corpus, ids, NegLabelConfig(keep_fraction=0.4))
    assert str(caught.value) == (
        "NegLabel mining keeps no words: 2 nouns and 0 adjectives (5 more equal an ID class "
        "name) with keep_fraction=0.4; use a larger corpus or keep_fraction"
    )


def test_name_key_is_open_clips_own_cleaning():
    """The comparison form against open_clip's tokenizer cleaning, computed its own way."""
    from open_clip.tokenizer import _clean_lower

    from raymmft.ood.corpus import load_wordnet_corpus
    from raymmft.ood.neglabel import name_key

    corpus = load_wordnet_corpus()
    words = [*corpus.nouns[::50], *corpus.adjectives[::50]]
    words += ["\ufeffCat", "Cafe\u0301", " Big\tDog ", "a&amp;b", "<b>&amp;</b>", "\ufb01sh"]
    words += ["\uff23\uff41\uff54", "\x1b[31mred\x1b[0m", "it\u2019s", "\u00c9COLE", "a\u00a0b"]
    assert [name_key(w) for w in words] == [_clean_lower(w.replace("_", " ")) for w in words]


# --- cause 11: a folder is what it names on disk, and is read once ----------------------------------


def test_one_folder_under_two_names_is_one_source(tmp_path):
    for name in ("cat", "dog"):
        _images(tmp_path / "data" / name)
    (tmp_path / "link").symlink_to("data", target_is_directory=True)
    path = _search_config(tmp_path, id_val="imagefolder:./link/?split=train")
    assert _cli(tmp_path, "search", str(path)) == (
        f"data (local paths compared as they are on disk): id_val (imagefolder:{tmp_path}/link?"
        f"split=train) overlaps id_train (imagefolder:{tmp_path}/data?split=train): validation "
        "images would be training images (a leak); use another split, seed or source"
    )


def test_a_link_back_up_the_tree_is_refused_not_followed(tmp_path):
    for name in ("cat", "dog"):
        _images(tmp_path / "data" / name)
    (tmp_path / "data" / "cat" / "again").symlink_to("..", target_is_directory=True)
    path = _search_config(tmp_path)
    assert _cli(tmp_path, "search", str(path), timeout=60) == (
        f"folder {tmp_path}/data/cat/again is the folder {tmp_path}/data again (through a link): "
        "its images would be read twice, or forever; remove the link"
    )


def test_the_walk_reads_each_real_folder_once_in_os_walk_order(tmp_path):
    from raymmft.data.imagefolder import IMAGE_EXTENSIONS, image_files, scan_image_folder

    root = tmp_path / "data"
    for sub in ("b", "a/z", "a/y/x", "a"):
        _images(root / "cat" / sub, 2)
    _images(root / "cat", 1)
    _images(tmp_path / "elsewhere" / "more", 1)
    (root / "cat" / "a" / "outside").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    expected = [
        os.path.join(folder, name)
        for folder, dirs, names in os.walk(root / "cat", followlinks=True)
        if not dirs.sort()
        for name in sorted(names)
        if name.endswith(IMAGE_EXTENSIONS)
    ]
    assert len(expected) == 10 and image_files(root / "cat", {}) == expected
    # one outside folder linked from two classes: its images would be in both
    _images(root / "dog", 1)
    (root / "dog" / "borrowed").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DataError) as caught:
        scan_image_folder(root)
    assert str(caught.value) == (
        f"folder {root}/dog/borrowed is the folder {root}/cat/a/outside again (through a link): "
        "its images would be read twice, or forever; remove the link"
    )
    (root / "dog" / "borrowed").unlink()
    assert len(scan_image_folder(root).paths) == 11


def test_sources_are_compared_by_their_real_paths(tmp_path):
    from raymmft.data.spec import DatasetSpec, real_source

    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to("data", target_is_directory=True)
    same = [
        f"imagefolder:{tmp_path}/data",
        f"imagefolder:{tmp_path}/link/",
        f"imagefolder:{tmp_path}/link/../data/.",
        f"imagefolder:file://{tmp_path}/link",
    ]
    assert {real_source(DatasetSpec(uri=uri)) for uri in same} == {f"imagefolder:{tmp_path}/data"}
    assert {DatasetSpec(uri=uri).normalised_uri() for uri in same} == {  # what the text says
        f"imagefolder:{tmp_path}/data",
        f"imagefolder:{tmp_path}/link",
        f"imagefolder:file://{tmp_path}/link",
    }
    assert real_source(DatasetSpec(uri="parquet:s3://bucket/x/")) == "parquet:s3://bucket/x"
    assert real_source(DatasetSpec(uri="builtin:shapes", split="val")) == "builtin:shapes"
