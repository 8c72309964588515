#!/usr/bin/env python3
"""Write ``docs/configuration.md``, the configuration reference, from the pydantic models themselves.

It walks ``raymmft.config.Config`` (and every model nested in it, such as ``raymmft.data``'s
``DataConfig`` and ``DatasetSpec``) through ``model_fields``, and writes one table per section:
field, type, default, description (the field's ``Field(description=...)``). Nothing here names a
field, so the reference follows the config module; ``tests/test_docs.py`` fails when the file is
older than the models.

    .venv/bin/python scripts/config_reference.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/config_reference.py --check   # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import annotated_types
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "configuration.md"
# annotated_types constraints, as the reference writes them
BOUNDS = {
    annotated_types.Ge: ("ge", "≥"),
    annotated_types.Gt: ("gt", ">"),
    annotated_types.Le: ("le", "≤"),
    annotated_types.Lt: ("lt", "<"),
    annotated_types.MinLen: ("min_length", "length ≥"),
    annotated_types.MaxLen: ("max_length", "length ≤"),
}


@dataclass
class Section:
    """One pydantic model and the dotted paths where the config holds it (``[]``: in a list)."""

    model: type[BaseModel]
    paths: list[str] = field(default_factory=list)


def _is_model(t) -> bool:
    return inspect.isclass(t) and issubclass(t, BaseModel)


def nested_models(annotation, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    """The models inside a field's type, each with the suffix of its path: ``[]`` inside a list
    or tuple, ``{}`` inside a mapping's values."""
    if _is_model(annotation):
        return [(annotation, suffix)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return nested_models(args[0], suffix)
    if origin in (list, tuple, set, frozenset):
        suffix += "[]"
    elif origin is dict:
        args, suffix = args[1:], suffix + "{}"
    return [found for arg in args for found in nested_models(arg, suffix)]


def sections(root: type[BaseModel] = None) -> list[Section]:
    """Every model reachable from ``root`` (default ``Config``), depth first in field order; a
    model held in several places is one section with all its paths."""
    if root is None:
        from raymmft.config import Config

        root = Config
    found: dict[type[BaseModel], Section] = {}

    def visit(model: type[BaseModel], path: str) -> None:
        seen = model in found
        found.setdefault(model, Section(model)).paths.append(path)
        if seen:
            return
        for name, info in model.model_fields.items():
            for sub, suffix in nested_models(info.annotation):
                visit(sub, f"{path}.{name}{suffix}" if path else f"{name}{suffix}")

    visit(root, "")
    return list(found.values())


def type_text(annotation) -> str:
    """A field's type as Python spells it, ``Literal`` values joined by ``|``."""
    if annotation is type(None):
        return "None"
    if annotation is typing.Any:
        return "any"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        bounds = constraints(args[1:])
        return type_text(args[0]) + (f" ({bounds})" if bounds else "")
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"tuple[{type_text(args[0])}, ...]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    return getattr(annotation, "__name__", str(annotation))


def constraints(metadata) -> str:
    """``≥ 1``, ``0 < x ≤ 1``-like bounds from pydantic's field metadata (other metadata, such as
    validators, is left out)."""
    out = []
    for item in metadata:
        for kind, (attr, sign) in BOUNDS.items():
            if isinstance(item, kind):
                out.append(f"{sign} {getattr(item, attr)}")
        if hasattr(item, "metadata"):  # a FieldInfo inside Annotated (e.g. a Seed type)
            nested = constraints(item.metadata)
            out += [nested] if nested else []
    return ", ".join(out)


def default_text(info, owner: dict[type[BaseModel], Section]) -> str:
    """The default's table cell: its value as YAML reads it (JSON is YAML's flow style),
    *required* when there is none, or the table of a nested section's own defaults."""
    if info.is_required():
        return "*required*"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel) and type(value) in owner and value == type(value)():
        return f"see `{owner[type(value)].paths[0]}`"
    return f"`{cell(json.dumps(_plain(value), ensure_ascii=False))}`"


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rst_to_md(text: str) -> str:
    """Docstrings write code as ``x``; Markdown as `x`."""
    return text.replace("``", "`")


def render_section(section: Section, owner: dict[type[BaseModel], Section]) -> list[str]:
    model = section.model
    where = ", ".join(f"`{p}`" if p else "Top level" for p in section.paths)
    lines = [f"## {where}", "", f"`{model.__module__}.{model.__qualname__}`", ""]
    doc = model.__dict__.get("__doc__")
    if doc:
        lines += [rst_to_md(inspect.cleandoc(doc)), ""]
    lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, info in model.model_fields.items():
        kind = type_text(info.annotation)
        bounds = constraints(info.metadata)
        if bounds:
            kind += f" ({bounds})"
        row = (f"`{name}`", f"`{cell(kind)}`", default_text(info, owner))
        described = cell(rst_to_md(info.description or ""))
        lines.append(f"| {' | '.join(row)} | {described} |")
    return lines + [""]


def render() -> str:
    """The whole of ``docs/configuration.md``."""
    import raymmft.config

    found = sections()
    owner = {s.model: s for s in found}
    intro = rst_to_md(inspect.cleandoc(raymmft.config.__doc__ or ""))
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python scripts/config_reference.py` from the pydantic models; do not",
        "edit by hand: change the model's `Field(description=...)` and run it again. -->",
        "",
        intro,
        "",
        "Sections, in the order below: "
        + ", ".join(f"`{s.paths[0]}`" for s in found if s.paths[0]),
        "",
    ]
    for section in found:
        lines += render_section(section, owner)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print(f"{OUT.relative_to(ROOT)} is {'current' if current else 'out of date'}")
        return 0 if current else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
