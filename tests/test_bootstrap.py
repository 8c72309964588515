"""Bootstrap intervals: the vectorised resamples against a loop with scikit-learn, coverage on a
problem with a known AUROC, paired differences, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from raymmft.evaluation import evaluate_embeddings
from raymmft.ood.bootstrap import (
    ID_STREAM,
    METRICS,
    RankedScores,
    bootstrap_intervals,
    ood_stream,
    percentile_interval,
    resample_indices,
    resample_metrics,
)
from raymmft.ood.metrics import fpr_at_tpr, ood_metrics


def _evaluation(seed=0, noise=0.8):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(4, 12, generator=g)
    labels = torch.randint(0, 4, (70,), generator=g)
    id_feats = text[labels] + noise * torch.randn(70, 12, generator=g)
    ood = {"a": torch.randn(40, 12, generator=g), "b": torch.randn(23, 12, generator=g) + text[0]}
    return id_feats, labels, text, ood


def _sklearn_metrics(id_s: np.ndarray, ood_s: np.ndarray) -> dict[str, float]:
    """The four metrics of one resample by scikit-learn (and the repo's FPR95), ID positive."""
    y = np.concatenate([np.ones(id_s.size), np.zeros(ood_s.size)])
    s = np.concatenate([id_s, ood_s])
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95": fpr_at_tpr(id_s, ood_s, 0.95),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


def test_resampled_metrics_equal_a_loop_with_sklearn_on_the_same_indices():
    id_feats, labels, text, ood = _evaluation()
    result = evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm", "energy"])
    # ties: energy rounded to a coarse grid, so resamples hold ties within and across the sets
    result.id_scores["energy"] = np.round(result.id_scores["energy"], 0)
    for by_score in result.ood_scores.values():
        by_score["energy"] = np.round(by_score["energy"], 0)
    num, seed = 120, 7
    got = resample_metrics(
        result.id_scores, result.ood_scores, result.id_correct, num_resamples=num, seed=seed
    )
    id_idx = resample_indices(result.num_id, range(num), seed=seed, stream=ID_STREAM)
    loop_acc = np.array([result.id_correct[i].mean() for i in id_idx])
    np.testing.assert_allclose(got.id_accuracy, loop_acc, rtol=0, atol=1e-15)
    for name, by_score in result.ood_scores.items():
        ood_idx = resample_indices(
            result.num_ood[name], range(num), seed=seed, stream=ood_stream(name)
        )
        for score in ("mcm", "energy"):
            loop = [
                _sklearn_metrics(result.id_scores[score][i], by_score[score][j])
                for i, j in zip(id_idx, ood_idx)
            ]
            for m in METRICS:
                expected = np.array([x[m] for x in loop])
                np.testing.assert_allclose(got.per_set[name][score][m], expected, atol=1e-12)
    for m in METRICS:
        mean = (got.per_set["a"]["mcm"][m] + got.per_set["b"]["mcm"][m]) / 2
        np.testing.assert_allclose(got.mean["mcm"][m], mean, atol=1e-15)

    # the intervals are the 2.5 and 97.5 percentiles of those resamples
    ci = bootstrap_intervals(result, num_resamples=num, seed=seed)
    assert ci.id_accuracy == tuple(np.percentile(loop_acc, [2.5, 97.5]))
    assert ci.per_set["b"]["energy"]["fpr95"] == percentile_interval(
        got.per_set["b"]["energy"]["fpr95"]
    )
    assert ci.mean["mcm"]["aupr_out"] == percentile_interval(got.mean["mcm"]["aupr_out"])
    assert ci.num_resamples == num and ci.seed == seed and ci.delta is None


def test_all_ones_counts_give_the_metrics_of_the_whole_sets():
    rng = np.random.default_rng(0)
    id_s, ood_s = np.round(rng.normal(1, 1, 300), 1), np.round(rng.normal(0, 1, 200), 1)
    ranked = RankedScores(id_s, ood_s)
    got = ranked.metrics(np.ones((1, 300), int), np.ones((1, 200), int))
    expected = ood_metrics(id_s, ood_s)
    assert tuple(expected) == tuple(got) == METRICS
    for m in METRICS:
        assert got[m][0] == pytest.approx(expected[m], abs=1e-13)


def test_resamples_depend_only_on_seed_stream_and_row():
    a = resample_indices(50, range(0, 10), seed=3, stream="id")
    b = resample_indices(50, range(4, 6), seed=3, stream="id")
    np.testing.assert_array_equal(a[4:6], b)  # blocks of rows do not change a row
    assert not np.array_equal(a, resample_indices(50, range(10), seed=4, stream="id"))
    assert not np.array_equal(a, resample_indices(50, range(10), seed=3, stream="ood:x"))
    assert a.min() >= 0 and a.max() < 50
    # one more OoD set leaves the others' intervals as they were
    id_feats, labels, text, ood = _evaluation()
    one = evaluate_embeddings(id_feats, labels, text, {"a": ood["a"]}, scores=["mcm"])
    two = evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm"])
    ci_one = bootstrap_intervals(one, num_resamples=100, seed=1)
    ci_two = bootstrap_intervals(two, num_resamples=100, seed=1)
    assert ci_one.per_set["a"] == ci_two.per_set["a"] and ci_one.id_accuracy == ci_two.id_accuracy
    assert bootstrap_intervals(two, num_resamples=100, seed=2).per_set != ci_two.per_set


def test_coverage_on_a_problem_with_known_auroc_and_accuracy():
    # ID ~ N(d, 1), OoD ~ N(0, 1): AUROC = Phi(d / sqrt 2), FPR95 = 1 - Phi(d + Phi^-1(0.05));
    # each ID image right with probability p
    d, p, n_id, n_ood, draws = 1.0, 0.7, 150, 120, 200

    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    true_auroc, true_fpr95 = phi(d / math.sqrt(2)), 1 - phi(d - 1.6448536269514722)
    rng = np.random.default_rng(12345)
    covered = {"auroc": 0, "fpr95": 0, "accuracy": 0}
    for k in range(draws):
        id_s, ood_s = rng.normal(d, 1, n_id), rng.normal(0, 1, n_ood)
        correct = rng.random(n_id) < p
        got = resample_metrics({"s": id_s}, {"x": {"s": ood_s}}, correct, num_resamples=200, seed=k)
        for metric, true in (("auroc", true_auroc), ("fpr95", true_fpr95)):
            low, high = percentile_interval(got.per_set["x"]["s"][metric])
            covered[metric] += low <= true <= high
        low, high = percentile_interval(got.id_accuracy)
        covered["accuracy"] += low <= p <= high
    for name, count in covered.items():
        assert 0.90 <= count / draws <= 0.99, (name, count / draws)


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    id_feats, labels, text, ood = _evaluation()
    result = evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm", "energy"])
    same = evaluate_embeddings(id_feats, labels, text, ood, scores=["energy", "mcm"])
    delta = bootstrap_intervals(result, num_resamples=100, reference=same).delta
    assert delta.id_accuracy.value == 0.0 and delta.id_accuracy.ci95 == (0.0, 0.0)
    for name in ("a", "b"):
        for score in ("mcm", "energy"):
            for m in METRICS:
                e = delta.per_set[name][score][m]
                assert e.value == 0.0 and e.ci95 == (0.0, 0.0)
    assert all(e.ci95 == (0.0, 0.0) for by in delta.mean.values() for e in by.values())


def test_paired_difference_is_taken_on_the_same_resamples():
    id_feats, labels, text, ood = _evaluation(noise=0.8)
    g = torch.Generator().manual_seed(9)
    moved = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in ood.items()}
    other_id = id_feats + 0.3 * torch.randn(id_feats.shape, generator=g)
    model = evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm", "energy"])
    reference = evaluate_embeddings(other_id, labels, text, moved, scores=["mcm"])
    ci = bootstrap_intervals(model, num_resamples=150, seed=4, reference=reference)
    delta = ci.delta
    assert set(delta.mean) == {"mcm"}  # the scores both computed
    a = resample_metrics(
        {"mcm": model.id_scores["mcm"]},
        {n: {"mcm": v["mcm"]} for n, v in model.ood_scores.items()},
        model.id_correct,
        num_resamples=150,
        seed=4,
    )
    b = resample_metrics(
        reference.id_scores, reference.ood_scores, reference.id_correct, num_resamples=150, seed=4
    )
    for m in METRICS:
        e = delta.per_set["b"]["mcm"][m]
        assert e.value == model.per_set["b"]["mcm"][m] - reference.per_set["b"]["mcm"][m]
        assert e.ci95 == percentile_interval(a.per_set["b"]["mcm"][m] - b.per_set["b"]["mcm"][m])
        assert delta.mean["mcm"][m].ci95 == percentile_interval(a.mean["mcm"][m] - b.mean["mcm"][m])
    assert delta.id_accuracy.ci95 == percentile_interval(a.id_accuracy - b.id_accuracy)
    # pairing: the difference varies less than either model's metric alone
    spread = np.std(a.mean["mcm"]["auroc"] - b.mean["mcm"]["auroc"])
    assert spread < np.std(a.mean["mcm"]["auroc"]) + np.std(b.mean["mcm"]["auroc"])


