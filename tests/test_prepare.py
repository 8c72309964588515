"""A search's preparation step: the starting model mines NegLabel's negatives once and is evaluated
zero-shot; the trials load the negatives and mine nothing, whatever their number."""

from __future__ import annotations

import json

import pytest
import torch

from raymmft.config import apply_trial_params, validate_config
from raymmft.loop import RunInputs, WorkerContext, evaluator_for, model_of, run_training
from raymmft.ood import embed, neglabel
from raymmft.ood.neglabel import NegativeLabels
from raymmft.prepare import per_trial_fields, prepare, prepared_files
from raymmft.storage import Location
from raymmft.world.corpus import world_corpus

RAW = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 2},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 2},
        "ood_val": [
            {"uri": "builtin:shapes", "split": "val", "classes": "far_ood", "per_class": 6},
            {"uri": "builtin:shapes", "split": "val", "classes": "near_ood", "per_class": 1},
        ],
    },
    "train": {"epochs": 1, "batch_size": 12, "max_steps_per_epoch": 1, "augment": False},
    "eval": {"scores": ["neglabel", "mcm"], "neglabel": {"corpus": "world", "keep_fraction": 0.2}},
    "search": {"space": {"train.lam": {"uniform": [0, 1]}}},
}


@pytest.fixture()
def counted(monkeypatch):
    """Every mining and every prompt a text encoder encodes."""
    minings, prompts = [], []
    mine, call = neglabel.mine_negative_labels, embed.TextEncoder.__call__

    def counting_mine(*args, **kwargs):
        minings.append(1)
        return mine(*args, **kwargs)

    def counting_call(self, batch, progress=None):
        prompts.extend(batch)
        return call(self, batch, progress)

    monkeypatch.setattr(neglabel, "mine_negative_labels", counting_mine)
    monkeypatch.setattr(embed.TextEncoder, "__call__", counting_call)
    return minings, prompts


@pytest.mark.parametrize("trials", [1, 3])
def test_a_search_mines_once_for_any_number_of_trials(tmp_path, counted, trials):
    minings, prompts = counted
    cfg = validate_config({**RAW, "storage": {"path": str(tmp_path), "name": "exp"}})
    exp = cfg.storage.experiment
    assert per_trial_fields(cfg) == []
    files = prepare(cfg, exp)
    assert minings == [1]
    negatives = NegativeLabels.load(files["negatives"])
    for lam in torch.linspace(0, 1, trials).tolist():
        reports = []
        worker = WorkerContext(report=lambda m, s, out=reports: out.append(m))
        trial = apply_trial_params(cfg, {"train.lam": lam})
        run_training(trial, worker, RunInputs(negatives=negatives))
        assert reports[-1]["neglabel/ood_auroc"] >= 0  # the trial scored with NegLabel
    assert minings == [1], "no trial mined"
    # Every candidate word went through the text tower exactly once, when the preparation step
    # mined; the trials encoded the class prompts and the chosen negatives only.
    ids = set(validate_config(RAW).data.id_train.builtin_classes())
    candidates = {f"a photo of a {w}." for w in world_corpus("world").nouns if w not in ids}
    assert len(candidates) == 88
    rejected = candidates - set(negatives.prompts)
    assert len(rejected) == 88 - len(negatives) > 0
    assert {p: prompts.count(p) for p in rejected} == dict.fromkeys(rejected, 1)


def test_the_prepared_files_hold_the_zero_shot_evaluation(tmp_path):
    cfg = validate_config({**RAW, "storage": {"path": str(tmp_path), "name": "exp"}})
    exp = cfg.storage.experiment
    files = prepare(cfg, exp)
    assert {k: v.uri for k, v in prepared_files(exp).items()} == files
    stored = json.loads(Location.parse(files["zero_shot"]).read_text())
    bundle = model_of(cfg)
    again = evaluator_for(cfg, bundle).evaluate(
        bundle.model
    )  # the starting model, as trials see it
    assert stored["metrics"]["id_acc"] == again.id_accuracy
    assert stored["metrics"]["ood_auroc"] == pytest.approx(
        again.mean["neglabel"]["auroc"], abs=1e-9
    )
    assert stored["metrics"]["score"] == pytest.approx(
        again.mean["neglabel"]["auroc"] + 0.5 * again.id_accuracy, abs=1e-9
    )


def test_a_searched_field_that_changes_the_start_makes_each_trial_prepare_itself():
    raw = {
        **RAW,
        "search": {"space": {"model.arch": {"choice": ["raymmft-tiny", "raymmft-small"]}}},
    }
    assert per_trial_fields(validate_config(raw)) == ["model.arch"]
    raw = {**RAW, "search": {"space": {"eval.neglabel.eta": {"uniform": [0.5, 1.0]}}}}
    assert per_trial_fields(validate_config(raw)) == ["eval.neglabel.eta"]


def test_only_rank_0_of_an_evaluation_prints_its_progress(tmp_path):
    """Every worker evaluates at once; one worker's progress lines reach the console."""
    from raymmft.progress import say

    raw = {**RAW, "eval": {"scores": ["mcm"], "ood_score": "mcm"}}
    cfg = validate_config({**raw, "storage": {"path": str(tmp_path), "name": "exp"}})
    bundle = model_of(cfg)
    assert evaluator_for(cfg, bundle).out is say
    assert evaluator_for(cfg, bundle, rank=1, world_size=2).out is None
    assert evaluator_for(cfg, bundle, rank=1, world_size=2, out=print).out is print
