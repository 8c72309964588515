"""Weight interpolation toward the starting model (WiSE-FT): the state-dict arithmetic against a
reference, both ends bit for bit, and through the worker loop: alpha = 0 is the zero-shot model's
evaluation, and a checkpoint evaluated at alpha reproduces what the trial reported at alpha."""

import math

import pytest
import torch

from raymmft.config import apply_trial_params, validate_config
from raymmft.interpolation import interpolate_state
from raymmft.loop import WorkerContext, evaluate_checkpoint, evaluator_for, model_of, run_training
from raymmft.objectives import interp_name


def _states():
    g = torch.Generator().manual_seed(0)
    start = {
        "w": torch.randn(4, 3, generator=g),
        "h": torch.randn(5, generator=g).half(),
        "d": torch.randn(2, generator=g, dtype=torch.float64),
        "ids": torch.arange(6),
    }
    trial = {
        "w": torch.randn(4, 3, generator=g),
        "h": torch.randn(5, generator=g).half(),
        "d": torch.randn(2, generator=g, dtype=torch.float64),
        "ids": torch.arange(6) + 1,
    }
    return start, trial


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9])
def test_interpolation_against_a_reference(alpha):
    start, trial = _states()
    out = interpolate_state(start, trial, alpha)
    for key in ("w", "h", "d"):
        reference = (1 - alpha) * start[key].double() + alpha * trial[key].double()
        assert out[key].dtype == trial[key].dtype
        tol = 1e-3 if trial[key].dtype == torch.float16 else 1e-6
        torch.testing.assert_close(out[key].double(), reference, atol=tol, rtol=0)
    assert torch.equal(out["ids"], trial["ids"])  # integer buffers are the trial's


def test_both_ends_are_exact():
    start, trial = _states()
    zero, one = interpolate_state(start, trial, 0.0), interpolate_state(start, trial, 1.0)
    for key in start:
        if start[key].is_floating_point():
            assert torch.equal(zero[key], start[key])
        assert torch.equal(one[key], trial[key])
    # copies, never the inputs themselves
    assert zero["w"].data_ptr() != start["w"].data_ptr()


def test_bad_interpolations_are_refused():
    start, trial = _states()
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        interpolate_state(start, trial, 1.5)
    with pytest.raises(ValueError, match="differ in their entries"):
        interpolate_state({"w": start["w"]}, trial, 0.5)
    with pytest.raises(ValueError, match=r"w: shape \(3,\) at the start, \(4, 3\) in the trial"):
        interpolate_state({**start, "w": torch.zeros(3)}, trial, 0.5)


RAW = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 4},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 2},
        "ood_val": [
            {"uri": "builtin:shapes", "split": "val", "classes": "far_ood", "per_class": 6}
        ],
    },
    "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2, "augment": False},
    "eval": {"scores": ["mcm", "msp", "energy"], "ood_score": "mcm", "interpolation": [0.0, 0.5]},
}


@pytest.fixture(scope="module")
def trained():
    cfg = validate_config(RAW)
    reports = []
    run_training(cfg, WorkerContext(report=lambda metrics, state: reports.append((metrics, state))))
    return cfg, reports


def test_every_report_carries_each_alpha_and_alpha_zero_is_the_start(trained):
    cfg, reports = trained
    assert set(reports[-1][0]) == cfg.reported_metrics() - {"time/startup_s"}
    start = model_of(cfg)
    zero_shot = evaluator_for(cfg, start).evaluate(start.model).flat_metrics()
    for metrics, _ in reports:
        for name, value in zero_shot.items():
            assert metrics[interp_name(name, 0.0)] == pytest.approx(value, abs=1e-6), name
        # the trial moved: its own metrics are not the start's
        assert metrics["train_loss"] > 0 and not math.isnan(metrics[interp_name("id_acc", 0.5)])
    assert reports[-1][0]["time/interp_eval_s"] > 0


def test_a_checkpoint_evaluated_at_alpha_reproduces_the_reported_alpha(trained, tmp_path):
    from raymmft.checkpoint import save_state

    cfg, reports = trained
    metrics, state = reports[-1]
    save_state(state, str(tmp_path))
    on_val = apply_trial_params(cfg, {"model.interpolate": 0.5})
    result = evaluate_checkpoint(on_val, str(tmp_path), on="val").flat_metrics()
    for name in ("id_acc", "ood_auroc", "mcm/ood_fpr95", "msp/ood_auroc", "energy/ood_auroc"):
        assert result[name] == pytest.approx(metrics[interp_name(name, 0.5)], abs=1e-6), name
    own = evaluate_checkpoint(cfg, str(tmp_path), on="val").flat_metrics()
    assert own["id_acc"] == pytest.approx(metrics["id_acc"], abs=1e-6)


def test_alphas_in_the_config():
    from raymmft.errors import ConfigError

    raw = {**RAW, "eval": {**RAW["eval"], "interpolation": [0.5, 0.0]}}
    assert validate_config(raw).eval.interpolation == [0.0, 0.5]
    for alphas, message in (
        ([1.0], "each alpha must be in [0, 1) (1 is the trial itself), got 1.0"),
        ([0.5, 0.5], "alpha 0.5 given twice"),
    ):
        raw = {**RAW, "eval": {**RAW["eval"], "interpolation": alphas}}
        with pytest.raises(ConfigError) as err:
            validate_config(raw, "c.yaml")
        assert str(err.value) == f"c.yaml: eval.interpolation: {message}"
