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
import pickle
import shlex
import time
import warnings
from typing import Any

import ray
from ray import tune
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    TrainingFailedError,
)
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from raymmft.config import EXPERIMENT_CONFIG_FILE as CONFIG_FILE
from raymmft.config import Config, apply_trial_params, flatten_fields
from raymmft.errors import ConfigError, RunFailedError, first_line
from raymmft.results.experiment import (
    OPTUNA_JOURNAL,
    TENSORBOARD_DIR,
    TRAIN_RUNS_DIR,
    UNFINISHED,
    tune_state,
)
from raymmft.storage import Location
from raymmft.worker import train_fn_per_worker

CACHE_DIR = ".raymmft_cache"


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


TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute that ties an Optuna trial to its Tune trial


class TaggedOptunaSearch(OptunaSearch):
    """Tune's ``OptunaSearch`` that writes each Tune trial's id into its Optuna trial (a user
    attribute), so a study kept in a storage maps back onto Tune's trials on ``--resume``, and
    names the study's objectives after the metrics (as optuna-dashboard shows them)."""

    def _setup_study(self, mode):
        super()._setup_study(mode)
        import optuna

        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self._ot_study.metric_names is None:
                self._ot_study.set_metric_names(list(metrics))

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None and TUNE_TRIAL_ID not in trial.user_attrs:
            trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config


def study_storage(cfg: Config) -> str | None:
    """Where the search's Optuna study lives (study name: the experiment's): ``search.optuna_storage``
    (an RDB URL), else ``<experiment>/optuna.journal`` on local or shared storage (Optuna's
    ``JournalStorage``: ``optuna-dashboard`` reads it live), else nowhere but Tune's own state
    (object storage)."""
    if cfg.search.optuna_storage:
        return cfg.search.optuna_storage
    exp = cfg.storage.experiment
    return exp.join(OPTUNA_JOURNAL).path if exp.is_local else None


