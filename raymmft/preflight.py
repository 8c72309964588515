"""Checks run on the driver before any trial starts, so that bad input fails in seconds with one
clear line instead of inside every trial's workers: every model the search space can produce
(architecture, weights: loaded once, keys, shapes and values checked), every dataset (paths, class
folders, class names, every image's header: each folder walked once, headers read by a bounded
pool of threads with progress), the separation of the datasets with local paths
compared by what they name on disk, the ID class prompts with each model's tokenizer (they fit its
context, no two classes read the same), the global batch against the workers and the ID train set,
and the NegLabel corpus (mining keeps some word)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from pathlib import Path
from typing import Any

from raymmft.config import Config
from raymmft.data import (
    list_datasets,
    open_dataset,
    per_worker_batch,
    require_id_classes,
    require_same_classes,
)
from raymmft.data.imagefolder import ImageFolderListing
from raymmft.data.listing import data_specs
from raymmft.data.spec import real_source
from raymmft.errors import ConfigError, DataError, ModelError
from raymmft.model import check_model_spec, check_weights_file, text_tokenizer
from raymmft.search_space import Distribution
from raymmft.text import check_class_prompts


def check_model(arch: str, pretrained: str | None) -> None:
    """The architecture exists and the weights load into it (a local file is read once)."""
    weights = check_model_spec(arch, pretrained)
    if weights is not None and Path(weights).is_file():
        check_weights_file(arch, weights)


def _models(cfg: Config) -> list[tuple[str, str | None, str | None]]:
    """``(arch, pretrained, searched field)`` of every model a trial can start from."""
    space = cfg.search.distributions
    archs = space["model.arch"].extremes() if "model.arch" in space else [cfg.model.arch]
    weights = (
        space["model.pretrained"].extremes()
        if "model.pretrained" in space
        else [cfg.model.pretrained]
    )
    out = []
    for arch, pretrained in product(archs, weights):
        field = "model.arch" if "model.arch" in space else None
        field = "model.pretrained" if "model.pretrained" in space and field is None else field
        out.append((arch, pretrained, field))
    return out


def _values(cfg: Config, field: str, current: Any) -> list:
    """The values ``field`` can take in a trial, at its extremes: a searched field's extremes,
    a fixed value of ``search.space``, else ``current`` (the config's)."""
    if field not in cfg.search.space:
        return [current]
    spec = cfg.search.space[field]
    dist = Distribution.parse(field, spec)
    return [spec] if dist is None else dist.extremes()


def check_sources(cfg: Config) -> None:
    """The datasets' separation rules again, with local paths compared by what they name on disk
    (a symlink, ``./x`` and ``/abs/x/`` are one folder); validation compared their text."""
    try:
        cfg.data.check_separation(real_source)
    except ValueError as exc:
        raise ConfigError(f"data (local paths compared as they are on disk): {exc}") from None


def check_prompts(cfg: Config, classnames: Sequence[str], where: str) -> None:
    """The ID class prompts, for every architecture a trial can start from, under the training
    template and the evaluation templates: ``raymmft.text.check_class_prompts``, the rule training
    applies when it tokenises them."""
    for arch in dict.fromkeys(_values(cfg, "model.arch", cfg.model.arch)):
        tokenizer = text_tokenizer(arch)
        groups = [[t] for t in _values(cfg, "train.template", cfg.train.template)]
        groups += [list(t) for t in _values(cfg, "eval.templates", cfg.eval.templates)]
        for templates in groups:
            try:
                check_class_prompts(tokenizer, classnames, templates, model=arch)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None


def check_neglabel(cfg: Config, classnames: Sequence[str]) -> None:
    """The NegLabel corpus resolves, and mining keeps some of its words for these ID classes
    (``raymmft.ood.neglabel.mining_candidates``, the rule mining applies) at every searched
    ``keep_fraction``."""
    from raymmft.neglabel_corpus import resolve_corpus
    from raymmft.ood.neglabel import mining_candidates

    settings = cfg.eval.neglabel
    corpus = resolve_corpus(settings)
    for fraction in _values(cfg, "eval.neglabel.keep_fraction", settings.keep_fraction):
        try:
            mining_candidates(
                corpus, classnames, settings.model_copy(update={"keep_fraction": fraction})
            )
        except ValueError as exc:
            raise ConfigError(f"eval.neglabel.corpus {settings.corpus}: {exc}") from None


def preflight(cfg: Config) -> dict[str, ImageFolderListing]:
    """Every check (module docstring); returns the listing of each ImageFolder root the datasets
    read (each walked once), for the search to store (``raymmft.data.listing.write_listings``)."""
    for arch, pretrained, field in _models(cfg):
        try:
            check_model(arch, pretrained)
        except ModelError as exc:
            if field is None:
                raise
            value = arch if field == "model.arch" else pretrained
            raise ConfigError(f"search.space: {field} can be {value!r}: {exc}") from None
    per_worker_batch(cfg.train.batch_size, cfg.resources.num_workers)
    check_sources(cfg)
    listings = list_datasets(data_specs(cfg.data))
    train = open_dataset(cfg.data.id_train, None, check=True, listings=listings)
    require_id_classes(train, f"data.id_train ({cfg.data.id_train})")
    check_prompts(cfg, train.classnames, f"data.id_train ({cfg.data.id_train})")
    if len(train) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size {cfg.train.batch_size} is larger than the ID train set "
            f"({len(train)} images in {cfg.data.id_train}); no full batch can be drawn"
        )
    for where, spec in [
        ("data.id_val", cfg.data.id_val),
        *((f"data.ood_val[{i}]", s) for i, s in enumerate(cfg.data.ood_val)),
        *((f"data.ood_test[{i}]", s) for i, s in enumerate(cfg.data.ood_test)),
    ]:
        dataset = open_dataset(
            spec, None, id_classnames=train.classnames, check=True, listings=listings
        )
        if len(dataset) == 0:
            raise DataError(f"{where} ({spec}) holds no images")
        if where == "data.id_val":
            require_same_classes(dataset, train.classnames, f"{where} ({spec})", "data.id_train")
    if "neglabel" in cfg.eval.scores:
        check_neglabel(cfg, train.classnames)
    return listings
