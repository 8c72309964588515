"""One worker's run: data shard → CMA fine-tuning → OoD evaluation (on every worker) → report.

Pure PyTorch with the Ray pieces injected (``WorkerContext``: the rank, the DDP wrapping, the report), so
the whole run is also testable in one process. Every worker evaluates its own share of each
evaluation set (``raymmft.evaluation.Evaluator``), and every worker reports the same step, as Ray
Train requires; rank 0's report carries the checkpoint.

Each report also carries where the trial's time went: ``time/train_s`` (training steps since the
last report), ``time/eval_s`` (the evaluation just reported) and, in the first report,
``time/startup_s`` (from the trial's start to its first step); under Ray, rank 0's report adds
``time/checkpoint_s``, writing its own checkpoint (``raymmft.worker``; the upload runs in the
background).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from raymmft.config import Config
from raymmft.data import (
    build_loader,
    classnames_of,
    loader_workers,
    open_dataset,
    per_worker_batch,
)
from raymmft.data.dataset import fill_unreadable
from raymmft.data.loading import start_loader_server
from raymmft.data.spec import set_names
from raymmft.evaluation import Evaluator
from raymmft.finetune import FineTuner, seed_everything, steps_per_epoch
from raymmft.interpolation import interpolate_state, starting_state
from raymmft.model import build_model
from raymmft.objectives import INTERP_TIME, SCORE, interp_name
from raymmft.storage import Location
from raymmft.text import tokenize_class_prompts
from raymmft.text_tower import TrainingForward, clip_of

Report = Callable[[dict, dict | None], None]


@dataclass
class WorkerContext:
    """Where this worker of a run stands: its rank, the world size, its device, how the model is
    wrapped for data parallelism (``ray.train.torch.prepare_model``) and how it reports."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    report: Report = lambda metrics, state: None


@dataclass
class RunInputs:
    """What a run reads besides its config: a state to resume from (and where it was stored), the
    last epoch the search has recorded (``reported_epoch``: the reports the state holds after it
    are reported again; ``None``: nothing is replayed), the negatives a search's preparation
    step mined, where TensorBoard events go (rank 0), the NegLabel cache, and the wall clock time
    (``time.time()``) at which the trial started."""

    resume_state: dict | None = None
    resumed_from: str | None = None
    reported_epoch: int | None = None
    negatives: object = None
    tensorboard: Location | None = None
    cache: Location | None = None
    started_at: float | None = None
    listings: dict[str, str] | None = None


class Hooks:
    """Calls into the loop for tests (fault injection); the default does nothing."""

    def before_step(self, rank: int, step: int, images: torch.Tensor) -> None:
        pass


def model_of(cfg: Config, device: torch.device | str = "cpu"):
    """The starting model of ``cfg`` (arch, weights, temperature, precision) on ``device``. The
    random state is seeded with ``train.seed`` first, so a randomly initialised start is the same
    for every trial, the preparation step and the final evaluation."""
    if loader_workers(cfg.data.num_workers, cfg.resources.cpus_per_worker):
        start_loader_server()  # this worker's loaders start from it: its imports overlap the build
    seed_everything(cfg.train.seed)
    return build_model(
        cfg.model.arch,
        cfg.model.pretrained,
        temperature=cfg.model.temperature,
        learn_temperature=cfg.model.learn_temperature,
        precision=cfg.train.precision,
        device=device,
    )


