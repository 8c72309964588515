"""The Ray layer above the worker loop: one trial = one ``TorchTrainer``; a search = a ``Tuner``.

Ray 2.60 runs Train V2, where a ``TorchTrainer`` cannot be handed to ``Tuner``: each trial is a
Tune *function trainable* (``trial_driver``) that builds and fits a ``TorchTrainer`` whose
``TuneReportCallback`` forwards rank 0's metrics to Tune. The driver itself takes no CPU (it only
waits), so the workers can use every core; Tune does not count Train workers, so the number of
concurrent trials is derived from the cluster's resources and each trial's needs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from raymmft.config import EXPERIMENT_CONFIG_FILE as CONFIG_FILE
from raymmft.config import Config, apply_trial_params, flatten_fields
from raymmft.errors import ConfigError
from raymmft.worker import train_fn_per_worker

TRAIN_RUNS_DIR = "train_runs"
TENSORBOARD_DIR = "tensorboard"


# ---------------------------------------------------------------- search space


def tune_distribution(spec: Any):
    """``{loguniform: [a, b]}`` etc. → a Tune sampler; anything else is a fixed value."""
    if not isinstance(spec, dict):
        return spec
    ((dist, args),) = spec.items()
    if dist == "loguniform":
        return tune.loguniform(args[0], args[1])
    if dist == "uniform":
        return tune.uniform(args[0], args[1])
    if dist == "quniform":
        return tune.quniform(args[0], args[1], args[2] if len(args) > 2 else 1.0)
    if dist == "randint":
        return tune.randint(int(args[0]), int(args[1]))
    if dist == "choice":
        return tune.choice(args)
    raise ConfigError(f"unknown distribution '{dist}'")


def param_space(cfg: Config) -> dict:
    """Nested Tune param space ``{"train": {"lam": tune.loguniform(...)}}`` from dotted keys."""
    space: dict = {}
    for key, spec in cfg.search.space.items():
        *parents, leaf = key.split(".")
        node = space
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = tune_distribution(spec)
    return space


flatten_params = flatten_fields


def make_searcher(cfg: Config):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = cfg.search
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, multivariate=True),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
    }
    metrics = [o.metric for o in s.objectives]
    modes = [o.mode for o in s.objectives]
    if len(metrics) == 1:
        metrics, modes = metrics[0], modes[0]
    # Optuna names a nested Tune parameter "train/lam".
    points = [{k.replace(".", "/"): v for k, v in p.items()} for p in s.initial_points]
    return OptunaSearch(
        metric=metrics, mode=modes, sampler=samplers[s.sampler](), points_to_evaluate=points
    )


def make_scheduler(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.search.scheduler == "fifo":
        return FIFOScheduler()
    a = cfg.search.asha
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=a.metric,
        mode=a.mode,
        max_t=num_reports(cfg),
        grace_period=min(a.grace_period, num_reports(cfg)),
        reduction_factor=a.reduction_factor,
    )


def num_reports(cfg: Config) -> int:
    """How many times a trial reports: every eval period, and always after the last epoch."""
    e, k = cfg.train.epochs, cfg.eval.every_n_epochs
    return e // k + (1 if e % k else 0)


# ---------------------------------------------------------------- resources


def trial_resources(cfg: Config) -> dict[str, float]:
    r = cfg.resources
    need = {"CPU": r.num_workers * r.cpus_per_worker}
    if r.use_gpu:
        need["GPU"] = r.num_workers * r.gpus_per_worker
    return need


def concurrent_trials(cfg: Config, cluster: dict[str, float]) -> int:
    """Trials that fit at once; a trial that can never be scheduled is an error, not a hang."""
    need = trial_resources(cfg)
    fits = []
    for res, amount in need.items():
        have = cluster.get(res, 0.0)
        if amount > have:
            raise ConfigError(
                f"a trial needs {amount:g} {res} (resources.num_workers={cfg.resources.num_workers} x "
                f"{'cpus' if res == 'CPU' else 'gpus'}_per_worker) but the cluster has {have:g}; "
                f"lower resources.num_workers or resources.{'cpus' if res == 'CPU' else 'gpus'}_per_worker"
            )
        if amount > 0:
            fits.append(int(math.floor(have / amount + 1e-9)))
    limit = min(fits) if fits else 1
    if cfg.search.max_concurrent_trials is not None:
        limit = min(limit, cfg.search.max_concurrent_trials)
    return max(1, min(limit, cfg.search.num_samples))


def scaling_config(cfg: Config) -> ScalingConfig:
    r = cfg.resources
    per_worker = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    return ScalingConfig(
        num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=per_worker
    )


# ---------------------------------------------------------------- one trial


def make_trainer(
    cfg: Config,
    *,
    storage: str,
    name: str,
    cache: str | None,
    tensorboard_dir: str | None = None,
    callbacks=(),
) -> TorchTrainer:
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "cache_dir": cache,
            "tensorboard_dir": tensorboard_dir,
        },
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.resources.max_failures),
            # The latest checkpoint resumes the run and is the one evaluated; keep one spare.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )


def cache_dir(storage: str) -> str | None:
    """NegLabel mining cache beside the results, when the storage is a local/NFS path."""
    return None if "://" in storage else str(Path(storage) / ".raymmft_cache")


def trial_driver(params: dict, *, base: dict, storage: str, experiment: str) -> None:
    """The Tune function trainable of one trial: fit a TorchTrainer with this trial's config."""
    cfg = apply_trial_params(Config.model_validate(base), flatten_params(params))
    trial_id = tune.get_context().get_trial_id()
    trainer = make_trainer(
        cfg,
        storage=f"{storage}/{experiment}/{TRAIN_RUNS_DIR}",
        name=trial_id,
        cache=cache_dir(storage),
        tensorboard_dir=f"{storage}/{experiment}/{TENSORBOARD_DIR}/{trial_id}",
        callbacks=[TuneReportCallback()],
    )
    try:
        trainer.fit()
    except WorkerGroupError as exc:
        # Tune records this one-line reason as the trial's error; the searcher is told it failed.
        raise TrialFailedError(failure_reason(exc)) from None


