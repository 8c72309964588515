"""An experiment as its storage tells it: the one reader of the files Tune and raymmft write.

An experiment directory (a local path or any ``raymmft.storage`` URI) holds:

- ``raymmft_config.json``: the search's validated config (written before the first trial);
- ``trial_driver_*/result.json``: one JSON line per report (the metrics of ``run_training``, Tune's
  bookkeeping, the trial's ``config`` = its searched fields); ``params.json``: that config;
  ``error.txt``: the trial's error, if any;
- the newest ``experiment_state-*.json``: each trial's status (``PENDING``, ``RUNNING``,
  ``TERMINATED``, ``ERROR``), including trials that have no directory yet. Without it (a search
  that has not saved its state yet) the status is inferred from the result lines;
- ``train_runs/<trial_id>/checkpoint_*``: each trial's checkpoints (Ray Train);
- ``tensorboard/<trial_id>``: each trial's TensorBoard events; ``report/``: the report;
- ``prepared/negatives.pt`` and ``prepared/zero_shot.json``: the preparation step's NegLabel
  negatives and the zero-shot starting model's evaluation (``raymmft.prepare``);
- ``test_evaluation.json``: the chosen configuration's evaluation on the OoD test sets;
- ``optuna.journal``: the Optuna study (local or shared storage; ``optuna-dashboard`` reads it).

Partial results are fine: a result line cut short by a trial writing it right now is skipped, and
a state file being written falls back to inference. The report, the search's summary and
``--resume`` (which trials are unfinished) all read an experiment through ``read_experiment``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

from raymmft.config_file import EXPERIMENT_CONFIG_FILE
from raymmft.errors import ConfigError, RaymmftError, StorageError, first_line
from raymmft.storage import Location, untrusted

CONFIG_FILE = EXPERIMENT_CONFIG_FILE
TUNER_FILE = "tuner.pkl"
TRAIN_RUNS_DIR = "train_runs"
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"
# the chosen configuration on the OoD test sets, written at the end of a search
TEST_EVALUATION_FILE = "test_evaluation.json"
# the search's Optuna study on local or shared storage (raymmft.search)
OPTUNA_JOURNAL = "optuna.journal"
# what a search's preparation step stores (raymmft.prepare)
PREPARED_DIR = "prepared"
NEGATIVES_FILE = "negatives.pt"
ZERO_SHOT_FILE = "zero_shot.json"
RESULT_FILE, PARAMS_FILE, ERROR_FILE = "result.json", "params.json", "error.txt"
STATE_FILE = re.compile(r"experiment_state-.*\.json")
# the confirmation runs of a search's top trials (raymmft.search.run_confirmation): a Tune
# experiment of its own inside the search's
CONFIRM_DIR = "confirm"
# Tune names a trial's directory after its trainable
DRIVER_PREFIXES = ("trial_driver_", "confirm_driver_")
_TRIAL_DIR = re.compile(r"_([0-9a-f]{5,16})_\d+_")
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


@dataclass
class TrialRecord:
    """One trial as the experiment directory tells it."""

    trial_id: str
    status: str
    config: dict  # the searched fields, nested as Tune samples them
    results: list[dict] = field(default_factory=list)  # every report, oldest first
    path: Location | None = None  # the trial's Tune directory
    error: str | None = None
    num_failures: int = 0


@dataclass
class Experiment:
    location: Location
    base_config: dict  # raymmft_config.json, {} if absent
    trials: list[TrialRecord]

    @property
    def name(self) -> str:
        return self.location.name

    def zero_shot(self) -> dict | None:
        """The zero-shot starting model's evaluation (``to_dict()`` plus its flat ``metrics``, as
        trials report theirs); ``None`` when the experiment has none (prepared per trial, or made
        before searches were prepared)."""
        found = read_json(self.location.join(PREPARED_DIR, ZERO_SHOT_FILE))
        return found or None

    @functools.cached_property
    def confirmation(self) -> Experiment | None:
        """The confirmation runs (``confirm/``, a Tune experiment of seeds of the top trials);
        ``None`` when the search had none. Read once per ``Experiment``: the rows, the report
        and the search's summary all ask."""
        location = self.location.join(CONFIRM_DIR)
        return read_experiment(location) if location.is_dir() else None

    def unfinished(self) -> list[str]:
        """Trials that neither terminated nor errored (they continue on ``--resume``)."""
        return [t.trial_id for t in self.trials if t.status in UNFINISHED]

    def checkpoint(self, trial: TrialRecord) -> Location | None:
        """The trial's last reported checkpoint, found under *this* experiment directory (it may
        have been moved since), else its newest ``train_runs/<trial>/checkpoint_*``."""
        runs = self.location.join(TRAIN_RUNS_DIR, trial.trial_id)
        reported = next(
            (r["checkpoint_path"] for r in reversed(trial.results) if r.get("checkpoint_path")),
            None,
        )
        if reported:
            here = runs.join(reported.rstrip("/").rsplit("/", 1)[-1])
            return here if here.is_dir() else self.location.with_fs_path(reported)
        found = sorted(n for n in runs.children() if n.startswith("checkpoint_"))
        return runs.join(found[-1]) if found else None