def evaluator_for(
    cfg: Config,
    bundle,
    device: torch.device | str = "cpu",
    *,
    on: str = "val",
    rank: int = 0,
    world_size: int = 1,
    negatives=None,
    cache: Location | None = None,
    classnames: list[str] | None = None,
    out=None,
    listings: dict[str, str] | None = None,
) -> Evaluator:
    """The evaluator of a config: the ID validation set and the OoD validation sets (``on="val"``,
    what trials are scored on), or the OoD test sets (``on="test"``, the chosen configuration's
    report); class names from the ID train set (``classnames`` when the caller opened it already).
    NegLabel takes ``negatives`` (mined once per search by the starting model) or mines with
    ``bundle``'s model from the configured corpus."""
    from raymmft.neglabel_corpus import resolve_corpus

    transform = bundle.preprocess_eval
    if classnames is None:  # without listing the training images
        classnames = classnames_of(cfg.data.id_train, listings=listings)
    specs = cfg.data.ood_val if on == "val" else cfg.data.ood_test
    ood = {
        name: open_dataset(spec, transform, id_classnames=classnames, listings=listings)
        for name, spec in zip(set_names(specs), specs)
    }
    neglabel = cfg.eval.neglabel
    mines = "neglabel" in cfg.eval.scores and (negatives is None or neglabel.remine_each_eval)
    # one worker's progress lines (every rank evaluates at once): the Evaluator's own on rank 0
    kwargs = {"out": out} if out is not None or rank != 0 else {}
    return Evaluator(
        cfg.eval,
        bundle,
        classnames,
        open_dataset(cfg.data.id_val, transform, id_classnames=classnames, listings=listings),
        ood,
        device=device,
        rank=rank,
        world_size=world_size,
        num_workers=loader_workers(cfg.data.num_workers, cfg.resources.cpus_per_worker),
        corpus=resolve_corpus(neglabel) if mines else None,
        negatives=negatives,
        cache=cache,
        **kwargs,
    )


def report_metrics(cfg: Config, evaluation) -> dict:
    """An evaluation's flat metrics with the search's scalar ``score`` (``raymmft.objectives``)."""
    metrics = evaluation.flat_metrics()
    metrics[SCORE] = cfg.search.goals.score(metrics)
    return metrics


def run_training(
    cfg: Config,
    worker: WorkerContext | None = None,
    inputs: RunInputs | None = None,
    hooks: Hooks | None = None,
) -> None:
    """Fine-tune with the CMA loss; after every evaluation period, evaluate and report.

    Every checkpoint holds the reports made so far (``reports``). A run resumed from one first
    reports again those the search has not recorded (after ``inputs.reported_epoch``): a search
    interrupted between the checkpoint's upload and the search's record of it, or whose
    checkpoint is already the last epoch's, loses no epoch and repeats none."""
    worker, inputs, hooks = worker or WorkerContext(), inputs or RunInputs(), hooks or Hooks()
    start = inputs.started_at or time.time()
    run = _setup(cfg, worker, inputs)
    history = list((inputs.resume_state or {}).get("reports", []))
    if inputs.reported_epoch is not None:
        where = {"checkpoint_path": inputs.resumed_from} if inputs.resumed_from else {}
        for past in history:
            if past["epoch"] > inputs.reported_epoch:
                worker.report({**past, **where}, None)
    carried = {"time/startup_s": time.time() - start}
    metrics: dict = {}
    while run.finetuner.epoch < cfg.train.epochs:
        metrics = _train_epoch(run, worker, hooks)
        if run.finetuner.epoch % cfg.eval.every_n_epochs and run.finetuner.epoch < cfg.train.epochs:
            continue
        began = time.perf_counter()
        evaluation = run.evaluator.evaluate(clip_of(run.finetuner.model))
        metrics.update(report_metrics(cfg, evaluation), **carried)
        if run.interpolation is not None:
            interpolated = time.perf_counter()
            metrics.update(
                run.interpolation.metrics(cfg, clip_of(run.finetuner.model), run.evaluator)
            )
            metrics[INTERP_TIME] = time.perf_counter() - interpolated
        metrics["time/eval_s"] = time.perf_counter() - began
        if run.writer is not None:  # before the report: a scheduler may stop the trial at it
            run.writer.log_train(run.finetuner.step, metrics)
            run.writer.log_eval(run.finetuner.step, metrics, evaluation)
        # what writing this report's checkpoint took: set by the report itself (Ray, rank 0)
        metrics["time/checkpoint_s"] = 0.0
        history.append(_plain(metrics))
        state = None
        if worker.rank == 0:
            state = {**run.finetuner.state_dict(cfg.model.arch), "reports": list(history)}
        worker.report(metrics, state)
        carried = {}
        run.train_seconds = 0.0
    if run.writer is not None:
        run.writer.close(metrics)


