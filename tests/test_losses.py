"""The CMA loss against open_clip's ClipLoss and an independent float64 recomputation."""

import math

import pytest
import torch
from open_clip.loss import ClipLoss

from raymmft.losses import CMALoss, cma_loss, cma_loss_parts


def _features(b=12, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)


def _reference(img, txt, scale, lam):
    """docs/method.md, "The CMA loss" written out row by row in float64."""
    img = img.double() / img.double().norm(dim=1, keepdim=True)
    txt = txt.double() / txt.double().norm(dim=1, keepdim=True)
    b = img.shape[0]
    logits = [[scale * float(img[i] @ txt[j]) for j in range(b)] for i in range(b)]

    def lse(row):
        m = max(row)
        return m + math.log(sum(math.exp(x - m) for x in row))

    rows = logits
    cols = [[logits[i][j] for i in range(b)] for j in range(b)]
    ce_img = sum(lse(rows[i]) - rows[i][i] for i in range(b)) / b
    ce_txt = sum(lse(cols[j]) - cols[j][j] for j in range(b)) / b
    r_img = sum(-lse(r) for r in rows) / b
    r_txt = sum(-lse(c) for c in cols) / b
    return (ce_img + lam * r_img) / 2 + (ce_txt + lam * r_txt) / 2


def test_lam_zero_equals_open_clip_clip_loss():
    img, txt = _features()
    scale = torch.tensor(14.3)
    ours = cma_loss(img, txt, scale, lam=0.0)
    theirs = ClipLoss()(
        torch.nn.functional.normalize(img, dim=-1),
        torch.nn.functional.normalize(txt, dim=-1),
        scale,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 1.0])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_lam_positive_equals_float64_reference(lam, scale):
    img, txt = _features(b=9, d=7, seed=int(lam * 1000) + int(scale))
    ours = cma_loss(img, txt, scale, lam)
    assert ours.item() == pytest.approx(_reference(img, txt, scale, lam), rel=1e-5, abs=1e-5)


def test_parts_add_up_and_duplicate_texts_allowed():
    img, txt = _features(b=8)
    txt[4:] = txt[:4]  # two images of the same class carry the same text
    out = cma_loss_parts(img, txt, 20.0, lam=0.3)
    torch.testing.assert_close(out.loss, out.contrastive + 0.3 * out.regularizer)
    assert out.loss.item() == pytest.approx(_reference(img, txt, 20.0, 0.3), rel=1e-5)


def test_gradients_finite_and_regulariser_pulls_modalities_together():
    img, txt = _features(b=6, d=5)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    scale = torch.tensor(50.0, requires_grad=True)
    out = cma_loss_parts(img, txt, scale, lam=1.0)
    out.loss.backward()
    for g in (img.grad, txt.grad, scale.grad):
        assert torch.isfinite(g).all()
    # R = -mean logsumexp falls when every image moves towards every text: its gradient step
    # along -grad increases the mean image-text cosine.
    img2, txt2 = _features(b=6, d=5)
    img2.requires_grad_(True)
    r = cma_loss_parts(img2, txt2, 10.0, lam=1.0).regularizer
    (grad,) = torch.autograd.grad(r, img2)
    before = (
        torch.nn.functional.normalize(img2, dim=-1) @ torch.nn.functional.normalize(txt2, dim=-1).T
    )
    moved = img2 - 0.05 * grad
    after = (
        torch.nn.functional.normalize(moved, dim=-1) @ torch.nn.functional.normalize(txt2, dim=-1).T
    )
    assert after.mean() > before.mean()


def test_module_matches_function_single_process():
    img, txt = _features()
    out = CMALoss(lam=0.01)(img, txt, 30.0)
    torch.testing.assert_close(out.loss, cma_loss(img, txt, 30.0, 0.01))


def test_bad_inputs():
    img, txt = _features()
    with pytest.raises(ValueError, match=r"^lam must be >= 0, got -0.1$"):
        CMALoss(lam=-0.1)
    with pytest.raises(RuntimeError, match=r"^world_size=2 needs an initialised torch.distributed"):
        CMALoss(lam=0.1, world_size=2)
    with pytest.raises(ValueError, match=r"same shape, got \(12, 16\) and \(11, 16\)$"):
        cma_loss(img, txt[:11], 1.0, 0.0)
