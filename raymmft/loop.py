"""The per-worker training run: data shard → CMA fine-tuning → periodic OoD evaluation → report.

Pure PyTorch with injected Ray pieces (``wrap_model`` is ``ray.train.torch.prepare_model``; ``report``
forwards metrics and rank 0's checkpoint), so the whole run is also testable in one process.
Only rank 0 evaluates: every worker then reports the same step, which Ray Train requires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from raymmft.config import Config
from raymmft.data import build_loader, open_dataset, per_worker_batch
from raymmft.evaluate import evaluate, prepare_negatives
from raymmft.finetune import FineTuner, seed_everything, steps_per_epoch, unwrap
from raymmft.model import build_model
from raymmft.ood.embed import CachedTokenizer
from raymmft.text import tokenize_class_prompts

Report = Callable[[dict, dict | None], None]


@dataclass
class Fault:
    """Test-only fault injection: ``rank`` fails at global step ``step`` (see raymmft.worker).

    With a ``marker`` path the fault fires once: the file is created first, and exists on retry.
    """

    rank: int
    step: int
    kind: str = "exit"
    marker: str | None = None

    def fires(self, rank: int, step: int) -> bool:
        if rank != self.rank or step != self.step:
            return False
        if self.marker is None:
            return True
        try:
            with open(self.marker, "x"):
                return True
        except FileExistsError:
            return False


def _dataset_name(spec, index: int, used: set[str]) -> str:
    name = spec.name
    if not name:
        name = spec.uri.split(":", 1)[-1].rstrip("/").split("/")[-1]
        if isinstance(spec.classes, str):
            name = f"{name}-{spec.classes}"
    name = name.replace(" ", "_") or f"set{index}"
    while name in used:
        name = f"{name}_{index}"
    used.add(name)
    return name


def ood_set_names(specs) -> list[str]:
    used: set[str] = set()
    return [_dataset_name(s, i, used) for i, s in enumerate(specs)]


def model_of(cfg: Config, device: torch.device | str = "cpu"):
    """The starting model of ``cfg`` (arch, weights, temperature, precision) on ``device``."""
    return build_model(
        cfg.model.arch,
        cfg.model.pretrained,
        temperature=cfg.model.temperature,
        learn_temperature=cfg.model.learn_temperature,
        precision=cfg.train.precision,
        device=device,
    )


def run_training(
    cfg: Config,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    report: Report,
    resume_state: dict | None = None,
    fault: Fault | None = None,
    cache_dir: str | None = None,
    tensorboard_dir: str | None = None,
) -> None:
    """Fine-tune with the CMA loss and report metrics after every evaluation."""
    device = device or torch.device("cpu")
    seed_everything(cfg.train.seed)
    bundle = model_of(cfg, device)
    if cfg.train.grad_checkpointing:
        bundle.model.set_grad_checkpointing(True)

    train_transform = bundle.preprocess_train if cfg.train.augment else bundle.preprocess_eval
    train_set = open_dataset(cfg.data.id_train, train_transform)
    classnames = train_set.classnames
    loader = build_loader(
        train_set,
        per_worker_batch(cfg.train.batch_size, world_size),
        shuffle=True,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        rank=rank,
        world_size=world_size,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(
            f"the ID train set has {len(train_set)} images, fewer than one global batch "
            f"({cfg.train.batch_size})"
        )
    n_steps = steps_per_epoch(len(loader), cfg.train)
    tokens = tokenize_class_prompts(bundle.tokenizer, classnames, cfg.train.template)

    evaluator = writer = None
    if rank == 0 and tensorboard_dir:
        from raymmft.tensorboard_log import TrialWriter, hparams_of

        writer = TrialWriter(
            tensorboard_dir,
            hparams_of(cfg.model_dump(mode="json"), list(cfg.search.space)),
            ood_sets=ood_set_names(cfg.data.ood_val),
        )
    if rank == 0:
        evaluator = Evaluator(
            cfg,
            bundle,
            classnames,
            device,
            id_spec=cfg.data.id_val,
            ood_specs=cfg.data.ood_val,
            cache_dir=cache_dir,
        )

    model = wrap_model(bundle.model)
    tuner = FineTuner(
        model,
        tokens,
        cfg.train,
        total_steps=n_steps * cfg.train.epochs,
        device=device,
        autocast_dtype=bundle.autocast_dtype,
        rank=rank,
        world_size=world_size,
    )
    if resume_state is not None:
        tuner.load_state_dict(resume_state, arch=cfg.model.arch)

    while tuner.epoch < cfg.train.epochs:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(tuner.epoch)
        sums = {"loss": 0.0, "contrastive": 0.0, "regularizer": 0.0}
        start, n = time.perf_counter(), 0
        for i, (images, labels) in enumerate(loader):
            if i >= n_steps:
                break
            if fault is not None and fault.fires(rank, tuner.step):
                _inject(fault, images)
            result = tuner.train_step(images, labels)
            for k in sums:
                sums[k] += getattr(result, k)
            n += 1
        seconds = time.perf_counter() - start
        tuner.epoch += 1
        metrics = {
            "epoch": tuner.epoch,
            "step": tuner.step,
            "world_size": world_size,
            "train_loss": sums["loss"] / n,
            "train_contrastive": sums["contrastive"] / n,
            "train_regularizer": sums["regularizer"] / n,
            "lr": tuner.lr,
            "logit_scale": tuner.logit_scale,
            "images_per_s": n * cfg.train.batch_size / seconds,
        }
        last = tuner.epoch == cfg.train.epochs
        if last or tuner.epoch % cfg.eval.every_n_epochs == 0:
            evaluation = None
            if evaluator is not None:
                evaluation = evaluator.evaluate(unwrap(model))
                metrics.update(evaluator.metrics(evaluation))
            if writer is not None:
                # Before the report: a scheduler may stop the trial right after it.
                writer.log_train(tuner.step, metrics)
                writer.log_eval(tuner.step, metrics, evaluation)
            report(metrics, tuner.state_dict(cfg.model.arch) if rank == 0 else None)
    if writer is not None:
        writer.close(metrics)


def _inject(fault: Fault, images: torch.Tensor) -> None:
    if fault.kind == "exit":
        import os

        os._exit(1)
    if fault.kind == "nan":
        images.fill_(float("nan"))


class Evaluator:
    """Evaluation of a model on an ID set and named OoD sets: rank 0's validation during training
    (ID val + OoD val sets), and the final report of a chosen configuration (OoD test sets)."""

    def __init__(self, cfg: Config, bundle, classnames, device, *, id_spec, ood_specs, cache_dir):
        self.cfg = cfg
        self.bundle = bundle
        self.classnames = classnames
        self.device = device
        self.cache_dir = cache_dir
        batch = cfg.eval.batch_size
        id_set = open_dataset(id_spec, bundle.preprocess_eval, id_classnames=classnames)
        self.id_loader = build_loader(id_set, batch, shuffle=False, seed=0)
        self.ood_loaders = {
            name: build_loader(
                open_dataset(spec, bundle.preprocess_eval, id_classnames=classnames),
                batch,
                shuffle=False,
                seed=0,
            )
            for name, spec in zip(ood_set_names(ood_specs), ood_specs)
        }
        # The same prompts are encoded at every evaluation: tokenise each once. (With
        # eval.neglabel.remine_each_eval that includes the whole corpus: 86 MB of ids for
        # WordNet's 140k prompts at a 77-token context, instead of tokenising them every time.)
        self.tokenizer = CachedTokenizer(bundle.tokenizer)
        # NegLabel: mine once with the starting model, re-encode the words at each evaluation.
        self.negatives = None
        if "neglabel" in cfg.eval.scores:
            self.negatives = prepare_negatives(
                bundle.model,
                bundle.tokenizer,
                classnames,
                cfg.eval.neglabel,
                device=device,
                cache_dir=cache_dir,
                autocast_dtype=bundle.autocast_dtype,
            )

    def evaluate(self, model: torch.nn.Module):
        """The full ``EvaluationResult`` (per set, per score, raw scores for histograms)."""
        ev = self.cfg.eval
        return evaluate(
            model,
            self.tokenizer,
            self.id_loader,
            self.classnames,
            self.ood_loaders,
            scores=ev.scores,
            primary_score=ev.ood_score,
            templates=ev.templates,
            temperature=ev.temperature,
            neglabel=ev.neglabel,
            negatives=self.negatives,
            device=self.device,
            autocast_dtype=self.bundle.autocast_dtype,
            cache_dir=self.cache_dir,
        )

    def metrics(self, evaluation) -> dict:
        """Flat metrics for reporting, with the search's scalar ``score``."""
        metrics = evaluation.flat_metrics()
        metrics["score"] = metrics["ood_auroc"] + self.cfg.search.score_weight * metrics["id_acc"]
        return metrics


