"""Choosing the samples of a dataset spec: class selection, split carving, per-class and total caps.

Used by every source with a fixed sample list (digits, ImageFolder, Parquet). All steps are
deterministic functions of the spec's seed and of each sample's *source* class, so

- ``train``/``val``/``test`` are disjoint and together cover the source (carved per class);
- selecting fewer classes never changes which samples of a kept class land in a split;
- ``per_class``/``num_samples`` take a subset of the split, never samples from another split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from raymmft.data.spec import DatasetSpec
from raymmft.errors import DataError


def select_classes(
    spec: DatasetSpec,
    source_classnames: Sequence[str],
    *,
    id_classnames: Sequence[str] | None,
    aliases: Sequence[str] | None = None,
) -> list[int]:
    """Source class indices chosen by ``spec.classes``, in the order the spec gives them.

    ``None`` keeps every class; ``near_ood`` keeps the source classes that are not ID classes;
    builtin named selections (``id``, ``far_ood``, ``all``) were resolved to lists by the spec.
    ``aliases`` are other accepted names per class (ImageFolder folder names, e.g. wnids).
    """
    names = list(source_classnames)
    selection = spec.builtin_classes(id_classnames)
    if selection is None and spec.classes is None:
        return list(range(len(names)))
    if selection is None and spec.classes == "near_ood":
        if id_classnames is None:
            raise DataError(
                f"{spec}: classes 'near_ood' needs the ID class names "
                f"(open it with id_classnames=...)"
            )
        ids = set(id_classnames)
        return [k for k, name in enumerate(names) if name not in ids]
    if selection is None:
        selection = spec.classes
    lookup = {name: k for k, name in enumerate(names)}
    for k, alias in enumerate(aliases or ()):
        lookup.setdefault(alias, k)
    missing = [name for name in selection if name not in lookup]
    if missing:
        known = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise DataError(f"{spec}: unknown class {missing[0]!r} (classes: {known})")
    return [lookup[name] for name in selection]


def carve_split(
    source_labels: np.ndarray,
    split: str | None,
    *,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> np.ndarray:
    """Sorted indices of one split, carved per source class from a seeded permutation.

    Class ``c`` with ``n`` samples: the first ``round(n * test_fraction)`` of its permutation are
    test, the next ``round(n * val_fraction)`` val, the rest train. ``split=None`` keeps everything.
    """
    if split is None:
        return np.arange(len(source_labels))
    kept = []
    for c in np.unique(source_labels):
        members = np.flatnonzero(source_labels == c)
        order = members[np.random.default_rng([seed, 0, int(c)]).permutation(len(members))]
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val)}
        start, stop = bounds.get(split, (n_test + n_val, len(members)))
        kept.append(order[start:stop])
    return np.sort(np.concatenate(kept)) if kept else np.arange(0)


def cap_per_class(source_labels: np.ndarray, indices: np.ndarray, per_class: int, seed: int):
    """At most ``per_class`` of ``indices`` per source class, chosen by a seeded permutation."""
    kept = []
    for c in np.unique(source_labels[indices]):
        members = indices[source_labels[indices] == c]
        order = np.random.default_rng([seed, 1, int(c)]).permutation(len(members))
        kept.append(members[order[:per_class]])
    return np.sort(np.concatenate(kept)) if kept else indices


def cap_total(indices: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """At most ``num_samples`` of ``indices``, a seeded random subset, in source order."""
    if num_samples >= len(indices):
        return indices
    chosen = np.random.default_rng([seed, 2]).choice(len(indices), num_samples, replace=False)
    return indices[np.sort(chosen)]


def select_samples(
    spec: DatasetSpec,
    source_labels: np.ndarray,
    source_classnames: Sequence[str],
    *,
    id_classnames: Sequence[str] | None,
    aliases: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(indices, labels, classnames)``: the chosen source samples, their labels as indices into
    the chosen class list, and that list."""
    class_ids = select_classes(
        spec, source_classnames, id_classnames=id_classnames, aliases=aliases
    )
    source_labels = np.asarray(source_labels, dtype=np.int64)
    indices = np.flatnonzero(np.isin(source_labels, class_ids))
    carved = carve_split(
        source_labels[indices],
        spec.split,
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
    )
    indices = indices[carved]
    if spec.per_class is not None:
        indices = cap_per_class(source_labels, indices, spec.per_class, spec.seed)
    if spec.num_samples is not None:
        indices = cap_total(indices, spec.num_samples, spec.seed)
    if len(indices) == 0:
        raise DataError(f"{spec}: the selection holds no samples")
    remap = np.full(max(len(source_classnames), 1), -1, dtype=np.int64)
    remap[class_ids] = np.arange(len(class_ids))
    classnames = [source_classnames[k] for k in class_ids]
    return indices, remap[source_labels[indices]], classnames
