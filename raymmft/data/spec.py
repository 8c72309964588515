"""Dataset specs in the config: which images, which classes, which split.

A dataset is a URI plus options, written either as one string with a query::

    builtin:shapes?split=val&classes=near_ood&per_class=20

or as a mapping (YAML)::

    {uri: "parquet:s3://bucket/imagenet/train", label_column: label, skip_corrupt: true}

Kinds: ``builtin:shapes``, ``builtin:digits``, ``imagefolder:PATH``, ``parquet:URI`` (a local folder or
file, or ``s3://``/``gs://``...). Options that do not apply to a kind, unknown options and unknown
builtin class names are validation errors. Validation does no I/O; a relative local path (of
``imagefolder:``/``parquet:`` and ``classnames_file``) is made absolute against the validation
context's base directory (``raymmft.config.BASE_DIR``: the command's working directory), since the
workers that open it run elsewhere. A spec writes out (``model_dump``) the options of its own kind
only, defaults included, so that the dump validates back into the same spec.

``DataConfig`` groups the ID train/val sets and the OoD validation/test sets and rejects setups where
the OoD test set overlaps an OoD validation set (searching against it leaks), where OoD classes are ID
classes, or where ID validation images are training images. Validation tells sources apart by their
normalised URIs; preflight applies the same rules again with local paths resolved on disk
(``real_source``: a symlink, ``./x`` and ``/abs/x/`` name one folder).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from raymmft.data import digits, shapes
from raymmft.storage import resolve_local

# the validation-context key of the directory relative paths are resolved against
BASE_DIR = "raymmft.base_dir"

Split = Literal["train", "val", "test"]
NamedClasses = Literal["id", "near_ood", "far_ood", "all"]
NAMED_CLASSES: tuple[str, ...] = ("id", "near_ood", "far_ood", "all")

BUILTIN_KINDS = ("shapes", "digits")
URI_FORMS = "builtin:shapes, builtin:digits, imagefolder:PATH or parquet:URI"

_COMMON = {"split", "classes", "per_class", "num_samples", "seed", "name"}
_CARVED = {"val_fraction", "test_fraction"}
_FILES = {"classnames_file", "skip_corrupt"}
OPTIONS_BY_KIND: dict[str, set[str]] = {
    "shapes": _COMMON | {"image_size"},
    "digits": _COMMON | _CARVED | {"image_size"},
    "imagefolder": _COMMON | _CARVED | _FILES,
    "parquet": _COMMON | _CARVED | _FILES | {"image_column", "label_column"},
}
NAMED_BY_KIND: dict[str, tuple[str, ...]] = {
    "shapes": NAMED_CLASSES,
    "digits": ("id", "near_ood", "all"),
    "imagefolder": ("near_ood",),
    "parquet": ("near_ood",),
}


def parse_dataset_string(text: str) -> dict[str, Any]:
    """``"builtin:shapes?split=val&classes=a,b"`` -> ``{"uri": "builtin:shapes", "split": "val",
    "classes": "a,b"}``. Everything after the first ``?`` is options; a URI that needs its own query
    string (e.g. ``s3://b/p?region=x``) must use the mapping form."""
    uri, sep, query = text.strip().partition("?")
    fields: dict[str, Any] = {"uri": uri}
    if not sep:
        return fields
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ValueError(
            f"cannot parse options {query!r} of dataset {text!r}: expected key=value pairs joined by &"
        ) from None
    for key, value in pairs:
        if key in fields:
            raise ValueError(f"option {key!r} given twice in dataset {text!r}")
        fields[key] = value
    return fields


class DatasetSpec(BaseModel):
    """One dataset: ``uri`` plus options. Labels index ``classnames`` of the opened dataset, in the
    order of ``classes`` (OoD sets keep their own class indices; callers ignore them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(description=URI_FORMS)
    split: Split | None = Field(
        None,
        description="builtin:shapes: required (splits are seeded apart). Others: carve train/val/test "
        "per class from the seed and fractions; unset = every sample.",
    )
    classes: NamedClasses | tuple[str, ...] | None = Field(
        None,
        description="A list of class names, or: id (the default ID selection of a builtin), near_ood "
        "(classes of this source that are not ID classes), far_ood (shapes: textures without a "
        "shape), all. Unset = every class (shapes: the 100 concepts).",
    )
    per_class: int | None = Field(
        None, ge=1, description="shapes: images per class (default 50); others: at most this many"
    )
    num_samples: int | None = Field(None, ge=1, description="total images (others: at most)")
    seed: int = Field(0, description="seed of generation (shapes) or of split carving and caps")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    image_size: int | None = Field(None, ge=8, le=1024, description="native size of builtins")
    classnames_file: str | None = Field(None, description="one class name per line, label order")
    image_column: str = "image"
    label_column: str = "label"
    skip_corrupt: bool = Field(False, description="skip and count unreadable images")
    name: str | None = Field(None, description="display name in reports")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return parse_dataset_string(data) if isinstance(data, str) else data

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str, info: ValidationInfo) -> str:
        uri = uri.strip()
        scheme, sep, location = uri.partition(":")
        if not sep or scheme not in ("builtin", "imagefolder", "parquet"):
            raise ValueError(f"unknown dataset {uri!r}; expected {URI_FORMS}")
        if scheme == "builtin" and location not in BUILTIN_KINDS:
            raise ValueError(
                f"unknown builtin dataset {location!r}; expected builtin:shapes or builtin:digits"
                " (in the mapping form, options go in their own keys)"
            )
        if not location:
            raise ValueError(f"dataset {uri!r} names no location; expected {scheme}:PATH")
        if scheme != "builtin":
            return f"{scheme}:{resolve_local(location, (info.context or {}).get(BASE_DIR))}"
        return uri

    @field_validator("classnames_file")
    @classmethod
    def _classnames_file_absolute(cls, v: str | None, info: ValidationInfo) -> str | None:
        return v if v is None else resolve_local(v, (info.context or {}).get(BASE_DIR))

    @model_serializer(mode="wrap")
    def _own_options(self, handler):
        """Only this kind's options: another kind's option is refused on the way back in."""
        own = OPTIONS_BY_KIND[self.kind] | {"uri"}
        return {k: v for k, v in handler(self).items() if k in own}

    @field_validator("classes", mode="before")
    @classmethod
    def _split_class_list(cls, value: Any) -> Any:
        """A string that is not a named selection is a comma-separated list of class names."""
        if isinstance(value, str) and value not in NAMED_CLASSES:
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            names = tuple(str(name).strip() for name in value)
            if not names:
                raise ValueError("empty list of class names")
            if "" in names:  # the list may be long: its position, not the list
                raise ValueError(f"class name {names.index('') + 1} of {len(names)} is empty")
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"class {duplicates[0]!r} listed twice")
            return names
        return value

    @model_validator(mode="after")
    def _check_options_fit_kind(self) -> DatasetSpec:
        kind = self.kind
        misplaced = sorted(self.model_fields_set - {"uri"} - OPTIONS_BY_KIND[kind])
        if misplaced:
            raise ValueError(f"option {misplaced[0]!r} does not apply to {self.uri_kind_label}")
        if kind == "shapes" and self.split is None:
            raise ValueError("builtin:shapes needs split: train, val or test")
        if self.per_class is not None and self.num_samples is not None:
            raise ValueError("set per_class or num_samples, not both")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if isinstance(self.classes, str) and self.classes not in NAMED_BY_KIND[kind]:
            allowed = ", ".join(NAMED_BY_KIND[kind])
            raise ValueError(
                f"classes {self.classes!r} is not defined for {self.uri_kind_label} "
                f"(named selections: {allowed}; or a list of class names)"
            )
        if kind in BUILTIN_KINDS and isinstance(self.classes, tuple):
            known = shapes.world_classnames() if kind == "shapes" else digits.CLASSNAMES
            unknown = [name for name in self.classes if name not in known]
            if unknown:
                raise ValueError(
                    f"unknown class {unknown[0]!r} for {self.uri}; expected names like "
                    f"{known[0]!r} ({len(known)} classes)"
                )
        return self

    # --- derived -------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``shapes``, ``digits``, ``imagefolder`` or ``parquet``."""
        scheme, _, location = self.uri.partition(":")
        return location if scheme == "builtin" else scheme

    @property
    def location(self) -> str:
        """The path or URI after ``imagefolder:``/``parquet:`` (empty for builtins)."""
        scheme, _, location = self.uri.partition(":")
        return "" if scheme == "builtin" else location

    @property
    def uri_kind_label(self) -> str:
        return self.uri if self.kind in BUILTIN_KINDS else f"{self.kind}:"

    @property
    def display_name(self) -> str:
        return self.name or str(self)

    def __str__(self) -> str:
        """The string form with the options that were set, e.g. ``builtin:shapes?split=val``."""
        options = []
        for field, info in type(self).model_fields.items():
            if field in ("uri", "name") or field not in self.model_fields_set:
                continue
            value = getattr(self, field)
            if value == info.default:  # written out by a dump, not chosen
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            options.append(f"{field}={value}")
        if not options:
            return self.uri
        return self.uri + ("&" if "?" in self.uri else "?") + "&".join(options)

    def builtin_classes(self, id_classnames: Sequence[str] | None = None) -> tuple[str, ...] | None:
        """The class list of a builtin dataset (``None`` for ImageFolder/Parquet, which need I/O).

        ``near_ood`` is the builtin's classes minus the ID classes: ``id_classnames`` when given
        (the class names of the ID training set), else the builtin's default ID selection.
        """
        if self.kind == "shapes":
            every, default_id = tuple(shapes.world_concepts()), shapes.DEFAULT_ID_CONCEPTS
            named = {"id": default_id, "far_ood": shapes.FAR_OOD_CLASSES, "all": every}
        elif self.kind == "digits":
            every, default_id = digits.CLASSNAMES, digits.DEFAULT_ID_CLASSES
            named = {"id": default_id, "all": every}
        else:
            return None
        if self.classes is None:
            return every
        if isinstance(self.classes, tuple):
            return self.classes
        if self.classes == "near_ood":
            ids = set(default_id if id_classnames is None else id_classnames)
            return tuple(name for name in every if name not in ids)
        return named[self.classes]

    def normalised_uri(self) -> str:
        """The URI with a normalised path, for comparing two specs' sources."""
        if self.kind in BUILTIN_KINDS:
            return self.uri
        location = self.location
        if "://" not in location:
            location = posixpath.normpath(location)
        return f"{self.kind}:{location.rstrip('/')}"


def real_source(spec: DatasetSpec) -> str:
    """The source a spec reads, as it is on disk: a local path resolved through its links
    (``os.path.realpath``), anything else its ``normalised_uri``. Preflight compares sources so."""
    location = spec.location
    if location.startswith("file://"):
        location = location.removeprefix("file://")
    elif spec.kind in BUILTIN_KINDS or "://" in location:
        return spec.normalised_uri()
    return f"{spec.kind}:{os.path.realpath(os.path.expanduser(location))}"


# what tells two specs' sources apart: ``DatasetSpec.normalised_uri`` or ``real_source``
Source = Callable[[DatasetSpec], str]


def set_names(specs: Sequence[DatasetSpec]) -> list[str]:
    """The one rule that names evaluation sets (in reports, metrics and TensorBoard tags): the
    spec's ``name``; else its source's last path segment (``shapes``, ``iNaturalist``), with a
    named class selection appended (``shapes-far_ood``); spaces become ``_``; a derived name that
    repeats gets the set's index appended. Two sets given the same ``name`` are an error."""
    given = [spec.name for spec in specs if spec.name]
    for name in given:
        if given.count(name) > 1:
            raise ValueError(f"OoD set '{name}' given twice (name them with name=...)")
    used: set[str] = set(name.replace(" ", "_") for name in given)
    names = []
    for index, spec in enumerate(specs):
        if spec.name:
            names.append(spec.name.replace(" ", "_"))
            continue
        name = spec.uri.split(":", 1)[-1].split("?", 1)[0].rstrip("/").split("/")[-1]
        if isinstance(spec.classes, str):
            name = f"{name}-{spec.classes}"
        name = name.replace(" ", "_") or f"set{index}"
        while name in used:
            name = f"{name}_{index}"
        used.add(name)
        names.append(name)
    return names


# --- overlap rules -------------------------------------------------------------------------------


def known_classes(spec: DatasetSpec, id_classes: tuple[str, ...] | None):
    """What is known without I/O about a spec's classes: ``("exact", set)``,
    ``("except", set)`` (every class but these) or ``None`` (unknown)."""
    resolved = spec.builtin_classes(id_classes)
    if resolved is not None:
        return ("exact", set(resolved))
    if isinstance(spec.classes, tuple):
        return ("exact", set(spec.classes))
    if spec.classes == "near_ood" and id_classes is not None:
        return ("except", set(id_classes))
    return None


def classes_may_intersect(a, b) -> bool:
    """Whether two class sets from ``known_classes`` can share a class."""
    if a is None or b is None:
        return True
    (kind_a, set_a), (kind_b, set_b) = a, b
    if kind_a == kind_b == "exact":
        return bool(set_a & set_b)
    if kind_a == "exact":
        return bool(set_a - set_b)
    if kind_b == "exact":
        return bool(set_b - set_a)
    return True


def samples_may_overlap(
    a: DatasetSpec,
    b: DatasetSpec,
    classes_a,
    classes_b,
    source: Source = DatasetSpec.normalised_uri,
) -> bool:
    """Whether two specs can hold the same image.

    Different sources (as ``source`` tells them apart) never do. On one source: disjoint class
    sets never do; shapes images differ unless split and seed are equal; carved splits are
    disjoint when they differ and were carved with the same seed and fractions. Anything else may
    overlap.
    """
    if source(a) != source(b):
        return False
    if not classes_may_intersect(classes_a, classes_b):
        return False
    if a.kind == "shapes":
        return a.split == b.split and a.seed == b.seed
    carving = ("seed", "val_fraction", "test_fraction")
    same_carving = all(getattr(a, key) == getattr(b, key) for key in carving)
    different_splits = a.split is not None and b.split is not None and a.split != b.split
    return not (different_splits and same_carving)


class DataConfig(BaseModel):
    """The datasets of a search: ID train/val sets and OoD validation/test sets.

    ``ood_val`` scores trials during the search; ``ood_test`` only reports the chosen
    configuration. ``num_workers`` is the DataLoader worker count per training worker.
    """

    model_config = ConfigDict(extra="forbid")

    id_train: DatasetSpec
    id_val: DatasetSpec
    ood_val: list[DatasetSpec] = Field(default_factory=list)
    ood_test: list[DatasetSpec] = Field(default_factory=list)
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes per training worker; default: one fewer than the "
        "CPUs the worker may use (its CPU affinity and resources.cpus_per_worker), at most 8",
    )

    @model_validator(mode="after")
    def _check_separation(self) -> DataConfig:
        set_names(self.ood_val)
        set_names(self.ood_test)
        self.check_separation(DatasetSpec.normalised_uri)
        return self

    def check_separation(self, source: Source) -> None:
        """The separation rules (module docstring), with ``source`` telling which specs read one
        source: the normalised URI at validation (no I/O), ``real_source`` in preflight. A broken
        rule is a ``ValueError``."""
        id_classes = self.id_classes()
        self._check_id_val(id_classes, source)
        self._check_ood_classes(id_classes, source)
        self._check_ood_test_leak(id_classes, source)

    def id_classes(self) -> tuple[str, ...] | None:
        """The ID class names when known without I/O (builtins, explicit lists)."""
        if isinstance(self.id_train.classes, tuple):
            return self.id_train.classes
        return self.id_train.builtin_classes()

    def _check_id_val(self, id_classes, source: Source) -> None:
        train_classes = known_classes(self.id_train, None)
        val_classes = known_classes(self.id_val, id_classes)
        if samples_may_overlap(self.id_train, self.id_val, train_classes, val_classes, source):
            raise ValueError(
                f"id_val ({self.id_val}) overlaps id_train ({self.id_train}): validation images "
                f"would be training images (a leak); use another split, seed or source"
            )
        val_list = self.id_val.builtin_classes(id_classes)
        if id_classes is not None and val_list is not None and val_list != id_classes:
            raise ValueError(
                f"id_val classes {list(val_list)} differ from id_train classes "
                f"{list(id_classes)}: both must list the same classes in the same order"
            )

    def _check_ood_classes(self, id_classes, source: Source) -> None:
        """On the source of an ID set, an OoD set may only hold classes that are not ID classes."""
        ood = [(f"ood_val[{i}]", s) for i, s in enumerate(self.ood_val)]
        ood += [(f"ood_test[{i}]", s) for i, s in enumerate(self.ood_test)]
        for where, spec in ood:
            for id_where, id_spec in (("id_train", self.id_train), ("id_val", self.id_val)):
                if source(spec) != source(id_spec):
                    continue
                if classes_may_intersect(
                    known_classes(spec, id_classes), known_classes(id_spec, id_classes)
                ):
                    raise ValueError(
                        f"{where} ({spec}) shares classes with {id_where} ({id_spec}): OoD classes "
                        f"must not be ID classes (use classes: near_ood, far_ood or a list)"
                    )

    def _check_ood_test_leak(self, id_classes, source: Source) -> None:
        for j, test in enumerate(self.ood_test):
            for i, val in enumerate(self.ood_val):
                test_classes, val_classes = (
                    known_classes(test, id_classes),
                    known_classes(val, id_classes),
                )
                if samples_may_overlap(test, val, test_classes, val_classes, source):
                    raise ValueError(
                        f"ood_test[{j}] ({test}) overlaps ood_val[{i}] ({val}): scoring the search "
                        f"on OoD test images leaks them into the chosen configuration; use another "
                        f"split, seed or source"
                    )
