"""A search: Ray Tune over trials (``raymmft.trial``), with Optuna's sampler (``raymmft.searcher``)
and ASHA; and ``run_train``, one run at the config's fixed values.

The trial driver takes no CPU (it only waits), so the workers can use every core; Tune does not
count Train workers, so the number of concurrent trials is derived from the cluster's resources and
each trial's needs. Every check that can fail runs before Ray starts where it can
(``start_run``); the search's preparation step then runs once (``run_preparation``).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shlex
import signal
import threading

import ray
from ray import tune
from ray.train import TrainingFailedError
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from raymmft.cluster import init_ray, joins_cluster, local_resources
from raymmft.config import Config, apply_trial_params
from raymmft.config_file import EXPERIMENT_CONFIG_FILE as CONFIG_FILE
from raymmft.errors import ConfigError, ExperimentInUseError, RunFailedError, first_line
from raymmft.lease import ExperimentLease
from raymmft.results.experiment import TENSORBOARD_DIR
from raymmft.search_space import tune_param_space
from raymmft.searcher import make_searcher, open_study_storage
from raymmft.storage import Location
from raymmft.trial import (
    TrialFailedError,
    cache_location,
    confirm_driver,
    failure_reason,
    fit_with_restarts,
    make_trainer,
    trial_driver,
)

# ---------------------------------------------------------------- ASHA


def trial_scheduler(cfg: Config):
    """ASHA on ``search.asha`` (stops trials early), or FIFO (runs every trial to the end)."""
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


def write_search_listings(cfg: Config, exp: Location, listed=None) -> dict[str, str]:
    """Each ImageFolder of the config listed once per search (the preflight's listings, or a walk
    with ``--no-preflight``), stored in ``<experiment>/prepared/listings``: ``{root: URI}`` for
    the preparation step, the trials, their restarts and the final evaluation, which open the
    folders from them without walking them. A resumed search keeps the stored ones."""
    from raymmft.data.listing import LISTINGS_DIR, data_specs, write_listings
    from raymmft.prepare import PREPARED_DIR

    return write_listings(
        data_specs(cfg.data), exp.join(PREPARED_DIR, LISTINGS_DIR), listed=listed or None
    )


def run_preparation(cfg: Config, exp: Location, listings: dict | None = None) -> str | None:
    """The search's preparation step (``raymmft.prepare``), once, on as many workers as one
    trial has (mining and the zero-shot evaluation split over them, ``run_on_workers``);
    already done (``--resume``) or not shareable between trials: skipped. Returns the prepared
    negatives' URI for the trials (``None``: each trial mines)."""
    from raymmft.prepare import per_trial_fields, prepared_files
    from raymmft.worker import prepare_fn_per_worker

    varying = per_trial_fields(cfg)
    if varying:
        print(f"not preparing the search: {', '.join(varying)} differ between trials")
        return None
    done = prepared_files(exp)
    if done["zero_shot"] is None:
        preparation = {
            "cfg": cfg,
            "experiment": exp.uri,
            "cache": cache_location(cfg).uri,
            "listings": listings,
        }
        done = run_on_workers(
            cfg, prepare_fn_per_worker, {"preparation": preparation}, "preparation step"
        )
        return done["negatives"]
    print(f"prepared already: {exp.join('prepared')}")
    return done["negatives"].uri if done["negatives"] is not None else None


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


