"""Issue 26 item 4: a trial opens its ImageFolders from the search's stored listings, at its
start and at every restart (resumed from a checkpoint), without walking a folder: the walks are
counted (``os.scandir``) through ``run_training`` itself."""

import copy
import os

import pytest
from PIL import Image

from raymmft.config import validate_config
from raymmft.data import shapes
from raymmft.data.listing import data_specs, write_listings
from raymmft.loop import RunInputs, WorkerContext, run_training

CONCEPTS = shapes.DEFAULT_ID_CONCEPTS[:4]


def _folder(root, concepts, per_class):
    for concept in concepts:
        folder = root / concept.replace(" ", "_")
        folder.mkdir(parents=True)
        for k, image in enumerate(shapes.class_images(concept, "train", 0, per_class)):
            Image.fromarray(image).save(folder / f"{k}.png")


@pytest.fixture
def cfg(tmp_path):
    _folder(tmp_path / "images", CONCEPTS, 12)
    _folder(tmp_path / "ood", shapes.FAR_OOD_CLASSES[:2], 6)
    raw = {
        "model": {"arch": "raymmft-tiny"},
        "data": {
            "id_train": f"imagefolder:{tmp_path / 'images'}?split=train",
            "id_val": f"imagefolder:{tmp_path / 'images'}?split=val",
            "ood_val": [f"imagefolder:{tmp_path / 'ood'}"],
            "num_workers": 0,
        },
        "train": {"epochs": 2, "batch_size": 8},
        "eval": {"scores": ["mcm"], "ood_score": "mcm"},
        "search": {"space": {"train.lam": {"uniform": [0.0, 1.0]}}},
        "storage": {"path": str(tmp_path / "results")},
    }
    return validate_config(raw, "test")


def test_a_trial_and_its_restart_open_their_folders_from_the_listings_without_a_walk(
    cfg, tmp_path, monkeypatch
):
    listings = write_listings(data_specs(cfg.data), str(tmp_path / "listings"))
    assert len(listings) == 2  # the two roots; train and val of one folder share one
    walks = []
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda *a, **k: walks.append(a) or real(*a, **k))
    reports = []
    # a checkpoint is written at once (here: copied, the live tensors train on)
    worker = WorkerContext(report=lambda m, state: reports.append((m, copy.deepcopy(state))))
    run_training(cfg, worker, RunInputs(listings=listings))
    assert walks == []
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    # a restart from the first epoch's checkpoint: no walk either, and the same second epoch
    again = []
    restarted = WorkerContext(report=lambda metrics, state: again.append((metrics, state)))
    run_training(
        cfg,
        restarted,
        RunInputs(resume_state=reports[0][1], reported_epoch=1, listings=listings),
    )
    assert walks == []
    assert [m["epoch"] for m, _ in again] == [2]
    assert again[0][0]["train_loss"] == pytest.approx(reports[1][0]["train_loss"], rel=1e-6)
    # without listings, the same run walks the folders
    run_training(cfg, WorkerContext(), RunInputs())
    assert walks
