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

Nothing else is trusted. Every file is read through ``inside`` (on local storage, a path that a
symbolic link leads out of the experiment is refused: the report reads and writes nothing outside
it) and checked for the types the report relies on (``check_config``, ``check_report``,
``check_test_evaluation``): a value of the wrong type is one ``StorageError`` line naming the file
and the field. A metric that is not a finite number (``NaN``, ``Infinity``) is read as missing, so
it is never chosen on, and ``Experiment.notes`` says so.
"""

from __future__ import annotations

import functools
import json
import math
import pickletools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymmft.config_file import EXPERIMENT_CONFIG_FILE
from raymmft.errors import ConfigError, RaymmftError, StorageError, first_line, short_list
from raymmft.objectives import EVAL_METRICS, OOD_METRICS, SCORE, TRAINING_METRICS
from raymmft.search_space import distributions_of
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
# a trial id as Tune makes it (hex, with a _<n> suffix for a repeated one): nothing to escape
TRIAL_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
# what every report of a trial carries as a number, besides the OoD, interpolated and time metrics
METRIC_NAMES = frozenset({*TRAINING_METRICS, *EVAL_METRICS, SCORE})
STATUSES = (*UNFINISHED, "TERMINATED", "ERROR")
# Tune's bookkeeping in each result line (ray.tune.result's automatic keys): not a metric of the
# trial. Every other key of a result line is a metric, a number.
TUNE_KEYS = frozenset(
    {
        "timestamp",
        "checkpoint_dir_name",
        "checkpoint_path",
        "done",
        "training_iteration",
        "trial_id",
        "date",
        "time_this_iter_s",
        "time_total_s",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_since_restore",
        "timesteps_total",
        "episodes_total",
        "experiment_tag",
        "experiment_id",
        "should_checkpoint",
        "warmup_time",
    }
)


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
    # metric -> reports of result.json where it was not a finite number (read as missing)
    nonfinite: dict[str, int] = field(default_factory=dict)


@dataclass
class Experiment:
    location: Location
    base_config: dict  # raymmft_config.json, checked (``check_config``); {} for confirm/
    trials: list[TrialRecord]
    # what was read as missing (metrics that are not finite numbers), in plain words
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.location.name

    def zero_shot(self) -> dict | None:
        """The zero-shot starting model's evaluation (``to_dict()`` plus its flat ``metrics``, as
        trials report theirs; a metric that is not a finite number read as missing); ``None``
        when the experiment has none (prepared per trial, or made before searches were
        prepared)."""
        return self._zero_shot

    @functools.cached_property
    def _zero_shot(self) -> dict | None:
        location = self.location.join(PREPARED_DIR, ZERO_SHOT_FILE)
        found = read_json(inside(self.location, location), strict=True)
        if not found:
            return None
        metrics = found.get("metrics")
        if not isinstance(metrics, dict):
            raise _bad(location, "metrics", "a mapping of metric names to numbers", metrics)
        nonfinite: dict[str, int] = {}
        found["metrics"] = check_metrics(metrics, location, "metrics.", nonfinite)
        if nonfinite:
            self.notes.append(_nonfinite_note("the zero-shot model", nonfinite, location.name))
        return found

    def test_evaluation(self) -> dict | None:
        """The chosen configuration on the OoD test sets (``test_evaluation.json``), checked
        (``check_test_evaluation``); ``None`` when there is none yet."""
        location = self.location.join(TEST_EVALUATION_FILE)
        found = read_json(inside(self.location, location), strict=True)
        return check_test_evaluation(found, location) if found else None

    @functools.cached_property
    def confirmation(self) -> Experiment | None:
        """The confirmation runs (``confirm/``, a Tune experiment of seeds of the top trials);
        ``None`` when the search had none. Read once per ``Experiment``: the rows, the report
        and the search's summary all ask."""
        location = inside(self.location, self.location.join(CONFIRM_DIR))
        return read_experiment(location) if location.is_dir() else None

    def unfinished(self) -> list[str]:
        """Trials that neither terminated nor errored (they continue on ``--resume``)."""
        return [t.trial_id for t in self.trials if t.status in UNFINISHED]

    def checkpoint(self, trial: TrialRecord) -> Location | None:
        """The trial's last reported checkpoint, found under *this* experiment directory (it may
        have been moved since), else its newest ``train_runs/<trial>/checkpoint_*``."""
        runs = inside(self.location, self.location.join(TRAIN_RUNS_DIR, trial.trial_id))
        reported = next(
            (r["checkpoint_path"] for r in reversed(trial.results) if r.get("checkpoint_path")),
            None,
        )
        if reported:
            here = runs.join(reported.rstrip("/").rsplit("/", 1)[-1])
            return here if here.is_dir() else self.location.with_fs_path(reported)
        found = sorted(n for n in runs.children() if n.startswith("checkpoint_"))
        return runs.join(found[-1]) if found else None