def hold_experiment(
    cfg: Config, *, resume: bool, command: str, address: str | None = None, preflight: bool = True
) -> ExperimentLease:
    """Every check of the input that can fail before anything is written (the Optuna storage,
    the preflight, whether a trial fits this machine), then the experiment directory, checked
    (a new one does not exist, a resumed one does) and held by this driver (``raymmft.lease``)
    until the command ends: use it as a context manager around everything the command writes.
    A start that fails or is interrupted before its search holds results (``lease.started``)
    removes the directory it created."""
    from raymmft.cluster import check_local_writable

    if cfg.search.optuna_storage:  # an RDB URL that cannot be opened fails before Ray starts
        open_study_storage(cfg.search.optuna_storage)
    listed = {}
    if preflight:
        from raymmft.preflight import preflight as check_inputs

        listed = check_inputs(cfg)
    if not joins_cluster(address):  # checked before Ray starts here
        for variant in resource_variants(cfg):
            concurrent_trials(variant, local_resources())
    if cfg.storage.location.is_local:  # its own message, before the lease is written there
        check_local_writable(cfg.storage.location)
        if resume:
            check_free_space(cfg.storage.experiment)
    lease = ExperimentLease(cfg.storage.experiment, command=command)
    lease.listed = listed  # the preflight's ImageFolder listings ({} with --no-preflight)
    held = lease.read()
    if held is not None and not lease.is_stale(held):  # said before "already exists"
        raise ExperimentInUseError(lease.in_use(held))
    check_experiment_dir(cfg, resume=resume)
    return lease


# room for the next checkpoints beyond the largest one an experiment holds: a resume that runs
# out of space would cut Tune's files off as it rewrites them
FREE_SPACE_MARGIN = 16 * 2**20


def check_free_space(exp: Location) -> None:
    """A resumed experiment on a local path has room for two more checkpoints of the size it
    writes (a full disk cuts files off mid-write), else a one-line error before anything is
    written."""
    import shutil

    from raymmft.results.experiment import TRAIN_RUNS_DIR

    if not exp.local_path.is_dir():
        return  # check_experiment_dir says so
    runs = exp.local_path / TRAIN_RUNS_DIR
    sizes = [
        sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
        for checkpoint in runs.glob("*/checkpoint_*")
        if checkpoint.is_dir()
    ]
    need = 2 * max(sizes, default=0) + FREE_SPACE_MARGIN
    free = shutil.disk_usage(exp.local_path).free
    if free < need:
        raise RunFailedError(
            f"storage {exp.parent} has {free / 2**20:.0f} MiB free, and a resumed search needs "
            f"{need / 2**20:.0f} MiB (two checkpoints of {max(sizes, default=0) / 2**20:.0f} MiB "
            "and a margin); free space, then resume"
        )


def start_run(cfg: Config, *, address: str | None) -> tuple[Location, int]:
    """Ray, and the checks that need it: (experiment directory, trials that fit at once). The
    caller holds the experiment (``hold_experiment``), whose checks ran first."""
    from raymmft.cluster import check_storage, cluster_summary

    exp = cfg.storage.experiment
    storage = cfg.storage.location
    variants = resource_variants(cfg)
    if not joins_cluster(address):
        check_storage(storage, num_nodes=1, shared=cfg.storage.shared)
    init_ray(address)
    cluster = cluster_summary(ray)
    print(f"cluster: {cluster}")
    if joins_cluster(address):
        check_storage(storage, num_nodes=cluster.reachable_nodes, shared=cfg.storage.shared)
    reachable = cluster.reachable_resources(ray.cluster_resources())
    fits = min(concurrent_trials(variant, reachable) for variant in variants)
    if not exp.join(CONFIG_FILE).is_file():  # a resumed start that never got this far has one
        exp.join(CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return exp, fits


def run_search(
    cfg: Config,
    lease: ExperimentLease,
    *,
    address: str | None = None,
    resume: bool = False,
):
    """Run (or resume) the search in the experiment ``lease`` holds; return Ray's
    ``ResultGrid``. ``--resume`` of a start that was interrupted before Tune wrote its state
    (during the preparation step) starts the search."""
    exp, max_concurrent = start_run(cfg, address=address)
    listings = write_search_listings(cfg, exp, lease.listed)
    # A failed trial is one line at the search's end and its traceback in its error.txt; Tune's
    # controller would print each one's traceback as it happens. A storage that fails is one
    # line at the end too (STORAGE_FAULTS), not a traceback per state write that fails.
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
    negatives = run_preparation(cfg, exp, listings)
    faults = StorageFaults()
    trainable = _trainable(trial_driver, cfg, negatives, listings, faults.queue)
    lease.started = True
    if resume and tune.Tuner.can_restore(exp.uri):
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
            param_space=tune_param_space(cfg.search.space),
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(cfg, max_concurrent),
                scheduler=trial_scheduler(cfg),
                num_samples=cfg.search.num_samples,
            ),
            run_config=_run_config(cfg.storage.name, cfg.storage.location),
        )
    with faults:
        grid = fit_tuner(tuner)
    from raymmft.results.experiment import read_experiment

    if not faults.seen and not read_experiment(exp).unfinished():
        with faults:
            run_confirmation(cfg, exp, negatives, max_concurrent, listings, faults.queue)
    return grid


