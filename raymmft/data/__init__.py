"""The data layer: dataset specs in the config, datasets that yield ``(image_tensor, label)``, and
per-worker loaders.

``DatasetSpec``/``DataConfig`` need only pydantic (the config layer imports them without torch); the
rest is imported on first use.
"""

from __future__ import annotations

import importlib

from raymmft.data.spec import DataConfig, DatasetSpec

_LAZY = {
    "open_dataset": "raymmft.data.loading",
    "classnames_of": "raymmft.data.loading",
    "list_datasets": "raymmft.data.listing",
    "write_listings": "raymmft.data.listing",
    "build_loader": "raymmft.data.loading",
    "loader_workers": "raymmft.data.loading",
    "per_worker_batch": "raymmft.data.loading",
    "require_id_classes": "raymmft.data.loading",
    "require_same_classes": "raymmft.data.loading",
    "LabeledImageDataset": "raymmft.data.dataset",
}

__all__ = ["DataConfig", "DatasetSpec", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'raymmft.data' has no attribute {name!r}")