# ---------------------------------------------------------------- reading, and nothing outside


def inside(root: Location, location: Location) -> Location:
    """``location`` when, with every symbolic link followed, it lies in the experiment ``root``
    (local storage; object storage has no links). Raises ``StorageError`` otherwise: a link
    planted in an experiment must not make the report read or write a file elsewhere."""
    if not (root.is_local and location.is_local):
        return location
    real_root = Path(root.path).resolve()
    real = Path(location.path).resolve()
    if real != real_root and real_root not in real.parents:
        raise StorageError(
            f"{location} is a link out of the experiment {root}: raymmft reads and writes "
            "nothing outside it"
        )
    return location


def _read(location: Location) -> str | None:
    return location.read_text() if location.is_file() else None


def read_json(location: Location, *, strict: bool = False) -> dict:
    """A JSON object file; {} when absent. A file cut short (being written) or not an object is
    {} too, unless ``strict`` (a file written whole, at once: then it is damaged, and that is a
    ``StorageError`` naming it)."""
    text = _read(location)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if strict:
            raise StorageError(
                f"{location}: not valid JSON ({exc.msg}, line {exc.lineno}); the file is cut "
                "off or damaged"
            ) from None
        return {}
    if isinstance(value, dict):
        return value
    if strict:
        raise _bad(location, "", "a JSON object", value)
    return {}