def _plain(metrics: dict) -> dict:
    """``metrics`` with Python numbers only (a checkpoint loads with ``weights_only=True``)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        elif hasattr(value, "item"):  # numpy or torch scalars
            out[key] = value.item()
        else:
            out[key] = float(value)
    return out


@dataclass
class Interpolation:
    """WiSE-FT at every evaluation (``eval.interpolation``): the starting weights (held once per
    worker, on the CPU) and a second model of the architecture that is loaded with
    ``(1 - alpha) * start + alpha * trial`` for each alpha and evaluated like the trial, sharded
    over the workers."""

    start: dict
    model: torch.nn.Module
    alphas: list[float]

    def metrics(self, cfg: Config, trained: torch.nn.Module, evaluator: Evaluator) -> dict:
        """``interp/<alpha>/<metric>`` for every metric the trial reports of its evaluation."""
        weights = trained.state_dict()
        out = {}
        for alpha in self.alphas:
            self.model.load_state_dict(interpolate_state(self.start, weights, alpha))
            measured = report_metrics(cfg, evaluator.evaluate(self.model))
            out.update({interp_name(k, alpha): v for k, v in measured.items()})
        return out


@dataclass
class _Run:
    finetuner: FineTuner
    loader: torch.utils.data.DataLoader
    steps: int
    evaluator: Evaluator
    writer: object = None
    train_seconds: float = 0.0
    interpolation: Interpolation | None = None


def _setup(cfg: Config, worker: WorkerContext, inputs: RunInputs) -> _Run:
    """The model, this worker's shard of the ID train set, the fine-tuner (resumed when there is a
    state), the evaluator and rank 0's TensorBoard writer."""
    seed_everything(cfg.train.seed)
    bundle = model_of(cfg, worker.device)
    interpolation = None
    if cfg.eval.interpolation:  # the starting weights, before any step or resumed state
        import copy

        twin = copy.deepcopy(bundle.model).eval()
        interpolation = Interpolation(starting_state(bundle.model), twin, cfg.eval.interpolation)
    if cfg.train.grad_checkpointing:
        bundle.model.set_grad_checkpointing(True)
    transform = bundle.preprocess_train if cfg.train.augment else bundle.preprocess_eval
    train_set = open_dataset(cfg.data.id_train, transform, listings=inputs.listings)
    loader = build_loader(
        train_set,
        per_worker_batch(cfg.train.batch_size, worker.world_size),
        shuffle=True,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        cpus=cfg.resources.cpus_per_worker,
        device=worker.device,
        rank=worker.rank,
        world_size=worker.world_size,
        drop_last=True,
    )
    if len(loader) == 0:
        raise ValueError(
            f"the ID train set has {len(train_set)} images, fewer than one global batch "
            f"({cfg.train.batch_size})"
        )
    steps = steps_per_epoch(len(loader), cfg.train)
    evaluator = evaluator_for(
        cfg,
        bundle,
        worker.device,
        rank=worker.rank,
        world_size=worker.world_size,
        negatives=inputs.negatives,
        cache=inputs.cache,
        classnames=train_set.classnames,
        listings=inputs.listings,
    )
    writer = None
    if worker.rank == 0 and inputs.tensorboard is not None:
        from raymmft.tensorboard_log import TrialWriter, hparams_of

        resumed = inputs.resume_state
        writer = TrialWriter(
            inputs.tensorboard,
            hparams_of(cfg.model_dump(mode="json"), list(cfg.search.space)),
            ood_sets=set_names(cfg.data.ood_val),
            objectives=cfg.search.goals,
            # events after the resumed step (an epoch logged, then interrupted before its
            # checkpoint) are hidden: the run logs that epoch again
            purge_step=int(resumed["step"]) + 1 if resumed is not None else None,
        )
    finetuner = FineTuner(
        worker.wrap_model(TrainingForward(bundle.model)),
        tokenize_class_prompts(bundle.tokenizer, train_set.classnames, cfg.train.template),
        cfg.train,
        total_steps=steps * cfg.train.epochs,
        device=worker.device,
        autocast_dtype=bundle.autocast_dtype,
        rank=worker.rank,
        world_size=worker.world_size,
    )
    if inputs.resume_state is not None:
        finetuner.load_state_dict(inputs.resume_state, arch=cfg.model.arch)
    return _Run(finetuner, loader, steps, evaluator, writer, interpolation=interpolation)