def test_bad_input():
    id_feats, labels, text, ood = _evaluation()
    result = evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm"])
    with pytest.raises(ValueError, match=r"^need at least 100 resamples, got 99$"):
        bootstrap_intervals(result, num_resamples=99)
    with pytest.raises(ValueError, match=r"^need at least 100 resamples, got 1000.0$"):
        bootstrap_intervals(result, num_resamples=1000.0)
    fewer = evaluate_embeddings(id_feats[:-1], labels[:-1], text, ood, scores=["mcm"])
    with pytest.raises(
        ValueError,
        match=r"^the reference has 69 ID images, the model 70: a paired difference needs the "
        r"same images in the same order$",
    ):
        bootstrap_intervals(result, num_resamples=100, reference=fewer)
    other_sets = evaluate_embeddings(id_feats, labels, text, {"a": ood["a"]}, scores=["mcm"])
    with pytest.raises(ValueError, match=r"^the reference's OoD sets \{'a': 40\} are not"):
        bootstrap_intervals(result, num_resamples=100, reference=other_sets)
    energy = evaluate_embeddings(id_feats, labels, text, ood, scores=["energy"])
    with pytest.raises(ValueError, match=r"^the reference computed none of the model's scores"):
        bootstrap_intervals(result, num_resamples=100, reference=energy)
    with pytest.raises(ValueError, match=r"^need at least one score and one OoD set to resample$"):
        resample_metrics(result.id_scores, {}, result.id_correct, num_resamples=100)
    result.id_correct = np.zeros(0, bool)
    with pytest.raises(ValueError, match=r"^the evaluation holds 0 ID correctness values for 70"):
        bootstrap_intervals(result, num_resamples=100)
