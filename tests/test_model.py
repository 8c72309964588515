"""The model factory: built-in tiny architectures, temperature, weights and bad inputs."""

import math

import open_clip
import pytest
import torch

from raymmft.checkpoint import load_weights
from raymmft.errors import ModelError
from raymmft.losses import cma_loss
from raymmft.model import BUILTIN_ARCHS, build_model, clamp_logit_scale
from raymmft.text import (
    PAPER_TEMPLATES,
    format_prompts,
    imagenet_classnames,
    tokenize_class_prompts,
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("raymmft-tiny", temperature=0.07)


def test_builtin_archs_registered_with_open_clip():
    assert {"raymmft-tiny", "raymmft-small"} <= set(BUILTIN_ARCHS)
    assert {"raymmft-tiny", "raymmft-small"} <= set(open_clip.list_models())
    cfg = open_clip.get_model_config("raymmft-tiny")
    assert cfg["vision_cfg"]["image_size"] == 32 and cfg["vision_cfg"]["width"] == 64


def test_tiny_forward_backward_and_temperature(tiny):
    model = tiny.model
    assert tiny.image_size == 32
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    images = torch.randn(4, 3, 32, 32)
    tokens = tokenize_class_prompts(tiny.tokenizer, ["cat", "dog", "fish", "bird"])
    assert tokens.shape == (4, 24)
    loss = cma_loss(
        model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp(), 0.1
    )
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["logit_scale"] is not None and torch.isfinite(grads["logit_scale"])
    assert all(g is not None for g in grads.values()), "both towers are trained in full"
    assert torch.isfinite(model.visual.conv1.weight.grad).all()


def test_frozen_temperature_is_a_buffer_and_kept():
    bundle = build_model("raymmft-tiny", temperature=0.02, learn_temperature=False)
    model = bundle.model
    names = dict(model.named_parameters())
    assert "logit_scale" not in names
    assert "logit_scale" in dict(model.named_buffers())
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    images, tokens = torch.randn(3, 3, 32, 32), bundle.tokenizer(["a", "b", "c"])
    cma_loss(
        model.encode_image(images), model.encode_text(tokens), model.logit_scale.exp(), 0.5
    ).backward()
    opt.step()
    clamp_logit_scale(model)
    assert model.logit_scale.item() == pytest.approx(math.log(50.0), rel=1e-6)


def test_clamp_caps_logit_scale_at_100():
    model = build_model("raymmft-tiny", temperature=0.001).model
    clamp_logit_scale(model)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)


def test_weights_round_trip_and_wrong_arch(tmp_path, tiny):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny.model.state_dict(), "arch": "raymmft-tiny"}, path)
    torch.manual_seed(123)
    other = build_model("raymmft-tiny").model
    load_weights(other, path, arch="raymmft-tiny")
    for k, v in tiny.model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    # The same file as an open_clip `pretrained` file.
    bare = tmp_path / "bare.pt"
    torch.save(tiny.model.state_dict(), bare)
    loaded = build_model("raymmft-tiny", pretrained=str(bare)).model
    torch.testing.assert_close(loaded.visual.conv1.weight, tiny.model.visual.conv1.weight)

    small = build_model("raymmft-small").model
    with pytest.raises(
        ModelError, match=r"is for architecture 'raymmft-tiny', not 'raymmft-small'$"
    ):
        load_weights(small, path, arch="raymmft-small")
    torch.save(tiny.model.state_dict(), bare)
    with pytest.raises(
        ModelError, match=r"does not fit architecture 'raymmft-small' \(\d+ mismatched"
    ):
        load_weights(small, bare, arch="raymmft-small")


def test_bad_inputs(tmp_path):
    with pytest.raises(
        ModelError,
        match=r"^unknown architecture 'ViT-Q-99' \(built-in: [a-z, -]*raymmft-tiny[a-z, -]*; or any open_clip",
    ):
        build_model("ViT-Q-99")
    missing = tmp_path / "nope.pt"
    with pytest.raises(ModelError, match=rf"^pretrained weights file not found: {missing}$"):
        build_model("raymmft-tiny", pretrained=str(missing))
    for tau in (0.0, -0.5):
        with pytest.raises(ModelError, match=rf"^temperature must be > 0, got {tau}$"):
            build_model("raymmft-tiny", temperature=tau)
    with pytest.raises(
        ModelError, match=r"^unknown pretrained tag 'laion9b' for raymmft-tiny \(known tags: none\)"
    ):
        build_model("raymmft-tiny", pretrained="laion9b")
    with pytest.raises(ModelError, match=r"^checkpoint file not found: "):
        load_weights(torch.nn.Linear(1, 1), missing, arch="raymmft-tiny")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=rf"^cannot read checkpoint {corrupt}: "):
        load_weights(torch.nn.Linear(1, 1), corrupt, arch="raymmft-tiny")


def test_unreachable_pretrained_tag_says_how_to_supply_weights():
    # HF_HUB_OFFLINE=1 (conftest) makes the hub fail at once on a cache miss: no network.
    with pytest.raises(ModelError) as err:
        build_model("RN50", pretrained="openai")
    msg = str(err.value)
    assert msg.startswith("could not load pretrained weights 'openai' for RN50: ")
    assert "set model.pretrained to the local file path" in msg
    assert "\n" not in msg


def test_prompts():
    assert format_prompts(["cat", "red circle"], "a photo of a {}.") == [
        "a photo of a cat.",
        "a photo of a red circle.",
    ]
    assert PAPER_TEMPLATES[0] == "a photo of a {}."
    names = imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench"
    with pytest.raises(ValueError, match=r"exactly one '\{\}', got 'a photo'"):
        format_prompts(["x"], "a photo")
