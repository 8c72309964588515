"""The documentation against the code: the configuration reference is what
``scripts/config_reference.py`` generates from the models now (and lists every field), every
relative link of the README and ``docs/`` leads to a file, every repository path they name exists,
the code map's names are defined where it says, and the README's ``raymmft`` commands parse."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
# a Markdown link or image: [text](target) or ![alt](target "title")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
# a repository path written as code: `raymmft/search.py`, `tests/test_layers.py`, `cluster/`
REPO_PATH = re.compile(
    r"`((?:raymmft|tests|benchmarks|scripts|cluster|search_spaces|docs)/[\w./-]*)`"
)


def _reference():
    spec = importlib.util.spec_from_file_location(
        "config_reference", ROOT / "scripts" / "config_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _prose(page: Path) -> str:
    """The page without its fenced code blocks (shell and YAML there are not links)."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_configuration_reference_is_current():
    expected = _reference().render()
    found = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert found == expected, (
        "docs/configuration.md differs from the config models: run "
        "`.venv/bin/python scripts/config_reference.py` and commit the result"
    )


def test_reference_lists_every_field_of_every_section_with_its_description():
    """Against pydantic's own JSON schema of ``Config``, a second walk of the same models."""
    from raymmft.config import Config

    schema = Config.model_json_schema()
    models = {"Config": schema, **schema.get("$defs", {})}
    text = _reference().render()
    sections = {}
    for block in text.split("\n## ")[1:]:
        body = block.split("\n", 1)[1]  # below the heading: the model's dotted name, its table
        qualname = re.search(r"^`[\w.]+\.(\w+)`$", body, flags=re.M).group(1)
        rows = re.findall(r"^\| `(\w+)` \| .* \| (.*) \|$", body, flags=re.M)
        sections[qualname] = dict(rows)
    for name, model in models.items():
        if "properties" not in model:
            continue  # an enum or another non-model definition
        assert name in sections, f"no section for {name}"
        assert list(sections[name]) == list(model["properties"]), name
        for field, prop in model["properties"].items():
            described = " ".join(prop.get("description", "").split()).replace("|", "\\|")
            assert sections[name][field] == described.replace("``", "`"), (name, field)


def test_link_pattern_finds_links_and_images():
    text = 'a [b](docs/x.md#y) and ![c](images/d.png "t") and [e](https://f.org), `[g](h)`'
    assert LINK.findall(text) == ["docs/x.md#y", "images/d.png", "https://f.org", "h"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_lead_to_files(page):
    for target in LINK.findall(_prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)}: link to {target}, no such file"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_named_repository_paths_exist(page):
    for name in REPO_PATH.findall(_prose(page)):
        if any(c in name for c in "*<>"):
            continue  # a pattern, not a path
        assert (ROOT / name).exists(), f"{page.relative_to(ROOT)} names `{name}`: no such path"


def _defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assigned names of a module, and ``Class.method``."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_code_map_names_are_defined_where_it_says():
    rows = re.findall(
        r"^\| *\d+ *\| `([\w/]+\.py)` \| ([^|]+) \|",
        (ROOT / "docs" / "code_map.md").read_text(),
        flags=re.M,
    )
    assert len(rows) >= 10, "the code map's reading-order table was not found"
    for path, cell in rows:
        names = re.findall(r"`([\w.]+)`", cell)
        assert names, path
        missing = sorted(set(names) - _defined_names(ROOT / path))
        assert not missing, f"docs/code_map.md: {path} defines no {', '.join(missing)}"


def _raymmft_commands(page: Path) -> list[list[str]]:
    """The ``raymmft`` commands of a page's bash blocks (continuation lines joined; one given as
    ``ray job submit ... -- raymmft ...`` counts from ``raymmft``). Lines with ``...`` are
    sketches, left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#") or "..." in line:
                continue
            words = shlex.split(line)
            for i, word in enumerate(words):
                if word.endswith("raymmft") and (i == 0 or words[i - 1] == "--"):
                    commands.append(words[i + 1 :])
                    break
    return commands


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_raymmft_commands_in_the_docs_parse(page):
    from raymmft.cli import COMMANDS, build_parser

    for argv in _raymmft_commands(page):
        where = f"{page.relative_to(ROOT)}: raymmft {shlex.join(argv)}"
        assert argv and argv[0] in COMMANDS, f"{where}: not a subcommand"
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: the CLI refuses it")
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        known = sub.choices[argv[0]]._option_string_actions
        for word in argv[1:]:  # argparse takes abbreviations; the docs spell flags in full
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{where}: no flag {word}"
        config = getattr(args, "config", None)
        if config is not None and not config.startswith("raymmft_results/"):
            assert (ROOT / config).is_file(), f"{where}: no config file {config}"


def test_readme_cluster_block_submits_a_search_with_an_absolute_storage():
    """A relative storage would land in the job's temporary working directory, which Ray deletes
    (``raymmft.cluster.check_storage`` refuses it)."""
    commands = _raymmft_commands(ROOT / "README.md")
    searches = [argv for argv in commands if argv[0] == "search"]
    assert searches
    for argv in searches:
        storage = argv[argv.index("--storage") + 1]
        assert storage.startswith(("$PWD/", "/", "s3://", "gs://")), storage
