"""Checks run on the driver before any trial starts, so that bad input fails in seconds with one
clear line instead of inside every trial's workers: the model spec, every dataset (paths, class
folders, class names, every image's header), the global batch against the workers and the ID
train set, and the NegLabel corpus."""

from __future__ import annotations

from raymmft.config import Config
from raymmft.data import open_dataset, per_worker_batch
from raymmft.errors import ConfigError, DataError
from raymmft.model import check_model_spec


def preflight(cfg: Config) -> None:
    check_model_spec(cfg.model.arch, cfg.model.pretrained)
    per_worker_batch(cfg.train.batch_size, cfg.resources.num_workers)
    train = open_dataset(cfg.data.id_train, None, check=True)
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
    if "neglabel" in cfg.eval.scores:
        from raymmft.corpora import resolve_corpus

        resolve_corpus(cfg.eval.neglabel)
