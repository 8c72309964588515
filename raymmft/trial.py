"""One trial: a Ray Train ``TorchTrainer`` over the worker loop, and the Tune trainable that fits it.

Ray 2.60 runs Train V2, where a ``TorchTrainer`` cannot be handed to ``Tuner``: each trial is a
Tune *function trainable* (``trial_driver``) that fits a ``TorchTrainer`` in a thread; the
trainer's ``ForwardReports`` callback hands rank 0's reports to the driver, which reports each to
Tune with a small Tune checkpoint (``TrialProgress``: the epoch and the Train checkpoint). Tune
restores a trial's logs (``result.json``, ``progress.csv``) on ``--resume`` only for a trial with
a Tune checkpoint, so this is what keeps a resumed trial's history; the epochs the Train
checkpoint holds past Tune's record are reported again by the workers (``raymmft.loop``). What
a trial's workers receive is one typed object, ``TrialInputs``: the trial's whole validated config
and where its files go.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path

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
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Empty, Queue

from raymmft.config import Config, apply_trial_params
from raymmft.faults import pause_if_asked
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
    reported_epoch: int | None = None
    # ImageFolder root -> its listing's URI (raymmft.data.listing), stored once per search
    listings: dict[str, str] = {}
    # a checkpoint to resume from when Ray Train has none (its own record was cut off)
    resume_from: str | None = None


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


def make_trainer(
    cfg: Config,
    *,
    storage: Location,
    name: str,
    cache: Location | None,
    tensorboard_dir: Location | None = None,
    negatives: str | None = None,
    callbacks=(),
    reported_epoch: int | None = None,
    listings: dict[str, str] | None = None,
    resume_from: str | None = None,
) -> TorchTrainer:
    """A ``TorchTrainer`` whose run lives at ``storage/name``; ``reported_epoch``: the last epoch
    the search recorded (a resumed run reports the later ones its checkpoint holds again)."""
    inputs = TrialInputs(
        config=cfg,
        cache_dir=cache.uri if cache is not None else None,
        tensorboard_dir=tensorboard_dir.uri if tensorboard_dir is not None else None,
        negatives=negatives,
        started_at=time.time(),
        reported_epoch=reported_epoch,
        listings=dict(listings or {}),
        resume_from=resume_from,
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


def trial_driver(
    params: dict, *, base: Config, negatives: str | None, listings=None, faults=None
) -> None:
    """The Tune function trainable of one trial: fit a TorchTrainer with this trial's config."""
    trial_id = tune.get_context().get_trial_id()
    cfg = apply_trial_params(base, flatten_fields(params))
    _fit_trial(cfg, trial_id, trial_id, negatives, listings, faults)


def confirm_driver(
    config: dict, *, base: Config, negatives: str | None, listings=None, faults=None
) -> None:
    """The Tune function trainable of one confirmation run: a search's trial (``run.params``,
    dotted) trained again with another ``train.seed`` (``run.seed``); its TensorBoard run is
    ``<candidate>-seed<seed>``."""
    run = config["run"]
    cfg = apply_trial_params(base, {**run["params"], "train.seed": run["seed"]})
    trial_id = tune.get_context().get_trial_id()
    run_name = f"{run['candidate']}-seed{run['seed']}"
    _fit_trial(cfg, trial_id, run_name, negatives, listings, faults)


def _fit_trial(
    cfg: Config,
    trial_id: str,
    run_name: str,
    negatives: str | None,
    listings: dict | None,
    faults=None,
) -> None:
    """Fit the trial's TorchTrainer (with restarts) in a thread and report what it forwards to
    Tune from this one, each report with the trial's progress as a Tune checkpoint. A fault of
    the experiment's storage (full, read-only, gone) is not the trial's: it is put on
    ``faults`` (the search then stops as on Ctrl-C, ``raymmft.search``) and the trial waits
    to be stopped, unfinished, so that ``--resume`` continues it once the storage is fixed."""
    try:
        _fit_and_report(cfg, trial_id, run_name, negatives, listings)
    except BaseException as exc:
        fault = storage_fault(exc, cfg.storage.location)
        if fault is None or faults is None:
            raise
        faults.put(f"trial {trial_id}: {fault}")
        while True:  # stopped by the search (it is interrupted): the trial stays unfinished
            time.sleep(1)


def _fit_and_report(
    cfg: Config, trial_id: str, run_name: str, negatives: str | None, listings: dict | None
) -> None:
    exp = cfg.storage.experiment
    progress = TrialProgress.restore(tune.get_checkpoint())
    resume_from = repair_train_run(exp.join(TRAIN_RUNS_DIR, trial_id))
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: dict = {}

    def fit() -> None:
        try:
            fit_with_restarts(
                lambda: make_trainer(
                    cfg,
                    storage=exp.join(TRAIN_RUNS_DIR),
                    name=trial_id,
                    cache=cache_location(cfg),
                    tensorboard_dir=exp.join(TENSORBOARD_DIR, run_name),
                    negatives=negatives,
                    callbacks=[ForwardReports(reports)],
                    reported_epoch=progress.epoch,
                    listings=listings,
                    resume_from=resume_from,
                ),
                cfg.resources.max_failures,
                what=f"trial {trial_id}",
                storage=cfg.storage.location,
            )
        except BaseException as exc:  # raised again in the trial's own thread
            outcome["error"] = exc

    fitting = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
    fitting.start()
    while True:
        try:
            metrics, checkpoint = reports.get(timeout=0.5)
        except Empty:
            if fitting.is_alive():
                continue
            if reports.empty():  # nothing was put after the fit ended
                break
            continue
        progress.report(metrics, checkpoint)
    fitting.join()
    if "error" in outcome:
        raise outcome["error"]


