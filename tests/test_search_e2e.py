"""End to end through the CLI and real Ray: a search of 3 trials x 2 Train workers on the shapes
world; every evaluation reports the metrics; Optuna saw every trial; ASHA stops a bad trial."""

import json
from pathlib import Path

import pytest
import yaml

from raymmft.cli import main

pytestmark = pytest.mark.ray

CONFIG = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 10},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 4},
        "ood_val": [
            {"uri": "builtin:shapes", "split": "val", "classes": "near_ood", "per_class": 1,
             "name": "near"},
            {"uri": "builtin:shapes", "split": "val", "classes": "far_ood", "per_class": 40,
             "name": "far"},
        ],
        "ood_test": [
            {"uri": "builtin:shapes", "split": "test", "classes": "far_ood", "per_class": 40,
             "name": "far-test"},
        ],
    },
    "train": {"epochs": 3, "batch_size": 24, "augment": False, "warmup_steps": 2},
    "eval": {"scores": ["neglabel", "mcm"], "neglabel": {"corpus": "world"}},
    "search": {
        # One learning rate learns, the other cannot move the random model: the bad trial falls
        # below the good one's score at ASHA's first rung and is stopped (seed picked so a bad
        # trial follows a good one).
        "space": {"train.lr": {"choice": [3.0e-3, 1.0e-9]}, "train.lam": {"uniform": [0.0, 1.0]}},
        "sampler": "random",
        "scheduler": "asha",
        "asha": {"metric": "score", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 3,
        "seed": 1,
    },
    "resources": {"num_workers": 2, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    cfg_path = root / "e2e.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    import ray

    try:
        code = main(["search", str(cfg_path), "--storage", str(root / "results")])
    finally:
        ray.shutdown()
    return code, root / "results" / "e2e"


def _trials(exp_dir: Path):
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(exp_dir))
    return analysis, analysis.trial_dataframes


def test_search_completes_and_reports_every_eval(search):
    code, exp_dir = search
    assert code == 0
    analysis, frames = _trials(exp_dir)
    assert len(frames) == 3
    for df in frames.values():
        assert len(df) >= 1
        for metric in ("id_acc", "ood_auroc", "ood_fpr95", "modality_gap", "score"):
            assert df[metric].notna().all(), metric
            assert ((df[metric] >= 0) & (df[metric] <= 2)).all()
        assert list(df["epoch"]) == list(range(1, len(df) + 1))
    saved = json.loads((exp_dir / "raymmft_config.json").read_text())
    assert saved["search"]["num_samples"] == 3


def test_two_workers_per_trial(search):
    _, exp_dir = search
    _, frames = _trials(exp_dir)
    for df in frames.values():
        assert (df["world_size"] == 2).all()
    runs = sorted(p for p in (exp_dir / "train_runs").iterdir() if not p.name.startswith("."))
    assert len(runs) == 3
    from raymmft.worker import CHECKPOINT_FILE

    for run in runs:
        ckpts = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
        assert ckpts and all((c / CHECKPOINT_FILE).is_file() for c in ckpts)


def test_asha_stopped_a_trial_and_optuna_saw_all(search):
    _, exp_dir = search
    analysis, frames = _trials(exp_dir)
    lengths = sorted(len(df) for df in frames.values())
    assert lengths[0] < 3 and lengths[-1] == 3, lengths

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(exp_dir))
    study = searcher._ot_study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    finals = sorted(
        (round(df["id_acc"].iloc[-1], 6), round(df["ood_auroc"].iloc[-1], 6))
        for df in frames.values()
    )
    told = sorted((round(t.values[0], 6), round(t.values[1], 6)) for t in complete)
    assert told == finals
