"""Checks run on the driver before any trial starts, so that bad input fails in seconds with one
clear line instead of inside every trial's workers: every model the search space can produce
(architecture, weights: loaded once, keys, shapes and values checked), every dataset (paths, class
folders, class names, every image's header), the global batch against the workers and the ID
train set, and the NegLabel corpus."""

from __future__ import annotations

from itertools import product
from pathlib import Path

from raymmft.config import Config
from raymmft.data import (
    open_dataset,
    per_worker_batch,
    require_id_classes,
    require_same_classes,
)
from raymmft.errors import ConfigError, DataError, ModelError
from raymmft.model import check_model_spec, check_weights_file


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


def preflight(cfg: Config) -> None:
    for arch, pretrained, field in _models(cfg):
        try:
            check_model(arch, pretrained)
        except ModelError as exc:
            if field is None:
                raise
            value = arch if field == "model.arch" else pretrained
            raise ConfigError(f"search.space: {field} can be {value!r}: {exc}") from None
    per_worker_batch(cfg.train.batch_size, cfg.resources.num_workers)
    train = open_dataset(cfg.data.id_train, None, check=True)
    require_id_classes(train, f"data.id_train ({cfg.data.id_train})")
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
        dataset = open_dataset(spec, None, id_classnames=train.classnames, check=True)
        if len(dataset) == 0:
            raise DataError(f"{where} ({spec}) holds no images")
        if where == "data.id_val":
            require_same_classes(dataset, train.classnames, f"{where} ({spec})", "data.id_train")
    if "neglabel" in cfg.eval.scores:
        from raymmft.neglabel_corpus import resolve_corpus

        resolve_corpus(cfg.eval.neglabel)
