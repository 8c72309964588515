"""The method works end to end on the built-in world: a tiny random-init CLIP fine-tuned with the
CMA loss for a few hundred steps through the worker loop learns the 12 ID concepts."""

import pytest

from raymmft.config import validate_config
from raymmft.loop import WorkerContext, run_training

RAW = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.07},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 40},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 10},
        "ood_val": [
            {"uri": "builtin:shapes", "split": "val", "classes": "far_ood", "per_class": 20}
        ],
    },
    # 480 images / 32 = 15 steps per epoch; 8 epochs = 120 steps; evaluate once at the end.
    "train": {"epochs": 8, "batch_size": 32, "lr": 2e-3, "lam": 0.1, "warmup_steps": 10},
    "eval": {"scores": ["mcm"], "ood_score": "mcm", "every_n_epochs": 8},
}


@pytest.mark.slow
def test_cma_fine_tuning_learns_the_id_concepts():
    reports = []
    run_training(
        validate_config(RAW), WorkerContext(report=lambda metrics, state: reports.append(metrics))
    )
    print("id_acc", reports[0]["id_acc"], "ood_auroc", reports[0]["ood_auroc"])
    assert len(reports) == 1 and reports[0]["step"] == 120
    chance = 1 / 12
    assert reports[0]["id_acc"] >= 0.6, reports[0]["id_acc"]
    assert reports[0]["id_acc"] > 5 * chance
