"""Ray Train's ``train_fn_per_worker``: the thin Ray adaptor around ``raymmft.loop.run_training``.

It reads the worker's rank from the Ray Train context, wraps the model in DDP
(``ray.train.torch.prepare_model``), resumes from ``ray.train.get_checkpoint()``, loads the
negatives the search's preparation step mined, and reports each evaluation with rank 0's
checkpoint, written atomically into a fresh directory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

import ray.train
import ray.train.torch
from ray.train.v2.api.report_config import CheckpointUploadMode

from raymmft.checkpoint import load_state, save_state

CHECKPOINT_TIME = "time/checkpoint_s"

# raymmft.loop (open_clip, the model, the data) is imported inside train_fn_per_worker: the trial
# driver imports this module only to hand the function to TorchTrainer (saves ~2 s per trial).

# Fault injection for tests: RAYMMFT_FAULT="RANK:STEP[:KIND]" makes that rank fail at that global
# step (KIND "exit": the process dies; "nan": the batch becomes NaN). It fires once: the rank
# creates the file RAYMMFT_FAULT_MARKER first, and an existing marker disarms it.
FAULT_ENV = "RAYMMFT_FAULT"
FAULT_MARKER_ENV = "RAYMMFT_FAULT_MARKER"


def load_checkpoint(checkpoint: ray.train.Checkpoint) -> dict:
    """The training state of a Ray Train checkpoint (downloaded from its storage)."""
    with checkpoint.as_directory() as d:
        return load_state(d)


def fault_hooks():
    """The loop's hooks: a ``FaultHooks`` when ``RAYMMFT_FAULT`` is set, else the no-op default."""
    from raymmft.loop import Hooks

    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return Hooks()
    rank, step, *kind = spec.split(":")
    return FaultHooks(
        int(rank), int(step), kind[0] if kind else "exit", os.environ.get(FAULT_MARKER_ENV)
    )


class FaultHooks:
    """Test-only fault injection: ``rank`` fails at global step ``step``. With a ``marker`` path
    the fault fires once: the file is created first, and exists on retry."""

    def __init__(self, rank: int, step: int, kind: str, marker: str | None):
        self.rank, self.step, self.kind, self.marker = rank, step, kind, marker

    def _fires(self, rank: int, step: int) -> bool:
        if (rank, step) != (self.rank, self.step):
            return False
        if self.marker is None:
            return True
        try:
            with open(self.marker, "x"):
                return True
        except FileExistsError:
            return False

    def before_step(self, rank: int, step: int, images) -> None:
        if not self._fires(rank, step):
            return
        if self.kind == "exit":
            os._exit(1)
        if self.kind == "nan":
            images.fill_(float("nan"))


def _report(metrics: dict, state: dict | None) -> None:
    """Report ``metrics``; with rank 0's ``state``, its checkpoint: written to a local folder
    (``time/checkpoint_s``), then uploaded by Ray Train in the background while training goes
    on (``ASYNC``; the local folder is deleted after the upload)."""
    if state is None:
        ray.train.report(metrics, checkpoint=None)
        return
    began = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="raymmft-ckpt-")
    save_state(state, folder)
    metrics = {**metrics, CHECKPOINT_TIME: time.perf_counter() - began}
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(folder),
        checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
    )


def prepare_fn_per_worker(loop_config: dict) -> None:
    """One worker's share of the search's preparation step (``raymmft.prepare.prepare``: mining
    and the zero-shot evaluation split over the workers); rank 0 writes the files and puts their
    URIs on ``loop_config["results"]``."""
    logging.getLogger().setLevel(logging.WARNING)
    from raymmft.prepare import prepare

    worker = _group_worker()
    out = prepare(**loop_config["preparation"], worker=worker)
    if worker.rank == 0:
        loop_config["results"].put(out)


def _group_worker():
    from raymmft.loop import WorkerContext

    ctx = ray.train.get_context()
    return WorkerContext(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
    )


def evaluate_fn_per_worker(loop_config: dict) -> None:
    """One worker's share of an evaluation (``raymmft.loop.evaluate_checkpoint`` with this
    worker's rank, world size and device); rank 0 puts the result on ``loop_config["results"]``
    (a Ray queue the driver reads)."""
    logging.getLogger().setLevel(logging.WARNING)
    from raymmft.loop import evaluate_checkpoint

    worker = _group_worker()
    result = evaluate_checkpoint(**loop_config["evaluation"], worker=worker)
    if worker.rank == 0:
        loop_config["results"].put(result)


def train_fn_per_worker(loop_config: dict) -> None:
    """Run this worker's share of the trial ``loop_config["trial"]`` (a ``TrialInputs``)."""
    # open_clip logs every model build at INFO, and Ray Train logs every report's full metric dict.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # a checkpoint upload that fails (in its background thread) fails the worker, whose
    # traceback goes to the trial's error.txt; Ray would also log it on the console (its logger
    # is named by the module's file path)
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.CRITICAL)
    from raymmft.loop import RunInputs, WorkerContext, run_training
    from raymmft.ood.neglabel import NegativeLabels
    from raymmft.storage import Location

    trial = loop_config["trial"]
    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and trial.resume_from:  # Ray Train's own record was repaired
        checkpoint = ray.train.Checkpoint(trial.resume_from)
    negatives, cache, tensorboard = trial.negatives, trial.cache_dir, trial.tensorboard_dir
    worker = WorkerContext(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=ray.train.torch.prepare_model,
        report=_report,
    )
    inputs = RunInputs(
        resume_state=load_checkpoint(checkpoint) if checkpoint else None,
        resumed_from=checkpoint.path if checkpoint else None,
        reported_epoch=trial.reported_epoch,
        listings=trial.listings,
        negatives=NegativeLabels.load(negatives) if negatives else None,
        tensorboard=Location.parse(tensorboard) if tensorboard else None,
        cache=Location.parse(cache) if cache else None,
        started_at=trial.started_at,
    )
    run_training(trial.config, worker, inputs, fault_hooks())