def open_study_storage(spec: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in spec:
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as exc:  # SQLAlchemy: unknown dialect, missing driver, unreachable server
            raise ConfigError(
                f"search.optuna_storage {spec!r}: cannot open the study storage ({first_line(exc)})"
            ) from None
    os.makedirs(os.path.dirname(spec), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def optuna_search(cfg: Config, storage: str | None = None) -> TaggedOptunaSearch:
    """Tune's ``OptunaSearch`` with the configured sampler (TPE, NSGA-II or random), seeded, on the
    objectives, trying ``search.initial_points`` first; its study in ``storage`` when given."""
    import optuna

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
    return TaggedOptunaSearch(
        metric=metrics,
        mode=modes,
        sampler=samplers[s.sampler](),
        points_to_evaluate=points,
        storage=open_study_storage(storage) if storage else None,
        study_name=cfg.storage.name if storage else None,
    )


def make_searcher(cfg: Config, max_concurrent: int) -> ResumableSearch:
    """The search algorithm: ``optuna_search`` with at most ``max_concurrent`` trials at once."""
    from ray.tune.search import ConcurrencyLimiter

    storage = study_storage(cfg)
    limiter = ConcurrencyLimiter(optuna_search(cfg, storage), max_concurrent=max_concurrent)
    return ResumableSearch(limiter, storage=storage)


class ResumableSearch(SearchGenerator):
    """Tune's ``SearchGenerator`` over ``ConcurrencyLimiter(OptunaSearch)``, made consistent on
    ``--resume`` with the trials Tune restores.

    Tune saves the experiment state (every trial, its status and config) and the searcher's state
    (Optuna's trials, the generator's trial counter, the limiter's live trials) as separate files,
    and on object storage uploads them in parallel: a driver killed during an upload leaves one
    newer than the other. Restored as they are, the searcher then meets a trial it never suggested
    (a ``KeyError`` inside OptunaSearch) or counts too few trials and runs more than
    ``num_samples``. After restoring, the searcher is brought in line with the experiment state,
    which is what Tune runs: a trial Optuna does not know is added to the study with its config,
    a trial Tune has finished is told its final result when Optuna still has it running (Tune
    will not run it again, so nothing else would tell it), a trial Optuna suggested that Tune never
    recorded is told failed, and the counter and the live trials are those of the experiment
    state. (Reaches into OptunaSearch's ``_ot_trials``/``_ot_study``: no public API holds them.)
    """

    def __init__(self, searcher, *, storage: str | None = None):
        super().__init__(searcher)
        self.storage = storage

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        if self.storage is not None:
            self._reattach_study()
        self.reconcile(tune_state(Location.parse(dirpath)))

    def _reattach_study(self) -> None:
        """The study as its storage holds it (written at every ask and tell, so never behind
        Tune's pickled copy), its trials mapped to Tune's by their ``tune_trial_id``."""
        import optuna

        base = self.searcher.searcher
        study = optuna.load_study(
            study_name=base._study_name,
            storage=open_study_storage(self.storage),
            sampler=base._sampler,
        )
        trials = [t for t in study.get_trials(deepcopy=False) if TUNE_TRIAL_ID in t.user_attrs]
        base._ot_study = study
        base._ot_trials = {
            t.user_attrs[TUNE_TRIAL_ID]: optuna.Trial(study, t._trial_id) for t in trials
        }
        base._completed_trials = {
            t.user_attrs[TUNE_TRIAL_ID] for t in trials if t.state.is_finished()
        }

    def reconcile(self, trials: dict[str, dict]) -> None:
        import optuna

        limiter, base = self.searcher, self.searcher.searcher
        for trial_id, trial in trials.items():
            if trial_id not in base._ot_trials:
                params = {
                    k.replace(".", "/"): v for k, v in flatten_fields(trial["config"]).items()
                }
                base._ot_study.enqueue_trial(params, skip_if_exists=False)
                base._ot_trials[trial_id] = base._ot_study.ask(fixed_distributions=base._space)
                base._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
            if trial_id in base._completed_trials:
                continue
            if trial["status"] == "TERMINATED":
                base.on_trial_complete(trial_id, result=trial["last_result"] or None)
            elif trial["status"] == "ERROR":
                base.on_trial_complete(trial_id, error=True)
        for trial_id, ot_trial in base._ot_trials.items():
            if trial_id not in trials and trial_id not in base._completed_trials:
                base._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                base._completed_trials.add(trial_id)
        limiter.live_trials = {t for t, v in trials.items() if v["status"] in UNFINISHED}
        limiter.num_unfinished_live_trials = len(limiter.live_trials)
        self._counter = len(trials)


def make_scheduler(cfg: Config):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.search.scheduler == "fifo":
        return FIFOScheduler()
    a = cfg.search.asha
    reports = num_reports(cfg)
    if a.grace_period > reports:  # a quick run (--set train.epochs=1): run it, and say so
        print(
            f"note: search.asha.grace_period is {a.grace_period} evaluations but a trial reports "
            f"{reports} (train.epochs {cfg.train.epochs}, eval.every_n_epochs "
            f"{cfg.eval.every_n_epochs}): ASHA stops no trial in this search"
        )
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=a.metric,
        mode=a.mode,
        max_t=reports,
        grace_period=min(a.grace_period, reports),
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
    storage: Location,
    name: str,
    cache: Location | None,
    tensorboard_dir: Location | None = None,
    negatives: str | None = None,
    callbacks=(),
) -> TorchTrainer:
    """A ``TorchTrainer`` whose run lives at ``storage/name``; locations travel as URIs (strings:
    every worker opens them itself, with its own node's credentials)."""
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "cache_dir": cache.uri if cache is not None else None,
            "tensorboard_dir": tensorboard_dir.uri if tensorboard_dir is not None else None,
            "negatives": negatives,
            "started_at": time.time(),
        },
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=name,
            storage_path=storage.uri,
            failure_config=FailureConfig(max_failures=cfg.resources.max_failures),
            # The latest checkpoint resumes the run and is the one evaluated; keep one spare.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )


def cache_location(cfg: Config) -> Location:
    """NegLabel mining cache beside the experiments, on the same storage (local, NFS or a bucket)."""
    return cfg.storage.location.join(CACHE_DIR)


def one_worker(cfg: Config) -> dict[str, float]:
    """``ray.remote`` resources of one trial worker (a GPU when trials use GPUs)."""
    r = cfg.resources
    return {"num_cpus": r.cpus_per_worker, "num_gpus": r.gpus_per_worker if r.use_gpu else 0}


