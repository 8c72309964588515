"""Text at its real length: the same features and the same gradients as ``model.encode_text`` at
the full context, for the real ViT-B-16 architecture (random init) and the built-in ones; a tower
where cutting the context is not exact falls back to ``encode_text``."""

from __future__ import annotations

import pytest
import torch

from raymmft.model import build_model
from raymmft.ood.embed import TextEncoder
from raymmft.text_tower import TrainingForward, encode_text, token_lengths, trims_exactly

PROMPTS = [
    "a photo of a cat.",
    "This is a shiny photo.",
    "a photo of a big wheeled vehicle.",
    "a photo of a x.",
]


# ViT-B-16 (random init): the real architecture, a few seconds a step on the CPU
ARCHS = [pytest.param("ViT-B-16", marks=pytest.mark.slow), "raymmft-tiny", "raymmft-small"]
ARCHS.append("raymmft-world")


@pytest.fixture(scope="module", params=ARCHS)
def bundle(request):
    torch.manual_seed(0)
    return build_model(request.param)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_real_length_features_equal_encode_text(bundle):
    model = bundle.model.eval()
    tokens = bundle.tokenizer(PROMPTS)
    assert trims_exactly(model)
    lengths = token_lengths(model, tokens)
    assert int(lengths.max()) < tokens.shape[1]  # there is padding to cut
    with torch.no_grad():
        full = model.encode_text(tokens)
        cut = encode_text(model, tokens)
        shortest = encode_text(model, tokens[:1])  # its own length: 7 or so tokens
    assert cut.shape == full.shape
    assert _rel(cut, full) < 1e-5
    assert _rel(shortest, full[:1]) < 1e-5


def test_real_length_gradients_equal_encode_text(bundle):
    """A training step's gradients through the cut context equal the full context's."""
    model = bundle.model
    prompts = PROMPTS[1:3]  # two lengths
    tokens = bundle.tokenizer(prompts)
    torch.manual_seed(1)
    images = torch.randn(len(prompts), 3, bundle.image_size, bundle.image_size)
    weights = torch.randn(len(prompts), model.text_projection.shape[-1])

    def grads(forward):
        model.zero_grad(set_to_none=True)
        image, text, scale = forward()
        (scale * (image * text).sum() + (text * weights).sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.train()
    full = grads(lambda: model(images, tokens))  # open_clip's forward: the full 77 tokens
    cut = grads(lambda: TrainingForward(model)(images, tokens))
    assert set(cut) == set(full)
    worst = max(_rel(cut[n], full[n]) for n in full if full[n].abs().max() > 0)
    assert worst < 1e-4, worst
    model.zero_grad(set_to_none=True)


def test_text_encoder_batches_by_length_and_keeps_the_order(bundle):
    encoder = TextEncoder(bundle.model, bundle.tokenizer, batch_size=2)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            bundle.model.eval().encode_text(bundle.tokenizer(PROMPTS)), dim=-1
        )
    assert _rel(encoder(PROMPTS), expected) < 1e-5
    assert encoder([]).shape == (0, expected.shape[1])


def test_a_tower_that_cannot_be_cut_falls_back():
    torch.manual_seed(0)
    model = build_model("raymmft-tiny").model.eval()
    tokens = build_model("raymmft-tiny").tokenizer(PROMPTS)
    model.text_pool_type = "last"  # pooling at the last position reads the padding
    assert not trims_exactly(model)
    calls = []
    original = model.encode_text
    model.encode_text = lambda t, *a, **k: calls.append(t.shape) or original(t, *a, **k)
    try:
        with torch.no_grad():
            out = encode_text(model, tokens)
    finally:
        del model.encode_text
    assert calls == [tokens.shape]  # the whole context, once
    with torch.no_grad():
        assert torch.equal(out, model.encode_text(tokens))
    model.text_pool_type = "argmax"
    model.attn_mask = None  # no causal mask: later tokens reach earlier ones
    assert not trims_exactly(model)


def test_workers_share_the_text_batches_by_tokens_not_by_position():
    from raymmft.ood.embed import share_batches

    # WordNet-like prompts sorted by length, 256 a batch: a contiguous half would give the
    # second rank every long batch
    lengths = [7] * 3 + [9] * 4 + [11] * 4 + [14] * 3 + [19] * 2
    costs = [256 * n for n in lengths] + [40 * 23]  # the last, shorter batch of the longest
    shares = share_batches(costs, 2)
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    assert all(share == sorted(share) for share in shares)
    loads = [sum(costs[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs)
    assert max(loads) / min(loads) < 1.05
    half = len(costs) // 2
    contiguous = [sum(costs[:half]), sum(costs[half:])]
    assert max(contiguous) / min(contiguous) > 1.5
    assert share_batches(costs, 1) == [list(range(len(costs)))]
    assert share_batches([5, 5, 5], 4) == [[0], [1], [2], []]
    assert share_batches([], 3) == [[], [], []]


def test_a_small_set_of_prompts_is_cut_into_eight_batches_for_any_number_of_workers():
    torch.manual_seed(0)
    bundle = build_model("raymmft-tiny")
    sizes = []
    original = bundle.model.encode_text
    bundle.model.encode_text = lambda t, *a, **k: sizes.append(len(t)) or original(t, *a, **k)
    encoder = TextEncoder(bundle.model, bundle.tokenizer)
    encoder([f"a photo of a word{i}." for i in range(312)])  # NegLabel's negatives, say
    assert sizes == [39] * 8  # 4 batches a worker on 2 workers, 1 on 8
    sizes.clear()
    encoder([f"a photo of a word{i}." for i in range(3000)])
    assert sizes == [256] * 11 + [184]  # a large set: full batches
    sizes.clear()
    encoder([f"a photo of a word{i}." for i in range(40)])
    assert sizes == [32, 8]  # not below 32 a batch
