"""OoD metrics against scikit-learn on random, tied and constant scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from raymmft.ood.metrics import accuracy, aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics


def _labels(id_s, ood_s):
    return np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))], np.r_[id_s, ood_s]


def _ref_fpr(id_s, ood_s, tpr=0.95):
    y, s = _labels(id_s, ood_s)
    fpr, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.argmax(tpr_curve >= tpr)]


def _ref(id_s, ood_s):
    y, s = _labels(id_s, ood_s)
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95": _ref_fpr(id_s, ood_s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


def _cases():
    rng = np.random.default_rng(0)
    yield "gaussian", rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    # heavy ties: few distinct values shared by both sets
    yield "ties", rng.integers(0, 5, 257).astype(float), rng.integers(0, 4, 101).astype(float)
    yield "constant", np.full(40, 0.3), np.full(25, 0.3)
    yield "separable", rng.uniform(2, 3, 50), rng.uniform(0, 1, 60)
    yield "reversed", rng.uniform(0, 1, 50), rng.uniform(2, 3, 60)
    yield "tiny", np.array([0.5]), np.array([0.5, 0.7])
    yield "tied_at_95", np.r_[np.arange(19.0), [-1.0]], np.arange(-3.0, 17.0, 0.5)


@pytest.mark.parametrize("name,id_s,ood_s", list(_cases()), ids=[c[0] for c in _cases()])
def test_metrics_equal_sklearn(name, id_s, ood_s):
    ours = ood_metrics(torch.tensor(id_s), torch.tensor(ood_s))
    ref = _ref(id_s, ood_s)
    assert set(ours) == set(ref)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert auroc(id_s, ood_s) == pytest.approx(ref["auroc"], abs=1e-12)
    assert aupr_in(list(id_s), list(ood_s)) == pytest.approx(ref["aupr_in"], abs=1e-12)
    assert aupr_out(id_s, ood_s) == pytest.approx(ref["aupr_out"], abs=1e-12)


def test_known_values():
    # perfect separation, complete reversal, all tied
    assert auroc([2, 3], [0, 1]) == 1.0 and fpr_at_tpr([2, 3], [0, 1]) == 0.0
    assert auroc([0, 1], [2, 3]) == 0.0 and fpr_at_tpr([0, 1], [2, 3]) == 1.0
    assert auroc([1, 1], [1, 1, 1]) == 0.5 and fpr_at_tpr([1, 1], [1, 1, 1]) == 1.0
    # AUROC = P(id > ood) + P(id = ood) / 2: pairs (1 vs 0) win, (1 vs 1) half
    assert auroc([1.0], [0.0, 1.0]) == pytest.approx(0.75)


@pytest.mark.parametrize("tpr", [0.5, 0.8, 0.9, 0.99, 1.0])
def test_fpr_at_other_tpr(tpr):
    rng = np.random.default_rng(1)
    id_s, ood_s = rng.normal(0.5, 1, 123), rng.normal(0, 1, 77)
    assert fpr_at_tpr(id_s, ood_s, tpr) == pytest.approx(_ref_fpr(id_s, ood_s, tpr), abs=1e-12)


def test_fpr95_uses_first_threshold_reaching_tpr():
    # ID scores 1..20: TPR 0.95 (19/20) is first reached at threshold 2; OoD samples >= 2 count as
    # false positives there (a tie counts), lower ones do not. The lowest threshold would give FPR 1.
    id_s = np.arange(1.0, 21.0)
    assert fpr_at_tpr(id_s, [0.5, 1.5]) == 0.0
    assert fpr_at_tpr(id_s, [0.5, 2.5]) == 0.5
    assert fpr_at_tpr(id_s, [0.5, 2.0]) == 0.5
    assert fpr_at_tpr(id_s, [3.5, 2.0, 25.0, 0.0]) == 0.75


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"^id_scores is empty: need at least one score$"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match=r"^ood_scores is empty: need at least one score$"):
        ood_metrics(torch.ones(3), torch.empty(0))
    with pytest.raises(ValueError, match=r"^ood_scores contains 2 NaN value\(s\) out of 3$"):
        fpr_at_tpr([1.0], [float("nan"), 0.0, float("nan")])
    with pytest.raises(ValueError, match=r"^id_scores contains 1 NaN value\(s\) out of 2$"):
        aupr_out(torch.tensor([1.0, float("nan")]), [0.0])
    with pytest.raises(ValueError, match=r"^tpr must be in \(0, 1\], got 1.5$"):
        fpr_at_tpr([1.0], [0.0], tpr=1.5)


def test_accuracy_against_direct_count():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=g)
    labels = torch.randint(0, 7, (500,), generator=g)
    expected = sum(int(np.argmax(row) == y) for row, y in zip(logits.numpy(), labels.numpy())) / 500
    assert accuracy(logits, labels) == pytest.approx(expected)
    # ties: argmax takes the first maximum
    assert accuracy(torch.zeros(4, 3), torch.tensor([0, 0, 1, 2])) == 0.5


def test_accuracy_bad_inputs():
    with pytest.raises(ValueError, match=r"^logits is empty: need at least one sample$"):
        accuracy(torch.empty(0, 3), torch.empty(0))
    with pytest.raises(ValueError, match=r"^4 rows of logits but 3 labels$"):
        accuracy(torch.zeros(4, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"^logits must be 2-D \[N, C\], got shape \(4,\)$"):
        accuracy(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"^logits contain NaN$"):
        accuracy(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1))