def _json_lines(text: str | None) -> list[dict]:
    """Result lines; a line cut short by a trial that is writing it right now is skipped."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _read(location: Location) -> str | None:
    return location.read_text() if location.is_file() else None


def read_json(location: Location) -> dict:
    """A JSON object file; {} when absent or cut short (being written)."""
    try:
        value = json.loads(_read(location) or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class NotTuneState(ValueError):
    """JSON that is not Tune's experiment state (not its shape: damaged, or another Ray's)."""


def parse_tune_state(text: str) -> dict[str, dict]:
    """trial_id -> {status, config, relative_logdir, error_filename, num_failures, last_result}
    from the text of an ``experiment_state-*.json``, in the order Tune created the trials. Raises
    ``json.JSONDecodeError`` for text that is not JSON (cut off), ``NotTuneState`` for JSON that
    does not hold Tune's trial list."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("trial_data"), list):
        raise NotTuneState("holds no trial list")
    out = {}
    try:
        for trial_json, run_json in data["trial_data"]:
            t, run = json.loads(trial_json), json.loads(run_json)
            out[t["trial_id"]] = {
                "status": t.get("status"),
                "config": t.get("config") or {},
                "relative_logdir": t.get("relative_logdir"),
                "error_filename": run.get("error_filename"),
                "num_failures": run.get("num_failures") or 0,
                "last_result": run.get("last_result") or {},
            }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotTuneState(
            f"holds a trial entry Tune did not write ({first_line(exc, 80)})"
        ) from None
    return out


def newest_state(names) -> str | None:
    """The newest ``experiment_state-*.json`` among ``names`` (the one Tune restores from)."""
    states = sorted(n for n in names if STATE_FILE.fullmatch(n))
    return states[-1] if states else None


def tune_state(root: Location, names: list[str] | None = None) -> dict[str, dict]:
    """``parse_tune_state`` of the newest state file in ``root`` (``names``: its entries, when
    listed already); {} when there is none or it cannot be parsed (being written, or a format this
    Ray version does not write: the caller falls back to inference)."""
    newest = newest_state(root.children() if names is None else names)
    if newest is None:
        return {}
    try:
        return parse_tune_state(_read(root.join(newest)) or "{}")
    except ValueError:
        return {}


def check_resumable(experiment: str) -> None:
    """``experiment`` (a local path or a URI) is a started search that only this user can change,
    with a Tune state that parses: resuming loads Tune's pickled state (``tuner.pkl``, the
    searcher's state), which runs whatever code a planted pickle holds. Raises ``ConfigError``
    naming what is wrong, before Ray starts."""
    try:
        exp = Location.parse(experiment)
        found = exp.join(CONFIG_FILE).is_file()
        names = list(exp.children()) if found else []
    except StorageError as exc:
        raise ConfigError(f"cannot resume {experiment}: {exc}") from None
    if not found:
        raise ConfigError(
            f"cannot resume {experiment}: no {CONFIG_FILE} there (not a raymmft experiment)"
        )
    newest = newest_state(names)
    if newest is None or TUNER_FILE not in names:
        missing = "experiment_state-*.json" if newest is None else TUNER_FILE
        raise ConfigError(
            f"cannot resume {experiment}: it holds no Tune experiment state ({missing}): not a "
            "search that has started"
        )
    if exp.is_local:
        local = exp.local_path
        for item in [local, *sorted(p for p in local.iterdir() if p.is_file())]:
            reason = untrusted(item)
            if reason is not None:
                raise ConfigError(
                    f"cannot resume {experiment}: {item} {reason}; resume loads Tune's pickled "
                    "state, so it resumes only an experiment no one else can change (chmod -R go-w)"
                )
    try:
        parse_tune_state(exp.join(newest).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"cannot resume {experiment}: its Tune state {newest} cannot be read "
            f"({first_line(exc, 120)}); the file is damaged"
        ) from None
    except (NotTuneState, StorageError) as exc:
        raise ConfigError(
            f"cannot resume {experiment}: its Tune state {newest} {exc}; the file is damaged, "
            "or from another Ray version"
        ) from None


