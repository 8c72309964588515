"""The checkpoint format: two files per checkpoint directory, written atomically, loaded with
``torch.load(weights_only=True)``: ``model.pt`` (``arch`` and the ``model`` weights: what an
evaluation reads) and ``train_state.pt`` (the rest of the training state: ``optimizer``,
``scheduler``, ``scaler``, ``epoch``, ``step``, ``rng`` and the ``reports`` so far: what a resumed
run reads too). The AdamW state is twice the weights, so an evaluation reads a third of the
checkpoint. A directory with the older single ``state.pt`` still loads.

A training state (``FineTuner.state_dict``) holds only tensors, numbers, strings and containers
of them, so loading never runs pickled code. Checkpoint directories live on any storage
(``raymmft.storage``): Ray Train uploads them, and everything that reads one back (resume, the best
trial's test evaluation, ``raymmft evaluate --checkpoint``) goes through this module, with or
without Ray.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch

from raymmft.errors import ModelError, StorageError, first_line
from raymmft.storage import Location

CHECKPOINT_FILE = "state.pt"  # the single file of older checkpoints
MODEL_FILE = "model.pt"
TRAIN_STATE_FILE = "train_state.pt"
MODEL_KEYS = ("arch", "model")


def save_state(state: dict, directory: str | os.PathLike) -> Path:
    """Write ``state`` into the local ``directory`` as ``model.pt`` and ``train_state.pt``, each so
    that a crash mid-write never leaves a file that loads as valid (a temporary file renamed into
    place); returns the directory."""
    directory = Path(directory)
    model = {k: state[k] for k in MODEL_KEYS if k in state}
    rest = {k: v for k, v in state.items() if k not in MODEL_KEYS}
    for name, part in ((MODEL_FILE, model), (TRAIN_STATE_FILE, rest)):
        tmp = directory / f".{name}.tmp"
        torch.save(part, tmp)
        os.replace(tmp, directory / name)
    return directory


def state_file(checkpoint: str | Location) -> Location:
    """The file of a checkpoint's weights: ``model.pt`` of a checkpoint directory (``state.pt``
    of an older one); a location that is not a directory is kept."""
    location = Location.parse(checkpoint)
    if not location.is_dir():
        return location
    model = location.join(MODEL_FILE)
    return model if model.is_file() else location.join(CHECKPOINT_FILE)


def read_torch_file(location: str | Location, what: str = "checkpoint") -> object:
    """``torch.load(weights_only=True)`` of a file on any storage; a missing, unreadable or unsafe
    file is a ``ModelError`` naming it. A local file is memory-mapped: its tensors are the page
    cache's pages until copied into a model (``load_state_dict``), so every worker of a group
    reading the same checkpoint holds no private copy of it, and none is read twice (bytes, then
    tensors). A file written in torch's legacy (pre-zip) format cannot be mapped and is read
    whole."""
    location = Location.parse(location)
    if not location.is_file():
        raise ModelError(f"{what} file not found: {location}")
    try:
        if location.is_local and zipfile.is_zipfile(location.local_path):
            return torch.load(location.local_path, map_location="cpu", weights_only=True, mmap=True)
        data = location.read_bytes()
        if not data:  # torch would say only "EOFError"
            raise ModelError(f"cannot read {what} {location}: the file is empty")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except ModelError:
        raise
    except StorageError as exc:
        raise ModelError(str(exc)) from None
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise ModelError(f"cannot read {what} {location}: {first_line(exc)}") from None


def load_state(checkpoint: str | Location) -> dict:
    """The whole training state in a checkpoint directory (or an older one's ``state.pt``), on
    any storage."""
    location = state_file(checkpoint)
    state = read_torch_file(location)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ModelError(f"checkpoint {location} holds no model state dict")
    if location.name == MODEL_FILE:
        rest = read_torch_file(location.parent.join(TRAIN_STATE_FILE))
        if not isinstance(rest, dict):
            raise ModelError(f"checkpoint {location.parent} holds no training state")
        state = {**rest, **state}
    return state


def load_weights(
    model: torch.nn.Module,
    checkpoint: str | Location,
    *,
    arch: str,
    interpolate: float | None = None,
) -> None:
    """Load a raymmft checkpoint's model weights (a checkpoint directory, its ``state.pt``, or a
    bare state dict file, on any storage) into ``model``; a checkpoint of another architecture or
    one that does not fit ``model`` is a clear error. With ``interpolate`` (alpha), ``model``
    holds the starting weights and gets ``(1 - alpha) * start + alpha * checkpoint`` (WiSE-FT,
    ``raymmft.interpolation``)."""
    location = state_file(checkpoint)
    payload = read_torch_file(location)
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"checkpoint {location} holds no model state dict")
    saved_arch = payload.get("arch")
    if saved_arch is not None and saved_arch != arch:
        raise ModelError(f"checkpoint {location} is for architecture '{saved_arch}', not '{arch}'")
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        first = (bad or missing)[0]
        raise ModelError(
            f"checkpoint {location} does not fit architecture '{arch}' "
            f"({len(bad)} mismatched and {len(missing)} missing tensors, e.g. '{first}')"
        )
    if interpolate is not None:
        from raymmft.interpolation import interpolate_state

        state = interpolate_state(own, state, interpolate)
    model.load_state_dict(state)
