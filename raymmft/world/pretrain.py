"""Pretraining the built-in world's own CLIP (``raymmft-world``), and the record beside its weights.

Real use starts from a CLIP whose text encoder knows far more concepts than the ID classes; that
knowledge is what NegLabel and CMA exploit. ``pretrain_world`` gives the shapes world the same
start:

- every step is one contrastive batch holding one image of *each* of the 100 concepts, each with a
  caption from a random template (``CAPTION_TEMPLATES``), so a batch has no false negatives; far-OoD
  textures are never shown;
- the logit scale is fixed at 100 (CLIP's clamp). With a fixed high scale the loss is satisfied
  long before the two modalities meet, which leaves a CLIP-like modality gap; a learned scale
  settles much lower (about 19 in the issue's prototype) and closes most of the gap;
- images come from their own random stream (split ``train``, data seed
  ``PRETRAIN_DATA_SEED + seed``), disjoint from the images any config with a small seed selects:
  fine-tuning and evaluation images are new to the model;
- AdamW with linear warm-up and cosine decay; embeddings get no weight decay, so the token
  embeddings of words the world never uses (all of WordNet but a few words) stay at their random
  initialisation: to the model they are noise;
- deterministic for a seed: the initialisation, the image pool and the batch order are functions of
  the seed, and ``torch.use_deterministic_algorithms`` is on while pretraining.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from raymmft.data import shapes
from raymmft.world import WORLD_ARCH
from raymmft.world.metrics import METRIC_TOLERANCE, WorldEvalSets

# Pretraining images are drawn from split "train" with this data seed (+ the pretraining seed): a
# stream no config with a small data seed ever selects.
PRETRAIN_DATA_SEED = 1_000_000


# --- pretraining ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the pretrained weights (besides the code and the machine)."""

    seed: int = 0
    steps: int = 400
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    logit_scale: float = 100.0
    images_per_concept: int = 64
    templates: tuple[str, ...] = shapes.CAPTION_TEMPLATES
    arch: str = WORLD_ARCH

    def __post_init__(self) -> None:
        if self.steps < 1 or self.images_per_concept < 1:
            raise ValueError("steps and images_per_concept must be >= 1")
        if not self.lr > 0 or not self.logit_scale > 0:
            raise ValueError("lr and logit_scale must be > 0")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ValueError(f"caption template needs exactly one '{{}}', got {template!r}")


@dataclass
class PretrainLog:
    """What a pretraining run did: the loss curve (every ``every`` steps) and its wall time."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)  # in-batch image->text accuracy
    seconds: float = 0.0
    every: int = 50


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[None]:
    """Deterministic algorithms (and optionally a thread count) inside, the previous ones after."""
    was = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(old_threads)


def concept_image_pool(
    concepts: Sequence[str], per_concept: int, *, seed: int, transform: Callable
) -> torch.Tensor:
    """``[C, per_concept, 3, H, W]``: image ``k`` of each concept from the pretraining stream,
    through ``transform`` (the model's eval transform, so pretraining sees what evaluation sees)."""
    data_seed = PRETRAIN_DATA_SEED + seed
    rows = []
    for concept in concepts:
        images = [
            transform(
                Image.fromarray(
                    shapes.render(concept, shapes.image_rng(data_seed, "train", concept, k))
                )
            )
            for k in range(per_concept)
        ]
        rows.append(torch.stack(images))
    return torch.stack(rows)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on gains, biases, embeddings or the logit scale."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_embedding = "embedding" in name  # token, positional and class embeddings
        (no_decay if param.ndim < 2 or is_embedding else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _lr_at(step: int, settings: PretrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain_world(
    settings: PretrainSettings = PretrainSettings(),
    *,
    threads: int | None = 1,
    progress: Callable[[int, float, torch.nn.Module], None] | None = None,
    log: PretrainLog | None = None,
):
    """Contrastive pretraining of ``settings.arch`` on the whole world; returns the ``ClipBundle``.

    Each step: one image per concept (index drawn per concept), one caption per concept (template
    drawn per concept), the symmetric CLIP loss at a fixed logit scale (``cma_loss`` with
    ``lam = 0``). ``progress(step, mean_loss, model)`` is called every ``log.every`` steps.
    """
    from raymmft.losses import cma_loss
    from raymmft.model import build_model

    log = log if log is not None else PretrainLog()
    start = time.perf_counter()
    with deterministic(threads):
        random.seed(settings.seed)
        np.random.seed(settings.seed)
        torch.manual_seed(settings.seed)
        bundle = build_model(
            settings.arch, None, temperature=1.0 / settings.logit_scale, learn_temperature=False
        )
        model = bundle.model
        concepts = shapes.world_concepts()
        pool = concept_image_pool(
            concepts,
            settings.images_per_concept,
            seed=settings.seed,
            transform=bundle.preprocess_eval,
        )
        captions = [t.format(c) for c in concepts for t in settings.templates]
        tokens = bundle.tokenizer(captions).view(len(concepts), len(settings.templates), -1)
        optimizer = torch.optim.AdamW(
            _param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6
        )
        generator = torch.Generator().manual_seed(settings.seed)
        rows = torch.arange(len(concepts))
        model.train()
        loss_sum, acc_sum, n = 0.0, 0.0, 0
        for step in range(settings.steps):
            pick = torch.randint(settings.images_per_concept, (len(concepts),), generator=generator)
            template = torch.randint(len(settings.templates), (len(concepts),), generator=generator)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, settings)
            image_features, text_features, scale = model(pool[rows, pick], tokens[rows, template])
            loss = cma_loss(image_features, text_features, scale, lam=0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                hits = (image_features @ text_features.T).argmax(dim=1) == rows
            loss_sum += loss.item()
            acc_sum += hits.float().mean().item()
            n += 1
            if (step + 1) % log.every == 0 or step + 1 == settings.steps:
                log.losses.append(loss_sum / n)
                log.accuracies.append(acc_sum / n)
                if progress is not None:
                    progress(step + 1, loss_sum / n, model)
                loss_sum, acc_sum, n = 0.0, 0.0, 0
        model.eval()
    log.seconds = time.perf_counter() - start
    return bundle


def half_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors in fp16, except the (scalar) logit scale."""
    return {
        name: t.detach().clone()
        if name == "logit_scale" or not t.is_floating_point()
        else t.detach().half()
        for name, t in model.state_dict().items()
    }


def save_world_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the fp16 state dict that ``build_model(arch, path)`` (or the shipped tag) loads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(half_state_dict(model), path)
    return path


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict (``torch.save`` files of
    equal tensors differ: each holds a random serialization id)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_record(
    path: str | Path,
    settings: PretrainSettings,
    metrics: dict,
    log: PretrainLog,
    weights: Path,
    *,
    threads: int,
    corpora: Sequence[str],
) -> Path:
    """The JSON beside the weights: how they were made and what they measure."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    record = {
        "arch": settings.arch,
        "command": f"raymmft pretrain-world --seed {settings.seed} --steps {settings.steps} "
        f"--lr {settings.lr:g} --threads {threads} --out {weights}",
        "neglabel_corpora": list(corpora),
        "settings": {**asdict(settings), "templates": list(settings.templates)},
        "eval_sets": asdict(WorldEvalSets()),
        "tolerance": METRIC_TOLERANCE,
        "pretrain_seconds": round(log.seconds, 1),
        "threads": threads,
        "torch": torch.__version__,
        "weights_fingerprint": weights_fingerprint(state),
        "loss_every_100_steps": [round(x, 4) for x in log.losses],
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
    }
    path = Path(path)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