def fit_tuner(tuner: tune.Tuner):
    """``tuner.fit()``, with this process's Ctrl-C handler given back afterwards: Tune's (which
    stops the search gracefully) stays installed after the fit until it fires, and would swallow
    the first Ctrl-C of everything after it (the test evaluation, the report)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        return tuner.fit()
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


def _trainable(driver, cfg: Config, negatives: str | None, listings: dict, faults=None):
    """A Tune trainable of ``driver`` with the config, the prepared negatives, the datasets'
    listings and the queue of storage faults; it takes no CPU (it only waits for its
    TorchTrainer)."""
    return tune.with_resources(
        tune.with_parameters(
            driver, base=cfg, negatives=negatives, listings=listings, faults=faults
        ),
        {"cpu": 0, "memory": 1},
    )


# What stopped the search, when its storage failed (full, read-only, gone): one line per fault.
STORAGE_FAULTS: list[str] = []


class StorageFaults:
    """The queue on which trials put a fault of the experiment's storage, and, while a fit runs
    (``with faults:``), a thread that stops the search at the first one as Ctrl-C does (Tune
    keeps its state, the trials stay unfinished) and keeps it in ``STORAGE_FAULTS``."""

    def __init__(self):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seen(self) -> bool:
        return bool(STORAGE_FAULTS)

    def _watch(self) -> None:
        from ray.util.queue import Empty

        while not self._done.is_set():
            try:
                fault = self.queue.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # the queue's actor is gone: Ray is shutting down
                return
            if not STORAGE_FAULTS:
                signal.raise_signal(signal.SIGINT)  # runs Tune's handler in the main thread
            STORAGE_FAULTS.append(fault)

    def __enter__(self) -> StorageFaults:
        self._done.clear()
        self._thread = threading.Thread(target=self._watch, name="storage-faults", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _run_config(name: str, storage: Location) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=storage.uri,
        verbose=1,
        # a trial's Tune checkpoint is its progress (raymmft.trial.TrialProgress): the latest
        # (and two spares: Tune's state on storage may name one that is a little older)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        # Tune's own TensorBoard logger would write a second HParams entry per trial that
        # TensorBoard may pick over the trial's own (tensorboard/<trial_id>); keep JSON/CSV.
        callbacks=[
            JsonLoggerCallback(),
            CSVLoggerCallback(),
            TuneStateCopy(storage.join(name).uri),
        ],
    )


# raymmft's copy of Tune's newest state (``TuneStateCopy``): what --resume restores when a full
# or failing storage cut Tune's own file off
STATE_COPY_FILE = ".raymmft-tune-state.json"


class TuneStateCopy(tune.Callback):
    """Keeps a copy of Tune's newest ``experiment_state-*.json`` that parses, written atomically
    beside it (looked at after every step of Tune's loop, at most every 2 s). Tune overwrites its state file in
    place, so a storage that fills up or fails mid-write leaves it cut off; the copy is then
    the last whole one (``restore_tune_state``)."""

    def __init__(self, experiment: str):
        self.experiment = experiment
        self._copied: str | None = None
        self._last = 0.0

    def on_step_end(self, iteration, trials, **info):
        self._copy()  # at most every 2 s: from Tune's first state on

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._copy()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._copy(force=True)

    def on_experiment_end(self, trials, **info):
        self._copy(force=True)

    def _copy(self, force: bool = False) -> None:
        import time

        from raymmft.errors import StorageError
        from raymmft.results.experiment import NotTuneState, newest_state, parse_tune_state

        if not force and time.monotonic() - self._last < 2.0:
            return
        self._last = time.monotonic()
        try:
            exp = Location.parse(self.experiment)
            newest = newest_state(exp.children())
            if newest is None:
                return
            text = exp.join(newest).read_text()
            if text == self._copied:
                return
            parse_tune_state(text)
            exp.join(STATE_COPY_FILE).write_text(json.dumps({"file": newest, "state": text}))
            self._copied = text
        except (StorageError, NotTuneState, ValueError, OSError):
            pass  # a state being written or a failing storage: the copy stays the last whole one


def restore_tune_state(experiment: str) -> str | None:
    """When the newest Tune state of ``experiment`` is cut off (not JSON) and raymmft's copy
    (``TuneStateCopy``) is whole, put the copy in its place; returns what was done, for a note."""
    from raymmft.errors import StorageError
    from raymmft.results.experiment import NotTuneState, newest_state, parse_tune_state

    try:
        exp = Location.parse(experiment)
        names = exp.children()
        newest = newest_state(names)
        if newest is None or STATE_COPY_FILE not in names:
            return None
        try:
            json.loads(exp.join(newest).read_text())
            return None  # whole: Tune restores it
        except ValueError:
            pass
        copy = json.loads(exp.join(STATE_COPY_FILE).read_text())
        parse_tune_state(copy["state"])
        exp.join(newest).write_text(copy["state"])
    except (StorageError, NotTuneState, ValueError, KeyError, TypeError, OSError):
        return None  # check_resumable says what is wrong
    return f"Tune's state {newest} was cut off; restored raymmft's copy of it ({copy['file']})"


def confirmation_runs(cfg: Config, exp: Location) -> list[dict]:
    """What ``search.confirm`` trains: for each of the ``top_k`` finished trials by score (a
    trial's best candidate counts, its interpolations included), its searched values with
    ``seeds`` further seeds (its own ``train.seed`` + 1, + 2, ...)."""
    from raymmft.results.experiment import read_experiment
    from raymmft.results.rows import FINISHED, searched_params, to_float, trial_rows

    c = cfg.search.confirm
    best: dict[str, float] = {}
    trials: dict[str, dict] = {}
    for r in trial_rows(read_experiment(exp)):
        score = to_float(r.get("score"))
        if r["baseline"] or r["stop_reason"] not in FINISHED or math.isnan(score):
            continue
        trial = r.get("trial", r["trial_id"])
        best[trial] = max(best.get(trial, -math.inf), score)
        if r.get("alpha", 1.0) == 1.0:
            trials[trial] = r
    top = sorted((t for t in best if t in trials), key=lambda t: -best[t])[: c.top_k]
    runs = []
    for trial in top:
        params = searched_params(trials[trial])
        own = int(params.get("train.seed", cfg.train.seed))
        runs += [
            {"candidate": trial, "params": params, "seed": own + i} for i in range(1, c.seeds + 1)
        ]
    return runs


def run_confirmation(
    cfg: Config,
    exp: Location,
    negatives: str | None,
    max_concurrent: int,
    listings: dict,
    faults=None,
):
    """Train the top trials again with further seeds (``search.confirm``), as trials are: Ray
    Train runs on the same resources, as many at once as fit, in a Tune experiment of their own
    (``<experiment>/confirm``) that ``--resume`` continues without training a finished run again."""
    from raymmft.results.experiment import CONFIRM_DIR

    if not cfg.search.confirm.top_k:
        return None
    location = exp.join(CONFIRM_DIR)
    trainable = _trainable(confirm_driver, cfg, negatives, listings, faults)
    if tune.Tuner.can_restore(location.uri):
        print(f"confirmation: resuming {location}")
        tuner = tune.Tuner.restore(
            location.uri, trainable=trainable, resume_unfinished=True, restart_errored=False
        )
    else:
        runs = confirmation_runs(cfg, exp)
        if not runs:
            print("confirmation: no finished trial to confirm")
            return None
        tops = ", ".join(dict.fromkeys(r["candidate"] for r in runs))
        print(f"confirmation: {tops} with {cfg.search.confirm.seeds} further seed(s) each")
        tuner = tune.Tuner(
            trainable,
            param_space={"run": tune.grid_search(runs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
            run_config=_run_config(CONFIRM_DIR, exp),
        )
    return fit_tuner(tuner)


# ---------------------------------------------------------------- one run, no search


def run_train(cfg: Config, lease: ExperimentLease, *, address: str | None = None):
    """One fine-tuning run at the config's fixed values, in the experiment ``lease`` holds;
    returns Ray Train's ``Result``."""
    exp, _ = start_run(cfg, address=address)
    listings = write_search_listings(cfg, exp, lease.listed)
    negatives = run_preparation(cfg, exp, listings)
    lease.started = True
    try:
        return fit_with_restarts(
            lambda: make_trainer(
                cfg,
                storage=cfg.storage.location,
                name=cfg.storage.name,
                cache=cache_location(cfg),
                tensorboard_dir=exp.join(TENSORBOARD_DIR, "run"),
                negatives=negatives,
                listings=listings,
            ),
            cfg.resources.max_failures,
            what="the run",
        )
    except TrialFailedError as exc:
        raise RunFailedError(f"training failed: {exc.reason}") from None


# Ray Train runs of the work done on a trial's workers outside the trials (the preparation
# step, the final evaluation), under the experiment
GROUP_RUNS_DIR = "group_runs"


def run_on_workers(cfg: Config, fn, inputs: dict, name: str):
    """``fn`` (a ``raymmft.worker`` function) on as many workers as one trial has, each with
    ``{**inputs, "results": queue}``, in a ``TorchTrainer`` of its own (the process group, the
    devices, the resources a trial takes); returns what rank 0 put on the queue."""
    import uuid

    from ray.train import FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from raymmft.trial import scaling_config

    results = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        fn,
        train_loop_config={**inputs, "results": results},
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=f"{name.split()[0]}-{uuid.uuid4().hex[:8]}",
            storage_path=cfg.storage.experiment.join(GROUP_RUNS_DIR).uri,
            failure_config=FailureConfig(max_failures=0),
            logging_config=LoggingConfig(log_level="CRITICAL"),
        ),
    )
    # fitted in a thread: in the main thread a TorchTrainer takes over Ctrl-C (and keeps its
    # handler afterwards), where here Ctrl-C and SIGTERM stop the command (KeyboardInterrupt)
    outcome: dict = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:
            outcome["error"] = exc

    fitting = threading.Thread(target=fit, name=f"fit-{name}", daemon=True)
    fitting.start()
    while fitting.is_alive():
        fitting.join(0.2)
    error = outcome.get("error")
    if isinstance(error, TrainingFailedError):
        raise RunFailedError(f"the {name} failed: {failure_reason(error)}") from None
    if error is not None:
        raise error
    return results.get(timeout=60)


