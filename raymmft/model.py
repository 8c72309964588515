"""CLIP model factory: an open_clip model, its preprocessing and tokenizer, built from a config.

Weights come from one of three places (``pretrained``):
- ``None``: random init (the built-in tiny architectures need nothing else);
- an open_clip tag such as ``openai`` (downloaded by open_clip into its cache, or read from it offline);
- a local file (``.pt``/``.bin``/``.safetensors``), e.g. weights fetched elsewhere and copied to the cluster.

The built-in architectures ``raymmft-tiny`` and ``raymmft-small`` are registered with open_clip's own
config mechanism, so they are usable wherever an open_clip model name is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import open_clip
import torch

from raymmft.errors import ModelError, first_line

MODEL_CONFIG_DIR = Path(__file__).parent / "assets" / "model_configs"
BUILTIN_ARCHS = tuple(sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json")))
# Pretrained weights shipped inside the package: {(arch, tag): file}. They load offline.
PRETRAINED_DIR = Path(__file__).parent / "assets" / "pretrained"
BUILTIN_PRETRAINED: dict[tuple[str, str], Path] = {
    (p.stem, p.stem): p for p in sorted(PRETRAINED_DIR.glob("*.pt"))
}

Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

# CLIP clamps the learned logit scale at 100 (temperature 0.01); so do we.
MAX_LOGIT_SCALE = math.log(100.0)

open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class ClipBundle:
    """A model with what it needs to see images and read text."""

    arch: str
    model: open_clip.CLIP
    preprocess_train: Callable
    preprocess_eval: Callable
    tokenizer: Callable
    image_size: int
    autocast_dtype: torch.dtype | None


def _image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _pretrained_help(arch: str) -> str:
    return (
        f"download the weights on a machine with internet (e.g. open_clip.create_model('{arch}', "
        f"pretrained=TAG) then save model.state_dict()) and set model.pretrained to the local file path"
    )


def _resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    """Check a pretrained value before open_clip sees it; return what open_clip should load."""
    if pretrained is None or pretrained in ("", "none"):
        return None
    if (arch, pretrained) in BUILTIN_PRETRAINED:
        return str(BUILTIN_PRETRAINED[(arch, pretrained)])
    looks_like_path = os.sep in pretrained or Path(pretrained).suffix in (
        ".pt",
        ".pth",
        ".bin",
        ".safetensors",
        ".npz",
    )
    if Path(pretrained).is_file():
        return pretrained
    if looks_like_path:
        raise ModelError(f"pretrained weights file not found: {pretrained}")
    tags = open_clip.list_pretrained_tags_by_model(arch) + [
        tag for (a, tag) in BUILTIN_PRETRAINED if a == arch
    ]
    if pretrained not in tags:
        known = ", ".join(tags) if tags else "none"
        raise ModelError(
            f"unknown pretrained tag '{pretrained}' for {arch} (known tags: {known}); "
            f"for local weights give a file path"
        )
    return pretrained


def set_temperature(model: torch.nn.Module, temperature: float, *, learnable: bool) -> None:
    """Set ``logit_scale = log(1 / temperature)``; a frozen scale becomes a buffer.

    A frozen scale must not stay an ``nn.Parameter`` with ``requires_grad=False`` alone: DDP would then
    see a parameter that never gets a gradient. As a buffer it is saved with the weights and
    broadcast by DDP, but never optimised.
    """
    if not temperature > 0:
        raise ModelError(f"temperature must be > 0, got {temperature}")
    value = torch.full_like(model.logit_scale.detach(), math.log(1.0 / temperature))
    del model.logit_scale
    if learnable:
        model.logit_scale = torch.nn.Parameter(value)
    else:
        model.register_buffer("logit_scale", value)


def check_model_spec(arch: str, pretrained: str | None) -> str | None:
    """Check an architecture name and a pretrained value without building anything; return what
    open_clip should load (None, a tag, or a file path)."""
    if arch not in open_clip.list_models():
        raise ModelError(
            f"unknown architecture '{arch}' (built-in: {', '.join(BUILTIN_ARCHS)}; "
            f"or any open_clip name, see open_clip.list_models())"
        )
    return _resolve_pretrained(arch, pretrained)


def build_model(
    arch: str,
    pretrained: str | None = None,
    *,
    temperature: float | None = None,
    learn_temperature: bool = True,
    precision: Precision = "fp32",
    device: str | torch.device = "cpu",
) -> ClipBundle:
    """Build an open_clip model with its train/eval transforms and tokenizer.

    ``temperature`` (tau) sets the initial ``logit_scale = log(1/tau)``; ``None`` keeps the
    architecture's or checkpoint's value. ``precision`` selects the autocast dtype used for training
    and evaluation; weights stay in float32 so that mixed-precision updates are exact.
    """
    weights = check_model_spec(arch, pretrained)
    if precision not in AUTOCAST_DTYPES:
        raise ModelError(f"unknown precision '{precision}' (known: fp32, bf16, fp16)")
    if temperature is not None and not temperature > 0:
        raise ModelError(f"temperature must be > 0, got {temperature}")
    try:  # no weights is random init, as asked: open_clip's warning about it is not news
        with weights_follow() if weights is None else contextlib.nullcontext():
            model, preprocess_train, preprocess_eval = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device=device, pretrained_text=False
            )
    except Exception as exc:  # open_clip raises anything from a bad file: say which, in one line
        if weights is None:
            raise
        if Path(weights).is_file():
            check_weights_file(arch, weights)  # the precise reason, when there is one
        reason = first_line(exc)
        raise ModelError(
            f"could not load pretrained weights '{weights}' for {arch}: {reason}; {_pretrained_help(arch)}"
        ) from exc
    if temperature is not None:
        set_temperature(model, temperature, learnable=learn_temperature)
    elif not learn_temperature:
        set_temperature(model, 1.0 / model.logit_scale.exp().item(), learnable=False)
    return ClipBundle(
        arch=arch,
        model=model,
        preprocess_train=preprocess_train,
        preprocess_eval=preprocess_eval,
        tokenizer=text_tokenizer(arch),
        image_size=_image_size(model),
        autocast_dtype=AUTOCAST_DTYPES[precision],
    )


def text_tokenizer(arch: str) -> Callable:
    """The tokenizer of ``arch`` with its context length, as ``build_model`` gives it; no weights
    are read (preflight checks class prompts with it)."""
    try:
        return open_clip.get_tokenizer(arch)
    except Exception as exc:  # a hub tokenizer that cannot be fetched, say
        raise ModelError(f"cannot load the tokenizer of {arch}: {first_line(exc)}") from exc


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def weights_follow() -> Iterator[None]:
    """Build a model without open_clip's warning that it is "initialized randomly": with no
    weights asked for, that is what was asked; with weights loaded next (a checkpoint, a file being
    checked), it is not true."""
    drop = _DropRandomInitWarning()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep the learned logit scale in [0, log 100], as CLIP training does after each step."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a state dict, ``{"state_dict": ...}``, or safetensors),
    ``module.`` prefixes removed, loaded without running pickled code; a file that is none of
    these is a ``ModelError`` that says why."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ModelError(f"cannot load pretrained weights {path}: the file is empty")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            payload = load_file(str(path))
        except Exception as exc:
            raise ModelError(
                f"cannot load pretrained weights {path}: not a safetensors file "
                f"({first_line(exc, 160)})"
            ) from None
    else:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            if "TorchScript" in str(exc):
                raise ModelError(
                    f"cannot load pretrained weights {path}: a TorchScript archive (OpenAI's "
                    "original checkpoint format), which open_clip reads only through "
                    "open_clip.load_openai_model; save its state dict once and give that file "
                    "(README, Pretrained weights)"
                ) from None
            raise ModelError(
                f"cannot load pretrained weights {path}: not a PyTorch state dict file "
                f"({first_line(exc, 160)})"
            ) from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict):
        raise ModelError(
            f"pretrained weights {path} hold a {type(payload).__name__}, not a state dict"
        )
    tensors = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"pretrained weights {path} hold no tensors")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def check_weights_file(arch: str, path: str | os.PathLike) -> None:
    """A local weights file loads into ``arch``: it reads (``read_weights_file``), its values are
    finite, and its tensors fit the architecture's (as is, or after open_clip's own conversions
    of other checkpoint layouts). Raises ``ModelError`` naming the file and what is wrong."""
    path = Path(path)
    state = read_weights_file(path)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(
            f"pretrained weights {path} hold non-finite values (NaN or inf) in {len(bad)} "
            f"tensor(s), e.g. '{bad[0]}'"
        )
    with weights_follow():
        model = open_clip.create_model(arch, pretrained=None)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    if not (missing or unexpected or mismatched):
        return
    try:  # another layout open_clip converts (OpenAI, timm, resized position embeddings...)
        open_clip.load_checkpoint(model, str(path), strict=True)
        return
    except Exception:
        pass
    if mismatched:
        k = mismatched[0]
        example = f"'{k}': {list(state[k].shape)} in the file, {list(own[k].shape)} in the model"
    else:
        k = (missing or unexpected)[0]
        example = f"'{k}' missing" if missing else f"'{k}' is not in the model"
    raise ModelError(
        f"pretrained weights {path} do not fit {arch}: {len(missing)} missing, "
        f"{len(mismatched)} mismatched and {len(unexpected)} unexpected tensors (e.g. {example})"
    )
