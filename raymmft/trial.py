"""One trial: a Ray Train ``TorchTrainer`` over the worker loop, and the Tune trainable that fits it.

Ray 2.60 runs Train V2, where a ``TorchTrainer`` cannot be handed to ``Tuner``: each trial is a
Tune *function trainable* (``trial_driver``) that builds and fits a ``TorchTrainer`` whose
``TuneReportCallback`` forwards rank 0's metrics to Tune. What a trial's workers receive is one
typed object, ``TrialInputs``: the trial's whole validated config and where its files go.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict
from ray import tune
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from raymmft.config import Config, apply_trial_params
from raymmft.results.experiment import TENSORBOARD_DIR, TRAIN_RUNS_DIR
from raymmft.search_space import flatten_fields
from raymmft.storage import Location
from raymmft.worker import train_fn_per_worker

CACHE_DIR = ".raymmft_cache"
# the exception a worker raises for a loss that is not finite: deterministic, never retried
NON_FINITE = "NonFiniteLossError"


class TrialInputs(BaseModel):
    """Everything a trial's workers read besides the data: the trial's validated config and the
    locations (URIs: every worker opens them itself, with its own node's credentials) of the
    NegLabel cache, its TensorBoard run and the negatives the preparation step mined; and the wall
    clock time (``time.time()``) the trial started."""

    model_config = ConfigDict(frozen=True)

    config: Config
    cache_dir: str | None = None
    tensorboard_dir: str | None = None
    negatives: str | None = None
    started_at: float | None = None


def scaling_config(cfg: Config) -> ScalingConfig:
    r = cfg.resources
    per_worker = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    return ScalingConfig(
        num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=per_worker
    )


def cache_location(cfg: Config) -> Location:
    """NegLabel mining cache beside the experiments, on the same storage (local, NFS or a bucket)."""
    return cfg.storage.location.join(CACHE_DIR)


def one_worker(cfg: Config) -> dict[str, float]:
    """``ray.remote`` resources of one trial worker (a GPU when trials use GPUs)."""
    r = cfg.resources
    return {"num_cpus": r.cpus_per_worker, "num_gpus": r.gpus_per_worker if r.use_gpu else 0}


def make_trainer(
    cfg: Config,
    *,
    storage: Location,
    name: str,
    cache: Location | None,
    tensorboard_dir: Location | None = None,
    negatives: str | None = None,
    callbacks=(),
) -> TorchTrainer:
    """A ``TorchTrainer`` whose run lives at ``storage/name``."""
    inputs = TrialInputs(
        config=cfg,
        cache_dir=cache.uri if cache is not None else None,
        tensorboard_dir=tensorboard_dir.uri if tensorboard_dir is not None else None,
        negatives=negatives,
        started_at=time.time(),
    )
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"trial": inputs},
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=storage.uri,
            # restarts are fit_with_restarts' (a non-finite loss is never retried)
            failure_config=FailureConfig(max_failures=0),
            # The latest checkpoint resumes the run and is the one evaluated; keep one spare.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
            # a failed worker's traceback goes to the trial's error.txt (TrialFailedError), not
            # to the console from every worker and the controller
            logging_config=LoggingConfig(log_level="CRITICAL"),
        ),
    )


def trial_driver(params: dict, *, base: Config, negatives: str | None) -> None:
    """The Tune function trainable of one trial: fit a TorchTrainer with this trial's config."""
    trial_id = tune.get_context().get_trial_id()
    _fit_trial(apply_trial_params(base, flatten_fields(params)), trial_id, trial_id, negatives)


def confirm_driver(config: dict, *, base: Config, negatives: str | None) -> None:
    """The Tune function trainable of one confirmation run: a search's trial (``run.params``,
    dotted) trained again with another ``train.seed`` (``run.seed``); its TensorBoard run is
    ``<candidate>-seed<seed>``."""
    run = config["run"]
    cfg = apply_trial_params(base, {**run["params"], "train.seed": run["seed"]})
    trial_id = tune.get_context().get_trial_id()
    _fit_trial(cfg, trial_id, f"{run['candidate']}-seed{run['seed']}", negatives)


def _fit_trial(cfg: Config, trial_id: str, run_name: str, negatives: str | None) -> None:
    exp = cfg.storage.experiment
    fit_with_restarts(
        lambda: make_trainer(
            cfg,
            storage=exp.join(TRAIN_RUNS_DIR),
            name=trial_id,
            cache=cache_location(cfg),
            tensorboard_dir=exp.join(TENSORBOARD_DIR, run_name),
            negatives=negatives,
            callbacks=[TuneReportCallback()],
        ),
        cfg.resources.max_failures,
        what=f"trial {trial_id}",
    )


def fit_with_restarts(build, max_failures: int, *, what: str):
    """Fit ``build()``'s trainer; after a worker failure, fit a new one with the same run name,
    which resumes from the run's latest checkpoint, at most ``max_failures`` times. A
    non-finite loss fails at once (it would fail the same way again). Raises
    ``TrialFailedError`` with the one-line reason (Tune records it as the trial's error)."""
    failures = 0
    while True:
        try:
            return build().fit()
        except TrainingFailedError as exc:
            reason = failure_reason(exc)
            if NON_FINITE in reason or failures >= max_failures:
                # the reason first and last (its one line), the workers' tracebacks between
                raise TrialFailedError(reason, str(exc).strip()) from None
            failures += 1
            print(f"{what}: {reason}; restart {failures} of {max_failures} from its checkpoint")


class TrialFailedError(RuntimeError):
    """A trial's training failed for good (after its restarts); ``reason`` says why in one line,
    the message adds the workers' tracebacks (what Tune writes into the trial's error.txt)."""

    def __init__(self, reason: str, details: str = ""):
        super().__init__(f"{reason}\n\n{details}\n\n{reason}" if details else reason)
        self.reason, self.details = reason, details

    def __reduce__(self):  # Ray and Tune pickle it (error.pkl)
        return type(self), (self.reason, self.details)


def failure_reason(exc: TrainingFailedError) -> str:
    """The first failed worker's exception as ``worker rank r: Type: message`` (e.g. a non-finite
    loss); a failure of Ray Train's controller as its first line."""
    for rank, err in sorted(getattr(exc, "worker_failures", {}).items()):
        lines = str(err).strip().splitlines()
        if len(lines) > 1:  # a remote traceback: its last "...Error: ..." line
            detail = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1]).strip()
        else:
            detail = f"{type(err).__name__}: {lines[0] if lines else ''}"
        return f"worker rank {rank}: {detail}"
    return str(exc).splitlines()[0]
