"""TrialWriter: what TensorBoard reads back from the trial's directory equals what was logged."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.plugins.hparams import metadata as hp_metadata

from raymmft.evaluation import EvaluationResult
from raymmft.tensorboard_log import METRIC_TAGS, TrialWriter, hparams_of

HPARAMS = {"train.lam": 0.01, "model.temperature": 0.05, "train.lr": 3e-4, "train.batch_size": 64}
TRAIN = {
    "epoch": 1,
    "step": 5,
    "world_size": 2,
    "train_loss": 1.25,
    "train_contrastive": 2.5,
    "train_regularizer": -125.0,
    "lr": 2.9e-4,
    "logit_scale": 19.5,
    "images_per_s": 140.0,
}
EVAL = {
    "id_acc": 0.625,
    "modality_gap": 0.31,
    "ood_auroc": 0.8,
    "ood_auroc/near": 0.7,
    "ood_auroc/far": 0.9,
    "ood_fpr95": 0.4,
    "ood_fpr95/near": 0.5,
    "ood_fpr95/far": 0.3,
    "ood_aupr_in": 0.66,
    "ood_aupr_out": 0.77,
    "mcm/ood_auroc": 0.6,
    "mcm/ood_auroc/near": 0.55,
    "score": 1.1125,
}
EXPECTED_EVAL_TAGS = {f"eval/{k}" for k in EVAL}
EXPECTED_TRAIN_TAGS = {
    "train/loss",
    "train/contrastive",
    "train/cma_regularizer",
    "train/cma_term",
    "train/lr",
    "train/logit_scale",
    "train/images_per_s",
}


def _evaluation(rng) -> EvaluationResult:
    id_mcm = rng.normal(1.0, 0.2, 300)
    id_mcm[:3] = np.nan  # a non-finite score must not break the histogram
    return EvaluationResult(
        id_accuracy=EVAL["id_acc"],
        modality_gap=EVAL["modality_gap"],
        primary_score="mcm",
        scores=["mcm", "energy"],
        per_set={},
        mean={},
        num_id=300,
        num_classes=4,
        num_ood={"near": 120, "far": 80},
        id_scores={"mcm": id_mcm, "energy": rng.normal(5.0, 1.0, 300)},
        ood_scores={
            "near": {"mcm": rng.normal(0.5, 0.2, 120), "energy": rng.normal(3.0, 1.0, 120)},
            "far": {"mcm": rng.normal(0.0, 0.2, 80), "energy": rng.normal(1.0, 1.0, 80)},
        },
    )


def _read(run_dir) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(
        str(run_dir), size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0}
    )
    acc.Reload()
    return acc


def _scalars(acc, tag) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """A trial that logs two epochs and two evaluations, then closes; its destination."""
    dest = tmp_path_factory.mktemp("exp") / "tensorboard" / "t0001"
    rng = np.random.default_rng(0)
    evaluation = _evaluation(rng)
    writer = TrialWriter(str(dest), HPARAMS, ood_sets=["near", "far"])
    writer.log_train(5, TRAIN)
    writer.log_eval(5, {**TRAIN, **EVAL}, evaluation)
    second = {**TRAIN, "step": 10, "train_loss": 0.75, **EVAL, "id_acc": 0.75, "ood_auroc": 0.85}
    writer.log_train(10, second)
    writer.log_eval(10, second)
    writer.close(second)
    return dest, evaluation, second


def test_scalar_tags_are_exactly_the_train_and_eval_metrics(trial):
    dest, _, _ = trial
    tags = set(_read(dest).Tags()["scalars"])
    assert tags == EXPECTED_TRAIN_TAGS | EXPECTED_EVAL_TAGS


def test_scalar_values_equal_what_was_logged(trial):
    dest, _, second = trial
    acc = _read(dest)
    assert _scalars(acc, "train/loss") == [(5, 1.25), (10, 0.75)]
    assert _scalars(acc, "train/images_per_s") == [(5, 140.0), (10, 140.0)]
    assert _scalars(acc, "eval/id_acc") == [(5, 0.625), (10, 0.75)]
    for key, value in EVAL.items():
        (step5, v5), (step10, v10) = _scalars(acc, f"eval/{key}")
        assert (step5, step10) == (5, 10)
        # TensorBoard stores scalars as float32
        assert v5 == pytest.approx(value, rel=1e-6)
        assert v10 == pytest.approx(second[key], rel=1e-6)
    lr = _scalars(acc, "train/lr")[0][1]
    assert lr == pytest.approx(TRAIN["lr"], rel=1e-6)


def test_cma_term_is_lambda_times_regularizer(trial):
    dest, _, _ = trial
    ((step, value), _) = _scalars(_read(dest), "train/cma_term")
    assert step == 5
    assert value == pytest.approx(HPARAMS["train.lam"] * TRAIN["train_regularizer"], rel=1e-6)


def test_close_does_not_log_the_final_step_twice(trial):
    dest, _, _ = trial
    assert [s for s, _ in _scalars(_read(dest), "eval/ood_auroc")] == [5, 10]


def test_histograms_hold_the_id_and_ood_scores(trial):
    dest, evaluation, _ = trial
    acc = _read(dest)
    expected = {f"hist/{s}/id" for s in ("mcm", "energy")}
    expected |= {f"hist/{s}/{name}" for s in ("mcm", "energy") for name in ("near", "far")}
    assert set(acc.Tags()["histograms"]) == expected
    (event,) = acc.Histograms("hist/mcm/id")  # only the evaluation given raw scores
    values = evaluation.id_scores["mcm"]
    finite = values[np.isfinite(values)]
    assert event.step == 5
    assert event.histogram_value.num == finite.size == 297
    assert event.histogram_value.min == pytest.approx(finite.min())
    assert event.histogram_value.max == pytest.approx(finite.max())
    (far,) = acc.Histograms("hist/energy/far")
    assert far.histogram_value.num == 80
    assert far.histogram_value.sum == pytest.approx(evaluation.ood_scores["far"]["energy"].sum())


def test_hparams_entry_lists_searched_fields_and_metrics(trial):
    dest, _, _ = trial
    content = _read(dest).PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert set(content) == {
        hp_metadata.EXPERIMENT_TAG,
        hp_metadata.SESSION_START_INFO_TAG,
        hp_metadata.SESSION_END_INFO_TAG,
    }
    start = hp_metadata.parse_session_start_info_plugin_data(
        content[hp_metadata.SESSION_START_INFO_TAG]
    )
    assert {k: v.number_value for k, v in start.hparams.items()} == HPARAMS
    experiment = hp_metadata.parse_experiment_plugin_data(content[hp_metadata.EXPERIMENT_TAG])
    assert {h.name for h in experiment.hparam_infos} == set(HPARAMS)
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics == {
        *METRIC_TAGS,
        "eval/ood_auroc/near",
        "eval/ood_fpr95/near",
        "eval/ood_auroc/far",
        "eval/ood_fpr95/far",
    }
    # every HParams metric is a scalar the dashboard can read a final value from
    assert metrics <= set(_read(dest).Tags()["scalars"])


def test_destination_has_the_evaluations_before_close(tmp_path):
    """rank 0 of a trial that ASHA stops is killed: what it evaluated must already be on storage,
    with its HParams entry (no end status yet)."""
    dest = tmp_path / "storage" / "tensorboard" / "t2"
    staging = tmp_path / "staging"
    staging.mkdir()
    writer = TrialWriter(str(dest), {"train.lam": 0.1}, staging_dir=str(staging))
    writer.log_train(3, TRAIN)
    writer.log_eval(3, EVAL)
    acc = _read(dest)
    assert _scalars(acc, "eval/ood_auroc") == [(3, pytest.approx(0.8))]
    assert _scalars(acc, "train/loss") == [(3, 1.25)]
    content = acc.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    assert hp_metadata.SESSION_START_INFO_TAG in content
    assert hp_metadata.SESSION_END_INFO_TAG not in content
    writer.close()
    assert hp_metadata.SESSION_END_INFO_TAG in _read(dest).PluginTagToContent("hparams")
    assert staging.exists()  # a staging dir the caller gave is the caller's to remove


def test_close_logs_final_metrics_of_a_new_step(tmp_path):
    dest = tmp_path / "tb"
    writer = TrialWriter(f"file://{dest}", {"train.lr": 1e-3, "train.template": "a {}"})
    writer.log_eval(4, {"step": 4, **EVAL})
    writer.close({"step": 8, "id_acc": 0.9})
    acc = _read(dest)
    assert _scalars(acc, "eval/id_acc") == [(4, 0.625), (8, pytest.approx(0.9))]
    assert _scalars(acc, "eval/ood_auroc") == [(4, pytest.approx(0.8))]
    start = hp_metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent("hparams")[hp_metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["train.template"].string_value == "a {}"
    assert "train/cma_term" not in acc.Tags()["scalars"]  # no lambda, no CMA term


def test_hparams_dashboard_compares_all_trials(tmp_path):
    """What the HParams dashboard computes (its own ListSessionGroups handler) over
    ``--logdir <experiment>``: one session group per trial, with its hparams and the last value of
    each metric, a trial whose writer was killed before ``close`` included."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer as pem
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    trials = {"t0": (0.01, [(0.5, 0.7), (0.55, 0.75)]), "t1": (0.1, [(0.6, 0.8)])}
    for name, (lam, evals) in trials.items():
        writer = TrialWriter(str(tmp_path / "tensorboard" / name), {"train.lam": lam})
        for step, (acc, auroc) in enumerate(evals, 1):
            writer.log_eval(step, {"id_acc": acc, "ood_auroc": auroc})
        if name == "t0":
            writer.close()  # t1 is left as a killed rank 0 leaves it

    mux = pem.EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(tmp_path))
    ctx = backend_context.Context(
        base_plugin.TBContext(logdir=str(tmp_path), multiplexer=mux, data_provider=provider)
    )
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=10,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS],
    )
    response = list_session_groups.Handler(context.RequestContext(), ctx, "", request).run()
    groups = {g.name: g for g in response.session_groups}
    assert set(groups) == {"tensorboard/t0", "tensorboard/t1"}
    for name, (lam, evals) in trials.items():
        group = groups[f"tensorboard/{name}"]
        assert group.hparams["train.lam"].number_value == lam
        values = {m.name.tag: m.value for m in group.metric_values}
        assert values["eval/id_acc"] == pytest.approx(evals[-1][0])
        assert values["eval/ood_auroc"] == pytest.approx(evals[-1][1])
    assert [s.status for s in groups["tensorboard/t0"].sessions] == [api_pb2.STATUS_SUCCESS]
    assert [s.status for s in groups["tensorboard/t1"].sessions] == [api_pb2.STATUS_UNKNOWN]


def test_hparams_of_picks_searched_and_core_fields():
    config = {
        "model": {"arch": "ViT-B-16", "temperature": 0.01},
        "train": {"lam": 1e-3, "lr": 1e-5, "batch_size": 512, "precision": "bf16"},
        "eval": {"neglabel": {"eta": 0.95}},
    }
    got = hparams_of(config, ["train.batch_size", "eval.neglabel.eta", "train.lam", "no.such"])
    assert got == {
        "train.lam": 1e-3,
        "model.temperature": 0.01,
        "train.lr": 1e-5,
        "train.batch_size": 512,
        "eval.neglabel.eta": 0.95,
    }
    assert list(got)[:3] == ["train.lam", "model.temperature", "train.lr"]


def test_hparams_of_accepts_a_pydantic_config():
    class Train(BaseModel):
        lam: float = 0.0
        lr: float = 1e-3
        augment: bool = True

    class Cfg(BaseModel):
        train: Train = Train()

    assert hparams_of(Cfg(), ["train.augment"]) == {
        "train.lam": 0.0,
        "train.lr": 1e-3,
        "train.augment": True,
    }