def prepare_remote(cfg: Config, exp: Location) -> str | None:
    """The search's preparation step (``raymmft.prepare``), once, in one Ray task with one
    worker's resources; already done (``--resume``) or not shareable between trials: skipped.
    Returns the prepared negatives' URI for the trials (``None``: each trial mines)."""
    from raymmft.prepare import per_trial_fields, prepare, prepared_files

    varying = per_trial_fields(cfg)
    if varying:
        print(f"not preparing the search: {', '.join(varying)} differ between trials")
        return None
    done = prepared_files(exp)
    if done["zero_shot"] is None:
        task = ray.remote(**one_worker(cfg))(prepare)
        done = ray.get(task.remote(cfg, exp.uri, cache=cache_location(cfg).uri))
        return done["negatives"]
    print(f"prepared already: {exp.join('prepared')}")
    return done["negatives"].uri if done["negatives"] is not None else None


def trial_driver(params: dict, *, base: dict, negatives: str | None) -> None:
    """The Tune function trainable of one trial: fit a TorchTrainer with this trial's config."""
    cfg = apply_trial_params(Config.model_validate(base), flatten_params(params))
    trial_id = tune.get_context().get_trial_id()
    exp = cfg.storage.experiment
    trainer = make_trainer(
        cfg,
        storage=exp.join(TRAIN_RUNS_DIR),
        name=trial_id,
        cache=cache_location(cfg),
        tensorboard_dir=exp.join(TENSORBOARD_DIR, trial_id),
        negatives=negatives,
        callbacks=[TuneReportCallback()],
    )
    try:
        trainer.fit()
    except TrainingFailedError as exc:
        # Tune records this one-line reason as the trial's error; the searcher is told it failed.
        raise TrialFailedError(failure_reason(exc)) from None


class TrialFailedError(RuntimeError):
    """A trial's training failed for good (after Ray Train's retries); the message says why."""


def failure_reason(exc: TrainingFailedError) -> str:
    """The first failed worker's exception as ``rank r: Type: message`` (e.g. a non-finite loss);
    a failure of Ray Train's controller as its first line."""
    for rank, err in sorted(getattr(exc, "worker_failures", {}).items()):
        lines = str(err).strip().splitlines()
        if len(lines) > 1:  # a remote traceback: its last "...Error: ..." line
            detail = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1]).strip()
        else:
            detail = f"{type(err).__name__}: {lines[0] if lines else ''}"
        return f"worker rank {rank}: {detail}"
    return str(exc).splitlines()[0]


# ---------------------------------------------------------------- the search


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
    given = address
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address, given=given is not None)
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise unreachable(address, first_line(exc, 160)) from None
    else:
        # A fresh local instance, never a `ray start` cluster that happens to run on this machine.
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
        ray.init(address="local")


REACH_TIMEOUT_S = 5.0