def evaluate_remote(cfg: Config, checkpoint: str | Location | None, *, on: str = "test", **options):
    """Evaluate a checkpoint (a directory on the experiment's storage; ``None``: the starting
    model) on as many workers as one trial has (``run_on_workers``: each encodes its share of
    every set, as the trials' evaluations do), with the negatives and listings the trials used;
    ``options``: ``bootstrap`` and ``compare_start`` of ``raymmft.loop.evaluate_checkpoint``."""
    from raymmft.data.listing import LISTINGS_DIR, data_specs, stored_listings
    from raymmft.prepare import PREPARED_DIR, prepared_files
    from raymmft.worker import evaluate_fn_per_worker

    negatives = prepared_files(cfg.storage.experiment)["negatives"]
    listings = stored_listings(
        data_specs(cfg.data), cfg.storage.experiment.join(PREPARED_DIR, LISTINGS_DIR)
    )
    evaluation = {
        "cfg": cfg,
        "checkpoint": Location.parse(checkpoint).uri if checkpoint is not None else None,
        "on": on,
        "negatives": negatives.uri if negatives is not None else None,
        "cache": cache_location(cfg).uri,
        "listings": listings,
        **options,
    }
    return run_on_workers(
        cfg, evaluate_fn_per_worker, {"evaluation": evaluation}, f"evaluation on the {on} sets"
    )
