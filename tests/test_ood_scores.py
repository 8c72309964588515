"""OoD scores against direct float64 formulas, NegLabel grouping and batching, and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raymmft.errors import ConfigError
from raymmft.ood.scores import (
    SCORES,
    clip_msp_score,
    energy_score,
    get_score,
    max_logit_score,
    mcm_score,
    msp_score,
    neglabel_score,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ref_neglabel(f, t, n, temp):
    """docs/method.md, "Post-hoc OoD scores" literally, in float64: sum exp(pos) / (sum exp(pos) + sum exp(neg))."""
    f, t, n = _unit(f), _unit(t), _unit(n)
    pos = np.exp(f @ t.T / temp).sum(axis=1)
    neg = np.exp(f @ n.T / temp).sum(axis=1)
    return pos / (pos + neg)


@pytest.fixture
def feats():
    g = torch.Generator().manual_seed(0)
    # unnormalised on purpose: the scores normalise inside
    return (
        torch.randn(37, 16, generator=g) * 3,
        torch.randn(5, 16, generator=g) * 2,
        torch.randn(60, 16, generator=g),
    )


def test_logit_scores_match_formulas():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 9, generator=g) * 4
    z = logits.double().numpy()
    np.testing.assert_allclose(msp_score(logits).numpy(), _softmax(z).max(1), rtol=1e-6)
    np.testing.assert_allclose(max_logit_score(logits).numpy(), z.max(1), rtol=1e-6)
    for temp in (1.0, 0.3, 5.0):
        ref = temp * np.log(np.exp(z / temp).sum(axis=1))
        np.testing.assert_allclose(energy_score(logits, temp).numpy(), ref, rtol=1e-5)
    # ties: a constant row gives MSP 1/C
    assert msp_score(torch.zeros(2, 4)).tolist() == [0.25, 0.25]


def _cosines(f: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    """The explicit cosine matrix ``[N, C]``, element by element in float64."""
    f, t = f.double().numpy(), t.double().numpy()
    return np.array(
        [[a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in t] for a in f], dtype=np.float64
    )


def _np_softmax_max(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


@pytest.mark.parametrize("temp", [0.01, 0.05, 1.0, 3.0])
def test_mcm_matches_formula(feats, temp):
    f, t, _ = feats
    ref = _np_softmax_max(_cosines(f, t) / temp)
    np.testing.assert_allclose(mcm_score(f, t, temp).numpy(), ref, rtol=1e-5, atol=1e-7)
    registry = get_score("mcm")(f, t, mcm_temperature=temp)
    np.testing.assert_allclose(registry.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_mcm_default_is_tau_one_on_random_features():
    g = torch.Generator().manual_seed(7)
    f, t = torch.randn(200, 32, generator=g), torch.randn(10, 32, generator=g)
    ref = _np_softmax_max(_cosines(f, t))
    np.testing.assert_allclose(get_score("mcm")(f, t).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(mcm_score(f, t).numpy(), ref, rtol=1e-6)
    # at tau = 1 on cosines in [-1, 1], MCM stays close to uniform: max <= e^2 / (e^2 + C - 1)
    c = t.shape[0]
    assert (ref > 1 / c).all() and (ref <= np.e**2 / (np.e**2 + c - 1)).all()


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_msp_is_softmax_of_the_models_scaled_logits(feats, scale):
    f, t, _ = feats
    ref = _np_softmax_max(scale * _cosines(f, t))
    np.testing.assert_allclose(clip_msp_score(f, t, scale).numpy(), ref, rtol=1e-5, atol=1e-7)
    registry = get_score("msp")(f, t, logit_scale=scale)
    np.testing.assert_allclose(registry.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_mcm_and_msp_differ_when_their_scales_differ(feats):
    f, t, _ = feats
    mcm = get_score("mcm")(f, t, mcm_temperature=1.0)
    msp = get_score("msp")(f, t, logit_scale=100.0)
    assert (msp - mcm).abs().min() > 1e-3  # every image, not only on average
    # the same scale on both sides is the same number: what differs is the scale alone
    same = get_score("msp")(f, t, logit_scale=1 / 0.5)
    assert torch.allclose(same, get_score("mcm")(f, t, mcm_temperature=0.5), rtol=1e-6)


@pytest.mark.parametrize("temp", [0.01, 0.1])
def test_neglabel_one_group_matches_formula(feats, temp):
    f, t, n = feats
    ref = _ref_neglabel(*(x.double().numpy() for x in feats), temp)
    np.testing.assert_allclose(neglabel_score(f, t, n, temp).numpy(), ref, rtol=1e-5, atol=1e-7)
    # float64 input is computed in float64: tight agreement
    got64 = neglabel_score(f.double(), t.double(), n.double(), temp)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("ngroups,num_neg", [(4, 40), (3, 40), (7, 7)])
def test_neglabel_identical_negatives_equal_formula_with_m_over_g(feats, ngroups, num_neg):
    f, t, _ = feats
    one = torch.randn(1, 16, generator=torch.Generator().manual_seed(3))
    neg = one.repeat(num_neg, 1)
    got = neglabel_score(f, t, neg, 0.01, ngroups=ngroups, seed=5)
    # each group holds M // g copies; the remainder is dropped
    ref_neg = one.repeat(num_neg // ngroups, 1).double().numpy()
    ref = _ref_neglabel(f.double().numpy(), t.double().numpy(), ref_neg, 0.01)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-7)


def test_neglabel_groups_are_seeded_shuffles(feats):
    f, t, n = feats
    ngroups, size = 4, 15  # 60 negatives
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(11))
    groups = n[perm].view(ngroups, size, -1)
    ref = np.mean(
        [
            _ref_neglabel(f.double().numpy(), t.double().numpy(), g.double().numpy(), 0.01)
            for g in groups
        ],
        axis=0,
    )
    got = neglabel_score(f, t, n, 0.01, ngroups=ngroups, seed=11)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-7)
    other_seed = neglabel_score(f, t, n, 0.01, ngroups=ngroups, seed=12)
    assert not torch.allclose(got, other_seed)


@pytest.mark.parametrize("batch_size", [1, 5, 36, 1000])
def test_neglabel_independent_of_batch_size(feats, batch_size):
    f, t, n = feats
    full = neglabel_score(f, t, n, ngroups=3, seed=2, batch_size=10_000)
    assert torch.allclose(neglabel_score(f, t, n, ngroups=3, seed=2, batch_size=batch_size), full)


def test_neglabel_is_stable_at_low_temperature():
    # exp(1/0.001) overflows float64; the log-space form does not
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = neglabel_score(f, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 0.001)
    assert torch.isfinite(got).all()
    assert got[0].item() == pytest.approx(1.0) and got[1].item() == pytest.approx(0.0, abs=1e-12)


def test_registry_uniform_call_matches_functions(feats):
    f, t, n = feats
    temp = 0.02
    logits = (
        torch.nn.functional.normalize(f, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T / temp
    )
    expected = {
        "msp": msp_score(logits * temp * 50.0),  # the model's scale, 50
        "max_logit": max_logit_score(logits),
        "energy": energy_score(logits, 1.0),
        "mcm": mcm_score(f, t, 0.7),
        "neglabel": neglabel_score(f, t, n, temp),
    }
    assert sorted(SCORES) == sorted(expected)
    own = {"msp": {"logit_scale": 50.0}, "mcm": {"mcm_temperature": 0.7}}
    for name, value in expected.items():
        inputs = {"neg_text_features": n} if name == "neglabel" else {}
        kwargs = own.get(name, {"temperature": temp})
        got = get_score(name)(f, t, **kwargs, **inputs)
        assert torch.allclose(got, value, rtol=1e-5), name
    shared = {"temperature": temp, "mcm_temperature": 0.7, "ngroups": 2, "seed": 1}
    assert torch.allclose(get_score("mcm").call_with(f, t, shared), expected["mcm"])
    with_scale = {**shared, "logit_scale": 50.0}
    assert torch.allclose(get_score("msp").call_with(f, t, with_scale), expected["msp"], rtol=1e-5)
    assert torch.allclose(
        get_score("neglabel").call_with(f, t, shared, {"neg_text_features": n}),
        neglabel_score(f, t, n, temp, ngroups=2, seed=1),
    )


def test_registry_errors(feats):
    f, t, n = feats
    msg = r"^unknown OoD score 'x' \(known: energy, max_logit, mcm, msp, neglabel\)$"
    with pytest.raises(ConfigError, match=msg):
        get_score("x")
    with pytest.raises(ConfigError, match=r"^OoD score 'neglabel' needs negative text features$"):
        get_score("neglabel")(f, t)
    with pytest.raises(
        ConfigError,
        match=r"^unknown parameter 'ngroups' for OoD score 'mcm' \(known: mcm_temperature\)$",
    ):
        get_score("mcm")(f, t, ngroups=2)
    with pytest.raises(
        ConfigError,
        match=r"^unknown parameter 'temperature' for OoD score 'msp' \(known: logit_scale\)$",
    ):
        get_score("msp")(f, t, temperature=0.01, logit_scale=100.0)
    with pytest.raises(
        ConfigError,
        match=r"^OoD score 'msp' needs the model's logit scale \(logit_scale = "
        r"exp\(model.logit_scale\)\)$",
    ):
        get_score("msp").call_with(f, t, {"temperature": 0.01, "mcm_temperature": 1.0})
    assert SCORES["msp"].params == ("logit_scale",) and SCORES["mcm"].params == ("mcm_temperature",)


def test_score_input_errors(feats):
    f, t, n = feats
    with pytest.raises(
        ValueError, match=r"^neglabel needs at least ngroups=61 negative labels, got 60$"
    ):
        neglabel_score(f, t, n, ngroups=61)
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got 0.0$"):
        mcm_score(f, t, 0.0)
    with pytest.raises(ValueError, match=r"^logit_scale must be > 0, got -1.0$"):
        clip_msp_score(f, t, -1.0)
    with pytest.raises(
        ValueError, match=r"^image_features must be 2-D \[N, D\], got shape \(16,\)$"
    ):
        mcm_score(f[0], t)
    with pytest.raises(ValueError, match=r"^ngroups must be a positive integer, got 0$"):
        neglabel_score(f, t, n, ngroups=0)