class TrialFailedError(RuntimeError):
    """A trial's training failed for good (after Ray Train's retries); the message says why."""


def failure_reason(exc: WorkerGroupError) -> str:
    """The first failed worker's exception as ``rank r: Type: message`` (e.g. a non-finite loss)."""
    for rank, err in sorted(exc.worker_failures.items()):
        lines = str(err).strip().splitlines()
        if len(lines) > 1:  # a remote traceback: its last "...Error: ..." line
            detail = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1]).strip()
        else:
            detail = f"{type(err).__name__}: {lines[0] if lines else ''}"
        return f"worker rank {rank}: {detail}"
    return str(exc).splitlines()[0]


# ---------------------------------------------------------------- the search


def resolve_storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def local_resources() -> dict[str, float]:
    """What a Ray instance started on this machine will offer (checked before starting it)."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def joins_cluster(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``, as set inside ``ray job submit``), else start Ray here."""
    # Only the loggers passed to tune.RunConfig (JSON, CSV); see run_search.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        # A fresh local instance, never a `ray start` cluster that happens to run on this machine.
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
        ray.init(address="local")


def experiment_dir(cfg: Config) -> Path:
    return Path(resolve_storage(cfg.storage.path)) / cfg.storage.name


def check_experiment_dir(storage: str, name: str, *, resume: bool) -> Path:
    """A new experiment never overwrites an old one; a resumed one must exist."""
    exp_dir = Path(storage) / name
    if "://" not in storage:
        if exp_dir.exists() and not resume:
            raise ConfigError(
                f"experiment '{name}' already exists in {storage}; "
                f"use --resume {exp_dir} to continue it or --name to start another"
            )
        if resume and not exp_dir.is_dir():
            raise ConfigError(f"cannot resume {exp_dir}: no such experiment directory")
    return exp_dir