def _shown(value: Any) -> str:
    """A value as a one-line message quotes it: its kind, and a short form of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"text {text}" if isinstance(value, str) else text


def _bad(location: Location, where: str, expected: str, value: Any) -> StorageError:
    """``<file>: <field>: expected <what>, got <value>``."""
    at = f"{where}: " if where else ""
    return StorageError(f"{location}: {at}expected {expected}, got {_shown(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_metric(key: str) -> bool:
    """Whether a reported key is one of the contract's metrics (``raymmft.objectives``): a number
    in every report. (Any other key that is not Tune's is kept only when it is a number.)"""
    return key in METRIC_NAMES or key.startswith(("ood_", "interp/", "time/")) or "/ood_" in key


def check_metrics(
    values: dict, location: Location, where: str, nonfinite: dict[str, int], extra=()
) -> dict:
    """``values`` with each metric (``is_metric`` or in ``extra``) a number or null; one that is
    not finite (NaN, Infinity) is read as missing (``None``) and counted in ``nonfinite``."""
    out = dict(values)
    for key, value in values.items():
        if key in TUNE_KEYS or not (is_metric(key) or key in extra) or value is None:
            continue
        if not _is_number(value):
            raise _bad(location, f"{where}{key}" if where else key, "a number", value)
        if not math.isfinite(value):
            nonfinite[key] = nonfinite.get(key, 0) + 1
            out[key] = None
    return out


def check_report(
    report: Any, location: Location, line: int, nonfinite: dict[str, int], extra=()
) -> dict:
    """One line of a trial's ``result.json``: a JSON object whose metrics are numbers (not
    finite: read as missing, counted in ``nonfinite``), with Tune's ``epoch``, ``done``,
    ``trial_id``, ``config``, ``checkpoint_path`` and ``time_total_s`` of their types."""
    where = f"line {line}: "
    if not isinstance(report, dict):
        raise _bad(location, f"line {line}", "a JSON object (one report)", report)
    kinds = {
        "done": (lambda v: isinstance(v, bool), "true or false"),
        "trial_id": (lambda v: isinstance(v, str) and TRIAL_ID.fullmatch(v), "a Tune trial id"),
        "config": (lambda v: isinstance(v, dict), "a mapping of searched fields"),
        "checkpoint_path": (lambda v: isinstance(v, str), "a path"),
        "time_total_s": (_is_number, "a number"),
        "epoch": (_is_number, "a number"),
    }
    for key, (ok, expected) in kinds.items():
        value = report.get(key)
        if value is not None and not ok(value):
            raise _bad(location, f"{where}{key}", expected, value)
    return check_metrics(report, location, where, nonfinite, extra)


def _result_lines(location: Location, nonfinite: dict[str, int], extra=()) -> list[dict]:
    """A trial's result lines, each checked (``check_report``); a line that is not JSON (cut
    short by a trial that is writing it right now) is skipped."""
    out = []
    for n, line in enumerate((_read(location) or "").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(check_report(value, location, n, nonfinite, extra))
    return out


def _nonfinite_note(who: str, nonfinite: dict[str, int], file: str) -> str:
    names = short_list(sorted(nonfinite)).strip("[]")
    reports = max(nonfinite.values())
    return (
        f"{who}: {names} not a finite number (NaN or Infinity) in {reports} report(s) of its "
        f"{file}: read as missing, never chosen on"
    )


def printable(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, with control characters (a terminal's escape
    sequences, a newline that would start a line of YAML) written as escapes."""
    text = text[:limit]
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check_config(raw: Any, location: Location) -> dict:
    """The fields of a search's saved config (``raymmft_config.json``) that the report reads,
    of their types: the sections mappings, ``train.epochs`` and ``train.seed`` integers,
    ``search.space`` the search-space language, ``search.objectives`` objectives as the config
    declares them. Raises ``StorageError`` naming the file and the field."""
    from pydantic import ValidationError

    from raymmft.config import Config, Objective, describe_error

    if not isinstance(raw, dict):
        raise _bad(location, "", "a JSON object of config sections", raw)
    for section in Config.model_fields:
        if section in raw and not isinstance(raw[section], dict):
            raise _bad(location, section, "a mapping", raw[section])
    train, search = raw.get("train") or {}, raw.get("search") or {}
    for name, least in (("epochs", 1), ("seed", 0)):
        value = train.get(name)
        if name in train and not (isinstance(value, int) and not isinstance(value, bool)):
            raise _bad(location, f"train.{name}", "an integer", value)
        if name in train and value < least:
            raise _bad(location, f"train.{name}", f"an integer >= {least}", value)
    space = search.get("space")
    if space is not None:
        if not isinstance(space, dict):
            raise _bad(location, "search.space", "a mapping of fields to distributions", space)
        for key, spec in space.items():
            try:
                distributions_of({key: spec})
            except ValueError as exc:
                raise StorageError(f"{location}: search.space: {first_line(exc, 160)}") from None
    objectives = search.get("objectives")
    if objectives is not None:
        if not isinstance(objectives, list):
            raise _bad(location, "search.objectives", "a list of objectives", objectives)
        for i, objective in enumerate(objectives):
            try:
                Objective.model_validate(objective)
            except ValidationError as err:
                field_name, msg = describe_error(err)
                at = f"search.objectives[{i}]" + (f".{field_name}" if field_name else "")
                raise StorageError(f"{location}: {at}: {msg[:160]}") from None
    weight = search.get("score_weight")
    if weight is not None and not (_is_number(weight) and math.isfinite(weight)):
        raise _bad(location, "search.score_weight", "a finite number", weight)
    return raw


def read_config(root: Location, needed: bool = True) -> dict:
    """The search's config, checked (``check_config``); a damaged one is an error, and so is a
    missing one when ``needed`` (else {}): the objectives, the search space and the epochs of a
    report come from it, never from today's defaults."""
    location = inside(root, root.join(CONFIG_FILE))
    if not location.is_file():
        if not needed:
            return {}
        raise StorageError(
            f"{location}: not found; the report needs the search's config (its objectives, "
            "search space and epochs), written when the search started"
        )
    return check_config(read_json(location, strict=True), location)


def check_test_evaluation(raw: dict, location: Location) -> dict:
    """``test_evaluation.json`` (``EvaluationResult.to_dict`` and the chosen trial's id) with the
    fields the page shows of their types, and an entry for every listed score and OoD metric
    wherever the page looks one up. Raises ``StorageError`` naming the file and the field."""
    from pydantic import ValidationError

    from raymmft.config import describe_error

    try:
        _test_evaluation_model().model_validate(raw)
    except ValidationError as err:
        where, msg = describe_error(err)
        raise StorageError(f"{location}: {where or 'the file'}: {msg[:160]}") from None
    delta = raw.get("delta_vs_reference") or {}
    tables = [(f"ood.{n}.{k}", e.get(k)) for n, e in raw["ood"].items() for k in _PER_SET]
    tables += [("mean", raw["mean"]), ("mean_ci95", raw.get("mean_ci95"))]
    tables += [("delta_vs_reference.mean", delta.get("mean"))]
    for where, table in tables:
        for score in raw["scores"] if table is not None else ():
            if score not in table:
                raise StorageError(f"{location}: {where}: no entry for the score {score!r}")
            missing = [m for m in OOD_METRICS if m not in table[score]]
            if missing:
                raise StorageError(f"{location}: {where}.{score}: no entry for {missing[0]!r}")
    return raw


_PER_SET = ("metrics", "metrics_ci95")


@functools.cache
def _test_evaluation_model():
    """The pydantic model of ``test_evaluation.json`` (built on first use)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    class _Part(BaseModel):
        # strict: "0.9" is no number; extra keys are kept (the file carries more than the page)
        model_config = ConfigDict(strict=True, extra="allow")

    value = float | None
    pair = Annotated[list[value], Field(min_length=2, max_length=2)]
    per_score = dict[str, dict[str, value]]

    class Estimate(_Part):
        value: value
        ci95: pair

    class OodSet(_Part):
        num_samples: int
        metrics: per_score
        metrics_ci95: dict[str, dict[str, pair]] | None = None

    class Bootstrap(_Part):
        resamples: int

    class Delta(_Part):
        id_accuracy: Estimate
        mean: dict[str, dict[str, Estimate]]

    class TestEvaluation(_Part):
        trial_id: str
        id_accuracy: value
        id_accuracy_ci95: pair | None = None
        modality_gap: value = None
        primary_score: str
        scores: list[str]
        num_id: int
        num_classes: int
        num_negatives: int | None = None
        ood: dict[str, OodSet]
        mean: per_score
        mean_ci95: dict[str, dict[str, pair]] | None = None
        bootstrap: Bootstrap | None = None
        delta_vs_reference: Delta | None = None

    return TestEvaluation


class NotTuneState(ValueError):
    """JSON that is not Tune's experiment state (not its shape: damaged, or another Ray's)."""


def parse_tune_state(text: str) -> dict[str, dict]:
    """trial_id -> {status, config, relative_logdir, error_filename, num_failures, last_result}
    from the text of an ``experiment_state-*.json``, in the order Tune created the trials. Raises
    ``json.JSONDecodeError`` for text that is not JSON (cut off), ``NotTuneState`` for JSON that
    does not hold Tune's trial list, or a trial entry whose fields are not of Tune's types."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("trial_data"), list):
        raise NotTuneState("holds no trial list")
    out = {}
    try:
        for i, (trial_json, run_json) in enumerate(data["trial_data"]):
            t, run = json.loads(trial_json), json.loads(run_json)
            entry = {
                "trial_id": t["trial_id"],
                "status": t.get("status"),
                "config": t.get("config") or {},
                "relative_logdir": t.get("relative_logdir"),
                "error_filename": run.get("error_filename"),
                "num_failures": run.get("num_failures") or 0,
                "last_result": run.get("last_result") or {},
            }
            _check_state_entry(entry, i)
            out[entry.pop("trial_id")] = entry
    except NotTuneState:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise NotTuneState(
            f"holds a trial entry Tune did not write ({first_line(exc, 80)})"
        ) from None
    return out


def _check_state_entry(entry: dict, i: int) -> None:
    """A trial entry of Tune's state with its fields of Tune's types (``NotTuneState``)."""
    kinds = {
        "trial_id": (lambda v: isinstance(v, str) and TRIAL_ID.fullmatch(v), "a Tune trial id"),
        "status": (lambda v: v is None or v in STATUSES, f"one of {', '.join(STATUSES)}"),
        "config": (lambda v: isinstance(v, dict), "a mapping"),
        "relative_logdir": (lambda v: v is None or _is_name(v), "a directory name"),
        "error_filename": (lambda v: v is None or _is_name(v), "a file name"),
        "num_failures": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a count"),
        "last_result": (lambda v: isinstance(v, dict), "a mapping"),
    }
    for key, (ok, expected) in kinds.items():
        if not ok(entry[key]):
            raise NotTuneState(
                f"holds a trial entry Tune did not write (trial_data[{i}]: {key}: expected "
                f"{expected}, got {_shown(entry[key])})"
            )


def _is_name(value: Any) -> bool:
    """One path segment in the experiment (what Tune names a trial's directory or file)."""
    return isinstance(value, str) and value not in ("", ".", "..") and "/" not in value


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
    try:  # read as opcodes, none run: a pickle cut off while written is refused before Ray starts
        for _ in pickletools.genops(exp.join(TUNER_FILE).read_bytes()):
            pass
    except (ValueError, StorageError) as exc:
        raise ConfigError(
            f"cannot resume {experiment}: Tune's pickled state ({TUNER_FILE}) cannot be read "
            f"({first_line(exc, 120)}); the file is damaged"
        ) from None


def _last_error_line(text: str | None) -> str | None:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return printable(lines[-1]) if lines else None


def _error_of(root: Location, location: Location) -> str | None:
    """The last line of a trial's error file; a file linked out of the experiment is not read."""
    try:
        inside(root, location)
    except StorageError:
        return f"{location.name} is a link outside the experiment"
    return _last_error_line(_read(location))


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


def _state(root: Location, names: list[str]) -> dict[str, dict]:
    """``parse_tune_state`` of the newest state file; {} when there is none or it is cut off
    (being written: the statuses are inferred). One that is JSON but not Tune's state is a
    ``StorageError`` naming it."""
    newest = newest_state(names)
    if newest is None:
        return {}
    location = inside(root, root.join(newest))
    try:
        return parse_tune_state(_read(location) or "{}")
    except json.JSONDecodeError:
        return {}
    except NotTuneState as exc:
        raise StorageError(f"{location}: {exc}; the file is damaged") from None


def read_experiment(location: str | Location, *, needs_config: bool = False) -> Experiment:
    """Every trial of the experiment at ``location`` (local directory or storage URI), every
    file checked (module docstring). Its ``raymmft_config.json`` is read when it is there (a
    damaged one is an error); ``needs_config``: it must be there (the report: its objectives,
    search space and epochs come from it, never from today's defaults)."""
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
    base_config = read_config(root, needs_config)
    objectives = (base_config.get("search") or {}).get("objectives") or []
    extra = {o["metric"] for o in objectives}  # metrics too, whatever their names
    state = _state(root, names)
    dirs = {
        e.base_name: root.join(e.base_name)
        for e in entries
        if e.type == pafs.FileType.Directory and e.base_name.startswith(DRIVER_PREFIXES)
    }
    by_dir = {s["relative_logdir"]: tid for tid, s in state.items() if s.get("relative_logdir")}
    trials: dict[str, TrialRecord] = {}
    notes = []
    for name, trial_dir in sorted(dirs.items()):
        inside(root, trial_dir)
        nonfinite: dict[str, int] = {}
        results = _result_lines(inside(root, trial_dir.join(RESULT_FILE)), nonfinite, extra)
        params = _params(inside(root, trial_dir.join(PARAMS_FILE)))
        if not results and not params:
            continue  # not a trial's directory (yet)
        match = _TRIAL_DIR.search(name)
        trial_id = by_dir.get(name) or (results[-1].get("trial_id") if results else None)
        trial_id = trial_id or (match.group(1) if match else name)
        s = state.get(trial_id, {})
        error = _error_of(root, trial_dir.join(s.get("error_filename") or ERROR_FILE))
        trials[trial_id] = TrialRecord(
            trial_id=trial_id,
            status=_status(s.get("status"), _infer_status(results, error)),
            config=s.get("config") or params or (results[-1].get("config", {}) if results else {}),
            results=results,
            path=trial_dir,
            error=error,
            num_failures=int(s.get("num_failures") or 0),
            nonfinite=nonfinite,
        )
        if nonfinite:
            notes.append(_nonfinite_note(f"trial {trial_id}", nonfinite, RESULT_FILE))
    for trial_id, s in state.items():  # trials the searcher created that have no directory yet
        if trial_id not in trials:
            trials[trial_id] = TrialRecord(trial_id, s.get("status") or "PENDING", s["config"])
    return Experiment(root, base_config, list(trials.values()), notes)


def _params(location: Location) -> dict:
    """A trial's ``params.json``: its searched fields, a mapping ({} when absent, or cut short by
    Tune writing it right now)."""
    text = _read(location)
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        raise _bad(location, "", "a mapping of the trial's searched fields", value)
    return value