def check_reachable(address: str, *, given: bool = True) -> None:
    """A ``host:port`` (or ``ray://host:port``) address answers a TCP connection within a few
    seconds; ray.init would otherwise retry for minutes. ``auto`` is left to Ray; a ``given``
    (``--address``) value that is not an address is an error, ``$RAY_ADDRESS`` is left to Ray."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or any(
        c.isspace() or c in "/?#" for c in host
    ):
        if not given:
            return
        raise ConfigError(
            f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT (a port in "
            "1-65535)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = (
            "connection refused"
            if isinstance(exc, ConnectionRefusedError)
            else (
                f"no answer in {REACH_TIMEOUT_S:g} s"
                if isinstance(exc, TimeoutError)
                else exc.strerror or str(exc)
            )
        )
        raise unreachable(address, reason) from None


def unreachable(address: str, reason: str) -> ConfigError:
    return ConfigError(
        f"cannot reach a Ray cluster at {address} ({reason}); start one with "
        f"`ray start --head`, or leave out --address to start Ray here"
    )


def resource_variants(cfg: Config) -> list[Config]:
    """``cfg`` and its trials at the extremes of every searched ``resources.*`` field: what a
    trial can ask the cluster for."""
    variants = [cfg]
    for key, dist in cfg.search.distributions.items():
        if key.startswith("resources."):
            variants += [apply_trial_params(cfg, {key: value}) for value in dist.extremes()]
    return variants


def check_experiment_dir(cfg: Config, *, resume: bool) -> Location:
    """A new experiment never overwrites an old one; a resumed one must exist."""
    exp = cfg.storage.experiment
    if not resume and exp.exists():
        raise ConfigError(
            f"experiment '{cfg.storage.name}' already exists in {cfg.storage.location}; "
            f"use --resume {shlex.quote(exp.uri)} to continue it or --name to start another"
        )
    if resume and not exp.is_dir():
        raise ConfigError(f"cannot resume {exp}: no such experiment directory")
    return exp


def prepare_run(
    cfg: Config, *, address: str | None, resume: bool, preflight: bool
) -> tuple[Location, int]:
    """Every check that can fail before a trial starts, then Ray: (experiment directory, trials
    that fit at once)."""
    from raymmft.cluster import check_storage, cluster_summary

    # Absolute from here on: trials run in other processes, with other working directories.
    cfg.storage.path = cfg.storage.location.uri
    exp = check_experiment_dir(cfg, resume=resume)
    if preflight:
        from raymmft.preflight import preflight as check_inputs

        check_inputs(cfg)
    storage = cfg.storage.location
    variants = resource_variants(cfg)
    if not joins_cluster(address):  # checked before Ray starts here
        for variant in variants:
            concurrent_trials(variant, local_resources())
        check_storage(storage, num_nodes=1, shared=cfg.storage.shared)
    init_ray(address)
    cluster = cluster_summary(ray)
    print(f"cluster: {cluster}")
    if joins_cluster(address):
        check_storage(storage, num_nodes=cluster.reachable_nodes, shared=cfg.storage.shared)
    reachable = cluster.reachable_resources(ray.cluster_resources())
    fits = min(concurrent_trials(variant, reachable) for variant in variants)
    if not resume:
        exp.join(CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    return exp, fits


def run_search(
    cfg: Config, *, address: str | None = None, resume: bool = False, preflight: bool = True
):
    """Run (or resume) the search; return Ray's ``ResultGrid``."""
    if cfg.search.optuna_storage:  # an RDB URL that cannot be opened fails before Ray starts
        open_study_storage(cfg.search.optuna_storage)
    exp, max_concurrent = prepare_run(cfg, address=address, resume=resume, preflight=preflight)
    negatives = prepare_remote(cfg, exp)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=cfg.to_dict(), negatives=negatives),
        {"cpu": 0, "memory": 1},
    )
    if resume:
        try:
            tuner = tune.Tuner.restore(
                exp.uri, trainable=trainable, resume_unfinished=True, restart_errored=False
            )
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ConfigError(
                f"cannot resume {exp.uri}: Tune's pickled state (tuner.pkl) cannot be read "
                f"({type(exc).__name__}: {first_line(exc, 120)}); "
                "the file is damaged"
            ) from None
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(cfg, max_concurrent),
                scheduler=make_scheduler(cfg),
                num_samples=cfg.search.num_samples,
            ),
            run_config=tune.RunConfig(
                name=cfg.storage.name,
                storage_path=cfg.storage.location.uri,
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
    exp, _ = prepare_run(cfg, address=address, resume=resume, preflight=preflight)
    trainer = make_trainer(
        cfg,
        storage=cfg.storage.location,
        name=cfg.storage.name,
        cache=cache_location(cfg),
        tensorboard_dir=exp.join(TENSORBOARD_DIR, "run"),
        negatives=prepare_remote(cfg, exp),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as exc:
        raise RunFailedError(f"training failed: {failure_reason(exc)}") from None


def evaluate_remote(cfg: Config, checkpoint: str | Location, *, on: str = "test"):
    """Evaluate a checkpoint (a directory on the experiment's storage) in a Ray task with one
    worker's resources, with the negatives the trials used."""
    from raymmft.loop import evaluate_checkpoint
    from raymmft.prepare import prepared_files

    negatives = prepared_files(cfg.storage.experiment)["negatives"]
    task = ray.remote(**one_worker(cfg))(evaluate_checkpoint)
    ref = task.remote(
        cfg,
        Location.parse(checkpoint).uri,
        on=on,
        negatives=negatives.uri if negatives is not None else None,
        cache=cache_location(cfg).uri,
    )
    return ray.get(ref)