def final_evaluator(cfg: Config, bundle, device, *, ood_specs, cache_dir: str | None = None):
    """The evaluator of a chosen configuration's final report: ID ``id_test`` (else ``id_val``) and
    ``ood_specs``, class names from the train set, NegLabel's negatives mined by ``bundle``'s
    model (the starting model: the same cache entry as during training)."""
    classnames = open_dataset(cfg.data.id_train, bundle.preprocess_eval).classnames
    id_spec = getattr(cfg.data, "id_test", None) or cfg.data.id_val
    return Evaluator(
        cfg, bundle, classnames, device, id_spec=id_spec, ood_specs=ood_specs, cache_dir=cache_dir
    )


def evaluate_checkpoint(
    cfg: Config, checkpoint: str, *, on: str = "test", cache_dir: str | None = None
):
    """Evaluate a trial's checkpoint (a directory or ``state.pt`` on any storage) on its OoD test
    (or validation) sets.

    NegLabel's negatives are mined with the starting model, as during training (the same cache
    entry), and re-encoded with the checkpoint's weights.
    """
    from raymmft.checkpoint import load_weights

    device = torch.device("cuda" if torch.cuda.is_available() and cfg.resources.use_gpu else "cpu")
    bundle = model_of(cfg, device)
    ood_specs = cfg.data.ood_test if on == "test" else cfg.data.ood_val
    evaluator = final_evaluator(cfg, bundle, device, ood_specs=ood_specs, cache_dir=cache_dir)
    load_weights(bundle.model, checkpoint, arch=cfg.model.arch)
    return evaluator.evaluate(bundle.model)