class ForwardReports(UserCallback):
    """Ray Train callback (it runs in the Train controller): rank 0's metrics of every report and
    the path of its checkpoint, put on a queue the trial driver reads. The queue holds one item,
    so training waits while Tune records the previous report. Once a checkpoint is registered
    (uploaded whole), the one before it keeps its weights only: a run resumes from the newest,
    and the AdamW state is two thirds of a checkpoint."""

    def __init__(self, reports: Queue):
        self.reports = reports
        self.previous = None

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.reports.put((dict(metrics[0]), checkpoint.path if checkpoint else None))
        if checkpoint is None:
            return
        if self.previous is not None:
            from raymmft.checkpoint import TRAIN_STATE_FILE

            fs, path = self.previous.filesystem, f"{self.previous.path}/{TRAIN_STATE_FILE}"
            with contextlib.suppress(OSError, FileNotFoundError):
                fs.delete_file(path)
        self.previous = checkpoint


class TrialProgress:
    """What Tune records of a trial besides its results: the last epoch reported and the Train
    checkpoint of the trial, as a small Tune checkpoint (``progress.json``). A report of an epoch
    already recorded (the same epoch reported again by a resumed or restarted run) is dropped."""

    FILE = "progress.json"

    def __init__(self, epoch: int = 0, checkpoint_path: str | None = None):
        self.epoch, self.checkpoint_path = epoch, checkpoint_path

    @classmethod
    def restore(cls, checkpoint) -> TrialProgress:
        if checkpoint is None:
            return cls()
        with checkpoint.as_directory() as d:
            saved = json.loads((Path(d) / cls.FILE).read_text())
        return cls(int(saved["epoch"]), saved.get("checkpoint_path"))

    def report(self, metrics: dict, checkpoint: str | None) -> None:
        epoch = int(metrics.get("epoch", self.epoch + 1))
        if epoch <= self.epoch:
            return
        pause_if_asked(f"record:{epoch}")
        self.epoch = epoch
        self.checkpoint_path = checkpoint or metrics.get("checkpoint_path") or self.checkpoint_path
        if self.checkpoint_path:
            metrics = {**metrics, "checkpoint_path": self.checkpoint_path}
        with tempfile.TemporaryDirectory(prefix="raymmft-progress-") as d:
            saved = {"epoch": self.epoch, "checkpoint_path": self.checkpoint_path}
            (Path(d) / self.FILE).write_text(json.dumps(saved))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


TRAIN_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def repair_train_run(run: Location) -> str | None:
    """Ray Train's record of a run's checkpoints (``checkpoint_manager_snapshot.json``) is
    rewritten in place at every checkpoint, so a storage that filled up can leave it cut off,
    and Ray Train then cannot start the run at all; a storage that failed before the first
    record of a run leaves none, and the run would start from scratch. A cut-off record is set
    aside (renamed ``.damaged``), Ray Train starts the run afresh, and the run resumes from the
    newest of its checkpoints whose files all load: returned (``None``: nothing to repair)."""
    from raymmft.checkpoint import load_state
    from raymmft.errors import ModelError, StorageError

    snapshot = run.join(TRAIN_SNAPSHOT_FILE)
    try:
        if not run.is_dir():
            return None  # a new trial
        if snapshot.is_file():
            try:
                json.loads(snapshot.read_text())
                return None  # whole: Ray Train resumes from it
            except ValueError:
                damaged = run.join(f"{TRAIN_SNAPSHOT_FILE}.damaged")
                damaged.write_bytes(snapshot.read_bytes())
                snapshot.delete_file()
        names = sorted((n for n in run.children() if n.startswith("checkpoint_2")), reverse=True)
    except StorageError:
        return None  # the fit says what is wrong with the storage
    for name in names:  # checkpoint_<date>_<time>: newest first
        try:
            load_state(run.join(name))
        except (ModelError, StorageError):
            continue  # cut off as well
        print(f"{run}: Ray Train's record was cut off or missing; resuming from {name}")
        return run.join(name).uri
    return None


# errno values that are the storage's fault wherever they happen, and those that are when the
# message names the storage (a missing or unreadable dataset file is bad input instead)
STORAGE_ERRNOS = {28: "no space left", 30: "read-only", 122: "quota exceeded"}
STORAGE_PATH_ERRNOS = {2: "missing", 5: "I/O error", 13: "permission denied"}
OBJECT_STORE_FAULTS = (
    "NETWORK_CONNECTION",
    "curlCode: 7",
    "Couldn't connect",
    "Connection refused",
)


def storage_fault(exc: BaseException, storage: Location) -> str | None:
    """The one-line description of ``exc`` when it is a fault of the results storage (or one
    of its messages mentions one), else ``None``."""
    import re

    failures = getattr(exc, "worker_failures", None) or {}
    text = "\n".join([str(exc), *(str(e) for e in failures.values())])
    for match in re.finditer(r"\[Errno (\d+)\]", text):
        code = int(match.group(1))
        if code in STORAGE_ERRNOS or (code in STORAGE_PATH_ERRNOS and storage.path in text):
            line = next(ln for ln in text.splitlines() if match.group(0) in ln)
            return f"storage {storage}: {line.strip()[:300]}"
    if storage.is_object_store and any(s in text for s in OBJECT_STORE_FAULTS):
        line = next(ln for ln in text.splitlines() if any(s in ln for s in OBJECT_STORE_FAULTS))
        return f"storage {storage} cannot be reached: {line.strip()[:300]}"
    return None


def fit_with_restarts(build, max_failures: int, *, what: str, storage: Location | None = None):
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
            faulty = storage is not None and storage_fault(exc, storage) is not None
            if faulty:  # the storage's, not the trial's: restarting would fail the same way
                raise
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
