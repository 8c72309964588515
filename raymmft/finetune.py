"""FLYP/CMA fine-tuning of both CLIP towers: optimiser, schedule, one step, and checkpoint state.

Pure PyTorch: the Ray layer (``raymmft.worker``) supplies the rank, the DDP wrapping and the
reporting; this module knows nothing of Ray. A step reads (images, labels), turns the labels into
their class prompts, runs both towers (``text_tower.TrainingForward``: the prompts at their real
length) and minimises the CMA loss (docs/method.md, "The CMA loss") on the global batch.
"""

from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

from raymmft.config import TrainConfig
from raymmft.errors import ModelError
from raymmft.losses import CMALoss
from raymmft.model import clamp_logit_scale
from raymmft.text_tower import clip_of


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; as in CLIP/open_clip training, gains, biases and the logit scale get no weight decay."""
    decay, no_decay = [], []
    for name, param in clip_of(model).named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
        (no_decay if exclude or "logit_scale" in name else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        # One fused kernel for all parameters: on CPU ~10x faster than the per-tensor loop for
        # the tiny models (the 49k-token embedding dominates their parameter count).
        fused=True,
    )


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine decay to 0 (or constant) over the remaining steps."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps=total_steps, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule
        ),
    )


def steps_per_epoch(num_batches: int, cfg: TrainConfig) -> int:
    return min(num_batches, cfg.max_steps_per_epoch or num_batches)


class NonFiniteLossError(FloatingPointError):
    """The loss is NaN or infinite: deterministic for a configuration (an lr too high, ...), so
    a trial that raises it is not restarted."""


@dataclass
class StepResult:
    loss: float
    contrastive: float
    regularizer: float


class FineTuner:
    """Owns the model, optimiser, schedule and scaler of one run, and takes steps."""

    def __init__(
        self,
        model: torch.nn.Module,
        class_tokens: torch.Tensor,
        cfg: TrainConfig,
        *,
        total_steps: int,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.model = model
        self.cfg = cfg
        self.device = device
        self.class_tokens = class_tokens.to(device)
        self.autocast_dtype = autocast_dtype
        self.loss_fn = CMALoss(cfg.lam, world_size=world_size)
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = make_lr_schedule(self.optimizer, cfg, total_steps)
        # A grad scaler only matters for fp16; for fp32/bf16 it is a disabled pass-through.
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self.epoch = 0

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One optimiser step on this worker's share of the global batch."""
        self.model.train()
        images = images.to(self.device, non_blocking=True)
        texts = self.class_tokens[labels.to(self.device)]
        with self._autocast():
            image_features, text_features, logit_scale = self.model(images, texts)
        out = self.loss_fn(image_features, text_features, logit_scale)
        if not torch.isfinite(out.loss):
            raise NonFiniteLossError(
                f"non-finite loss {out.loss.item()} at step {self.step} "
                f"(contrastive {out.contrastive.item():.4g}, regularizer {out.regularizer.item():.4g})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        clamp_logit_scale(clip_of(self.model))
        self.step += 1
        return StepResult(out.loss.item(), out.contrastive.item(), out.regularizer.item())

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def logit_scale(self) -> float:
        return clip_of(self.model).logit_scale.exp().item()

    def state_dict(self, arch: str) -> dict:
        """Everything a resumed run needs, loadable with ``torch.load(weights_only=True)``."""
        return {
            "arch": arch,
            "model": clip_of(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _numpy_state_to_tensors(np.random.get_state()),
                "python": torch.tensor(_python_state_to_list(random.getstate()), dtype=torch.int64),
            },
        }

    def load_state_dict(self, state: dict, *, arch: str) -> None:
        if state.get("arch") != arch:
            raise ModelError(
                f"cannot resume: the checkpoint is for architecture '{state.get('arch')}', "
                f"not '{arch}'"
            )
        clip_of(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_numpy_state_from_tensors(rng["numpy"]))
        random.setstate(_python_state_from_list(rng["python"].tolist()))


# RNG states as tensors so checkpoints load with weights_only=True.
def _numpy_state_to_tensors(state) -> dict:
    name, keys, pos, has_gauss, cached = state
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": torch.tensor(pos),
        "has_gauss": torch.tensor(has_gauss),
        "cached": torch.tensor(cached, dtype=torch.float64),
    }


def _numpy_state_from_tensors(t: dict):
    return (
        "MT19937",
        t["keys"].numpy().astype(np.uint32),
        int(t["pos"]),
        int(t["has_gauss"]),
        float(t["cached"]),
    )


def _python_state_to_list(state) -> list[int]:
    version, internal, _gauss = state  # the cached gauss value is not kept
    return [version, *internal]


def _python_state_from_list(values: list[int]):
    version, *internal = values
    return (version, tuple(internal), None)