def prepare_run(
    cfg: Config, *, address: str | None, resume: bool, preflight: bool
) -> tuple[str, Path, int]:
    """Every check that can fail before a trial starts, then Ray: (storage, experiment dir,
    trials that fit at once)."""
    from raymmft.cluster import check_storage, cluster_summary

    storage = resolve_storage(cfg.storage.path)
    exp_dir = check_experiment_dir(storage, cfg.storage.name, resume=resume)
    if preflight:
        from raymmft.preflight import preflight as check_inputs

        check_inputs(cfg)
    if not joins_cluster(address):  # checked before Ray starts here
        concurrent_trials(cfg, local_resources())
        check_storage(storage, num_nodes=1, shared=cfg.storage.shared)
    init_ray(address)
    cluster = cluster_summary(ray)
    print(f"cluster: {cluster}")
    if joins_cluster(address):
        check_storage(storage, num_nodes=cluster.reachable_nodes, shared=cfg.storage.shared)
    fits = concurrent_trials(cfg, cluster.reachable_resources(ray.cluster_resources()))
    if not resume and "://" not in storage:
        exp_dir.mkdir(parents=True, exist_ok=True)
        (exp_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    return storage, exp_dir, fits


def run_search(
    cfg: Config, *, address: str | None = None, resume: bool = False, preflight: bool = True
):
    """Run (or resume) the search; return Ray's ``ResultGrid``."""
    storage, exp_dir, max_concurrent = prepare_run(
        cfg, address=address, resume=resume, preflight=preflight
    )
    experiment = cfg.storage.name
    trainable = tune.with_resources(
        tune.with_parameters(
            trial_driver, base=cfg.to_dict(), storage=storage, experiment=experiment
        ),
        {"cpu": 0, "memory": 1},
    )
    if resume:
        tuner = tune.Tuner.restore(
            str(exp_dir), trainable=trainable, resume_unfinished=True, restart_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(cfg),
                scheduler=make_scheduler(cfg),
                num_samples=cfg.search.num_samples,
                max_concurrent_trials=max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=storage,
                verbose=1,
                # Tune's own TensorBoard logger would write a second HParams entry per trial that
                # TensorBoard may pick over the trial's own (tensorboard/<trial_id>); keep JSON/CSV.
                callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
            ),
        )
    return tuner.fit()


# ---------------------------------------------------------------- one run, no search


def run_train(
    cfg: Config, *, address: str | None = None, resume: bool = False, preflight: bool = True
):
    """One fine-tuning run at the config's fixed values; returns Ray Train's ``Result``."""
    storage, _, _ = prepare_run(cfg, address=address, resume=resume, preflight=preflight)
    return make_trainer(
        cfg,
        storage=storage,
        name=cfg.storage.name,
        cache=cache_dir(storage),
        tensorboard_dir=f"{storage}/{cfg.storage.name}/{TENSORBOARD_DIR}/run",
    ).fit()


def evaluate_remote(cfg: Config, checkpoint_path: str, *, on: str = "test"):
    """Evaluate a checkpoint in a Ray task with one worker's resources (a GPU when trials use one)."""
    from raymmft.summary import evaluate_checkpoint

    task = ray.remote(
        num_cpus=min(1.0, cfg.resources.cpus_per_worker),
        num_gpus=cfg.resources.gpus_per_worker if cfg.resources.use_gpu else 0,
    )(evaluate_checkpoint)
    storage = resolve_storage(cfg.storage.path)
    return ray.get(task.remote(cfg, checkpoint_path, on=on, cache_dir=cache_dir(storage)))


def unfinished_trials(exp_dir: Path) -> list[str]:
    """Trial ids that neither terminated nor errored, from Tune's newest experiment state
    (after Ctrl-C or a crash these continue on ``--resume``)."""
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return []
    data = json.loads(states[-1].read_text())
    out = []
    for trial_json, _runtime in data.get("trial_data", []):
        trial = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
        if trial.get("status") not in ("TERMINATED", "ERROR"):
            out.append(trial.get("trial_id"))
    return out