def _last_error_line(text: str | None) -> str | None:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def _status(saved: str | None, inferred: str) -> str:
    """The saved status, unless the result lines show the trial has ended since the state was
    saved (Tune saves its state every few seconds; the last result line, ``done``, comes first).
    An error.txt alone does not override it: a trial that Tune retried has one and runs on."""
    if saved in UNFINISHED and inferred == "TERMINATED":
        return inferred
    return saved or inferred


def _infer_status(results: list[dict], error: str | None) -> str:
    if error:
        return "ERROR"
    if results and results[-1].get("done"):
        return "TERMINATED"
    return "RUNNING" if results else "PENDING"


def is_experiment(names) -> bool:
    """Whether a directory's entry names look like an experiment's (config or Tune state)."""
    names = set(names)
    return bool(names & {CONFIG_FILE, TUNER_FILE}) or any(
        n.startswith(("experiment_state-", *DRIVER_PREFIXES)) for n in names
    )


def read_experiment(location: str | Location) -> Experiment:
    """Every trial of the experiment at ``location`` (local directory or storage URI)."""
    import pyarrow.fs as pafs

    try:
        root = Location.parse(location)
        found = root.is_dir()
    except StorageError as exc:
        raise RaymmftError(f"cannot read experiment {location}: {exc}") from None
    if not found:
        raise RaymmftError(f"experiment directory not found: {root}")
    entries = root.entries()
    names = [e.base_name for e in entries]
    if not is_experiment(names):
        raise RaymmftError(
            f"{root} is not a Tune experiment directory (no {CONFIG_FILE}, {TUNER_FILE}, "
            "experiment_state-*.json or trial_driver_* in it)"
        )
    base_config = read_json(root.join(CONFIG_FILE))
    state = tune_state(root, names)
    dirs = {
        e.base_name: root.join(e.base_name)
        for e in entries
        if e.type == pafs.FileType.Directory and e.base_name.startswith(DRIVER_PREFIXES)
    }
    by_dir = {s["relative_logdir"]: tid for tid, s in state.items() if s.get("relative_logdir")}
    trials: dict[str, TrialRecord] = {}
    for name, trial_dir in sorted(dirs.items()):
        results = _json_lines(_read(trial_dir.join(RESULT_FILE)))
        params = read_json(trial_dir.join(PARAMS_FILE))
        if not results and not params:
            continue  # not a trial's directory (yet)
        match = _TRIAL_DIR.search(name)
        trial_id = by_dir.get(name) or (results[-1].get("trial_id") if results else None)
        trial_id = trial_id or (match.group(1) if match else name)
        s = state.get(trial_id, {})
        error = _last_error_line(_read(trial_dir.join(s.get("error_filename") or ERROR_FILE)))
        trials[trial_id] = TrialRecord(
            trial_id=trial_id,
            status=_status(s.get("status"), _infer_status(results, error)),
            config=s.get("config") or params or (results[-1].get("config", {}) if results else {}),
            results=results,
            path=trial_dir,
            error=error,
            num_failures=int(s.get("num_failures") or 0),
        )
    for trial_id, s in state.items():  # trials the searcher created that have no directory yet
        if trial_id not in trials:
            trials[trial_id] = TrialRecord(trial_id, s.get("status") or "PENDING", s["config"])
    return Experiment(root, base_config, list(trials.values()))