def _train_epoch(run: _Run, worker: WorkerContext, hooks: Hooks) -> dict:
    """One epoch of steps; the epoch's mean losses, throughput and time."""
    finetuner = run.finetuner
    if hasattr(run.loader.sampler, "set_epoch"):
        run.loader.sampler.set_epoch(finetuner.epoch)
    sums = {"loss": 0.0, "contrastive": 0.0, "regularizer": 0.0}
    start, n, skipped = time.perf_counter(), 0, 0
    for images, labels in run.loader:
        if n >= run.steps:
            break
        images, labels, replaced = fill_unreadable(images, labels)
        skipped += replaced
        hooks.before_step(worker.rank, finetuner.step, images)
        result = finetuner.train_step(images, labels)
        for k in sums:
            sums[k] += getattr(result, k)
        n += 1
    seconds = time.perf_counter() - start
    run.train_seconds += seconds
    finetuner.epoch += 1
    return {
        "epoch": finetuner.epoch,
        "step": finetuner.step,
        "world_size": worker.world_size,
        "train_loss": sums["loss"] / n,
        "train_contrastive": sums["contrastive"] / n,
        "train_regularizer": sums["regularizer"] / n,
        "lr": finetuner.lr,
        "logit_scale": finetuner.logit_scale,
        "images_per_s": n * finetuner.cfg.batch_size / seconds,
        "train_skipped": skipped,
        "time/train_s": run.train_seconds,
    }


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str | None,
    *,
    on: str = "test",
    negatives: str | None = None,
    cache: str | None = None,
    bootstrap: int = 0,
    compare_start: bool = False,
    listings: dict[str, str] | None = None,
    worker: WorkerContext | None = None,
):
    """Evaluate a checkpoint (a directory or ``state.pt`` on any storage; ``None``: the starting
    model of ``cfg``; ``model.interpolate``: those weights interpolated toward the starting
    model) on its OoD test (or validation) sets, with the negatives the trials used
    (``negatives``: a stored ``NegativeLabels``, as a search's preparation step writes) or mined by
    the starting model. With ``bootstrap`` resamples, every metric gets its 95 % interval
    (``raymmft.ood.bootstrap``, seeded with ``train.seed``); with ``compare_start`` too, the
    difference from the starting model on the same resamples (paired). With a ``worker`` of a
    group (rank, world size, device), every worker of the group calls this at once and encodes
    its share of each set, as the trials' evaluations do; each gets the whole result, rank 0 (the
    one returned) with the intervals. Only the model's weights are read from the checkpoint."""
    from raymmft.checkpoint import load_weights
    from raymmft.ood.neglabel import NegativeLabels

    if worker is None:
        gpu = torch.cuda.is_available() and cfg.resources.use_gpu
        worker = WorkerContext(device=torch.device("cuda" if gpu else "cpu"))
    device = worker.device
    bundle = model_of(cfg, device)
    mined = NegativeLabels.load(negatives) if negatives is not None else None
    cache_location = Location.parse(cache) if cache is not None else None
    evaluator = evaluator_for(
        cfg,
        bundle,
        device,
        on=on,
        rank=worker.rank,
        world_size=worker.world_size,
        negatives=mined,
        cache=cache_location,
        listings=listings,
    )
    start = None
    if compare_start and checkpoint is not None and bootstrap:
        start = evaluator.evaluate(bundle.model)
    if checkpoint is not None:
        load_weights(
            bundle.model, checkpoint, arch=cfg.model.arch, interpolate=cfg.model.interpolate
        )
    result = evaluator.evaluate(bundle.model)
    if bootstrap and worker.rank == 0:  # the rank whose result is returned
        result.add_intervals(bootstrap, cfg.train.seed, reference=start, reference_name="zero-shot")
    return result
