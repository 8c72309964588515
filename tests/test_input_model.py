"""Bad input for the model: an unknown architecture or pretrained tag, and pretrained weights that
are missing or fail to load, whatever the way (not a state dict, empty, TorchScript, another
architecture, non-finite values). Each through the real CLI, with the exact one-line message and
exit status 2; a search tries the weights before any trial."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from bad_input import DEMO, EVALUATE, _config, _error, _run

from raymmft.cli import main


def test_unknown_architecture(tmp_path, capsys):
    msg = _run(tmp_path, capsys, lambda r: r["model"].update(arch="ViT-Q-99"))
    assert msg.startswith("unknown architecture 'ViT-Q-99' (built-in: ")


def test_missing_pretrained_file(tmp_path, capsys):
    missing = tmp_path / "weights" / "vit.pt"
    msg = _run(tmp_path, capsys, lambda r: r["model"].update(pretrained=str(missing)))
    assert msg == f"pretrained weights file not found: {missing}"


@pytest.mark.parametrize("command", ["search", "train"])
def test_unknown_pretrained_tag(tmp_path, capsys, command):
    raw = {**DEMO, "model": {"arch": "raymmft-tiny", "pretrained": "laion9b"}}
    raw["storage"] = {"path": str(tmp_path / "results")}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main([command, str(path)]) == 2
    assert capsys.readouterr().err.startswith(
        "error: unknown pretrained tag 'laion9b' for raymmft-tiny (known tags: "
    )


def _weights(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


def _tiny_state(**changes):
    from raymmft.model import build_model

    torch.manual_seed(0)
    state = build_model("raymmft-tiny").model.state_dict()
    return {**state, **changes}


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "random.pt",
            os.urandom(512),
            "cannot load pretrained weights {p}: not a PyTorch state dict file (",
        ),
        ("empty.pt", b"", "cannot load pretrained weights {p}: the file is empty"),
        ("dict.pt", {}, "pretrained weights {p} hold no tensors"),
        ("list.pt", [1, 2, 3], "pretrained weights {p} hold a list, not a state dict"),
        (
            "garbage.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage",
            "cannot load pretrained weights {p}: not a safetensors file (",
        ),
    ],
)
def test_weights_that_do_not_load(tmp_path, capsys, name, content, message):
    path = _weights(tmp_path, name, content)
    msg = _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(path)])
    assert msg.startswith(message.format(p=path)), msg


def test_weights_in_a_torchscript_archive(tmp_path, capsys):
    """OpenAI's original checkpoints are TorchScript archives: the error says how to convert one."""
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    assert _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(path)]) == (
        f"cannot load pretrained weights {path}: a TorchScript archive (OpenAI's original "
        "checkpoint format), which open_clip reads only through open_clip.load_openai_model; "
        "save its state dict once and give that file (README, Pretrained weights)"
    )


def test_weights_of_another_architecture(tmp_path, capsys):
    from raymmft.model import build_model

    small = _weights(tmp_path, "small.pt", build_model("raymmft-small").model.state_dict())
    msg = _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(small)])
    assert msg.startswith(f"pretrained weights {small} do not fit raymmft-tiny: ")
    assert "mismatched" in msg and "e.g. '" in msg


def test_weights_that_are_not_finite(tmp_path, capsys):
    nan = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in _tiny_state().items()
    }
    path = _weights(tmp_path, "nan.pt", nan)
    msg = _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(path)])
    assert msg.startswith(f"pretrained weights {path} hold non-finite values (NaN or inf) in ")


def test_search_tries_the_weights_before_any_trial(tmp_path, capsys):
    good = _weights(tmp_path, "good.pt", _tiny_state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    path = _config(tmp_path, model={"pretrained": str(truncated)})
    msg = _error(capsys, ["search", str(path)])
    assert msg.startswith(f"cannot load pretrained weights {truncated}: ")
    assert not (tmp_path / "results" / "sbase").exists()
