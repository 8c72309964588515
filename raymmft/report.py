"""The report of a search, finished, running or interrupted: ``trials.parquet``, a trial table with
the Pareto front of (ID accuracy, OoD AUROC), ``pareto.png``, ``curves.png``.

It reads the files Tune writes into the experiment directory (a local path or any
pyarrow-filesystem URI), so it needs no Ray cluster and sees partial results:

- ``trial_driver_*/result.json``: one JSON line per report (the metrics of ``run_training``, Tune's
  bookkeeping, the trial's ``config`` = its searched fields); ``params.json``: that config;
  ``error.txt``: the trial's error, if any;
- the newest ``experiment_state-*.json``: each trial's status (``PENDING``, ``RUNNING``,
  ``TERMINATED``, ``ERROR``), including trials that have no directory yet. Without it (a search
  that has not saved its state yet) the status is inferred from the result lines;
- ``raymmft_config.json``: the search's base config (configured epochs, ``score_weight``);
- ``train_runs/<trial_id>/checkpoint_*``: the checkpoint, when no report names one.

Stop reason: ``error`` (status ERROR), ``completed`` (reached the configured epochs),
``early_stopped`` (TERMINATED before them: ASHA), ``running`` / ``pending`` otherwise.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymmft.config import flatten_fields
from raymmft.errors import RaymmftError
from raymmft.tensorboard_log import storage_filesystem

CONFIG_FILE = "raymmft_config.json"  # as raymmft.search writes it (not imported: it pulls in Ray)
TRAIN_RUNS_DIR = "train_runs"
TENSORBOARD_DIR = "tensorboard"
REPORT_DIR = "report"
RESULT_FILE, PARAMS_FILE, ERROR_FILE = "result.json", "params.json", "error.txt"

# Tune's bookkeeping in each result line: not a metric of the trial.
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
        "experiment_tag",
    }
)
# best_<metric> over a trial's reports: metric -> "max" or "min"
BEST_OF = {"id_acc": "max", "ood_auroc": "max", "score": "max", "ood_fpr95": "min"}
_TRIAL_DIR = re.compile(r"_([0-9a-f]{5,16})_\d+_")


@dataclass
class TrialRecord:
    """One trial as the experiment directory tells it."""

    trial_id: str
    status: str
    config: dict  # the searched fields, nested as Tune samples them
    results: list[dict] = field(default_factory=list)  # every report, oldest first
    path: str | None = None  # the trial's Tune directory (on the storage)
    error: str | None = None
    num_failures: int = 0


@dataclass
class Experiment:
    path: str  # as given: local path or URI
    name: str
    base_config: dict  # raymmft_config.json, {} if absent
    trials: list[TrialRecord]


@dataclass(frozen=True)
class ReportPaths:
    """What ``write_report`` wrote, the printable table and the TensorBoard command."""

    out_dir: str
    trials_parquet: str
    pareto_png: str
    curves_png: str
    tensorboard_command: str
    table: str
    num_trials: int
    best_trial: str | None = None
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [
            f"report of {self.num_trials} trial(s) in {self.out_dir}:",
            f"  {self.trials_parquet}",
            f"  {self.pareto_png}",
            f"  {self.curves_png}",
            f"TensorBoard: {self.tensorboard_command}",
            *self.notes,
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------- reading


def _join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def _read_text(fs, path: str) -> str | None:
    from pyarrow import fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode("utf-8", errors="replace")


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


def _experiment_state(fs, root: str, entries) -> dict[str, dict]:
    """trial_id -> {status, config, relative_logdir, error_filename, num_failures} from the newest
    ``experiment_state-*.json``; {} when there is none or it cannot be read."""
    states = sorted(
        e.base_name for e in entries if re.fullmatch(r"experiment_state-.*\.json", e.base_name)
    )
    if not states:
        return {}
    try:
        data = json.loads(_read_text(fs, _join(root, states[-1])) or "{}")
        out = {}
        for trial_json, run_json in data.get("trial_data", []):
            t, run = json.loads(trial_json), json.loads(run_json)
            out[t["trial_id"]] = {
                "status": t.get("status"),
                "config": t.get("config") or {},
                "relative_logdir": t.get("relative_logdir"),
                "error_filename": run.get("error_filename"),
                "num_failures": run.get("num_failures") or 0,
            }
        return out
    except (ValueError, KeyError, TypeError):
        return {}  # a format this Ray version does not write: fall back to inference


def _last_error_line(text: str | None) -> str | None:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def read_experiment(path: str) -> Experiment:
    """Every trial of the experiment at ``path`` (local directory or storage URI)."""
    from pyarrow import fs as pafs

    fs, root = storage_filesystem(path)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise RaymmftError(f"experiment directory not found: {path}")
    entries = fs.get_file_info(pafs.FileSelector(root))
    names = {e.base_name for e in entries}
    if not names & {CONFIG_FILE, "tuner.pkl"} and not any(
        n.startswith(("experiment_state-", "trial_driver_")) for n in names
    ):
        raise RaymmftError(
            f"{path} is not a Tune experiment directory (no {CONFIG_FILE}, tuner.pkl, "
            "experiment_state-*.json or trial_driver_* in it)"
        )
    base_config = _json_file(fs, _join(root, CONFIG_FILE))
    state = _experiment_state(fs, root, entries)

    dirs = {
        e.base_name: e.path
        for e in entries
        if e.type == pafs.FileType.Directory
        and (
            fs.get_file_info(_join(e.path, RESULT_FILE)).type == pafs.FileType.File
            or fs.get_file_info(_join(e.path, PARAMS_FILE)).type == pafs.FileType.File
        )
    }
    by_dir = {s["relative_logdir"]: tid for tid, s in state.items() if s.get("relative_logdir")}
    trials: dict[str, TrialRecord] = {}
    for name, dir_path in sorted(dirs.items()):
        results = _json_lines(_read_text(fs, _join(dir_path, RESULT_FILE)))
        params = _json_file(fs, _join(dir_path, PARAMS_FILE))
        match = _TRIAL_DIR.search(name)
        trial_id = by_dir.get(name) or (results[-1].get("trial_id") if results else None)
        trial_id = trial_id or (match.group(1) if match else name)
        s = state.get(trial_id, {})
        error_file = _join(dir_path, s.get("error_filename") or ERROR_FILE)
        error = _last_error_line(_read_text(fs, error_file))
        status = _status(s.get("status"), _infer_status(results, error))
        trials[trial_id] = TrialRecord(
            trial_id=trial_id,
            status=status,
            config=s.get("config") or params or (results[-1].get("config", {}) if results else {}),
            results=results,
            path=_display_path(path, root, dir_path),
            error=error,
            num_failures=int(s.get("num_failures") or 0),
        )
    for trial_id, s in state.items():  # trials the searcher created that have no directory yet
        if trial_id not in trials:
            trials[trial_id] = TrialRecord(trial_id, s.get("status") or "PENDING", s["config"])
    name = posixpath.basename(root.rstrip("/"))
    return Experiment(path, name, base_config, list(trials.values()))


def _json_file(fs, path: str) -> dict:
    """A JSON object file; {} when absent or cut short (being written)."""
    try:
        value = json.loads(_read_text(fs, path) or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _status(saved: str | None, inferred: str) -> str:
    """The saved status, unless the result lines show the trial has ended since the state was
    saved (Tune saves its state every few seconds; the last result line, ``done``, comes first).
    An error.txt alone does not override it: a trial that Tune retried has one and runs on."""
    if saved in ("PENDING", "RUNNING", "PAUSED") and inferred == "TERMINATED":
        return inferred
    return saved or inferred


def _infer_status(results: list[dict], error: str | None) -> str:
    if error:
        return "ERROR"
    if results and results[-1].get("done"):
        return "TERMINATED"
    return "RUNNING" if results else "PENDING"


def _display_path(given: str, root: str, path: str) -> str:
    """``path`` in the form the user gave the experiment (URI stays URI)."""
    if "://" not in given:
        return path
    return given.rstrip("/") + path[len(root.rstrip("/")) :]


# ---------------------------------------------------------------- rows


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(d: dict, dotted: str, default=None):
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _default(section: str, name: str):
    from raymmft import config

    model = {"train": config.TrainConfig, "search": config.SearchConfig}[section]
    return model.model_fields[name].default


def configured_epochs(base_config: dict, trial_config: dict) -> int:
    """The trial's ``train.epochs``: searched, else the base config's, else the default."""
    value = _get(trial_config, "train.epochs", _get(base_config, "train.epochs"))
    return int(value if value is not None else _default("train", "epochs"))


def _stop_reason(status: str, epochs: float, max_epochs: int) -> str:
    if status == "ERROR":
        return "error"
    if status == "TERMINATED":
        return "completed" if epochs >= max_epochs else "early_stopped"
    return "running" if status in ("RUNNING", "PAUSED") else "pending"


def _checkpoint(exp: Experiment, t: TrialRecord) -> str | None:
    """The last reported checkpoint, found under this experiment directory when it is there (the
    experiment may have been moved since), else the newest ``train_runs/<trial>/checkpoint_*``."""
    from pyarrow import fs as pafs

    fs, root = storage_filesystem(exp.path)
    runs = _join(root, TRAIN_RUNS_DIR, t.trial_id)
    reported = next(
        (r["checkpoint_path"] for r in reversed(t.results) if r.get("checkpoint_path")), None
    )
    if reported:
        here = _join(runs, posixpath.basename(reported.rstrip("/")))
        if fs.get_file_info(here).type == pafs.FileType.Directory:
            return _display_path(exp.path, root, here)
        return reported
    if fs.get_file_info(runs).type != pafs.FileType.Directory:
        return None
    found = sorted(
        e.path
        for e in fs.get_file_info(pafs.FileSelector(runs))
        if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")
    )
    return _display_path(exp.path, root, found[-1]) if found else None


def report_rows(exp: Experiment) -> list[dict]:
    """One row per trial: the columns of ``summary.trial_rows`` (``trial_id``, ``status``,
    ``param.<field>``, ``epochs``, ``reports``, the objectives, ``best_<metric>``, ``stop_reason``,
    ``checkpoint_path``, ``path``, ``error``), plus every final metric under its reported name,
    ``max_epochs``, ``best_epoch`` (of the best ``score``), ``time_total_s``, ``num_failures``."""
    rows = []
    for t in exp.trials:
        last = t.results[-1] if t.results else {}
        max_epochs = configured_epochs(exp.base_config, t.config)
        epochs = last.get("epoch")
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            **{f"param.{k}": v for k, v in flatten_fields(t.config).items()},
            "epochs": epochs,
            "max_epochs": max_epochs,
            "reports": len(t.results),
            "stop_reason": _stop_reason(t.status, _float(epochs), max_epochs),
        }
        for key in ("id_acc", "ood_auroc", "ood_fpr95", "modality_gap", "score"):
            row[key] = _float(last.get(key))
        for key, value in last.items():
            if key not in TUNE_KEYS and key not in row and key != "epoch" and _is_number(value):
                row[key] = value
        for metric, mode in BEST_OF.items():
            values = [_float(r.get(metric)) for r in t.results]
            values = [v for v in values if not math.isnan(v)]
            row[f"best_{metric}"] = (max if mode == "max" else min)(values) if values else math.nan
        scored = [r for r in t.results if not math.isnan(_float(r.get("score")))]
        row["best_epoch"] = max(scored, key=lambda r: r["score"]).get("epoch") if scored else None
        row["time_total_s"] = _float(last.get("time_total_s"))
        row["num_failures"] = t.num_failures
        row["checkpoint_path"] = _checkpoint(exp, t)
        row["path"] = t.path
        row["error"] = t.error
        rows.append(row)
    return rows


# ---------------------------------------------------------------- parquet


def rows_table(rows: list[dict]):
    """A pyarrow table of ``rows``; a column whose values mix types (a ``choice`` of numbers and
    strings) is stored as strings."""
    import pyarrow as pa

    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array([None if v is None else str(v) for v in values])
    return pa.table(columns) if columns else pa.table({"trial_id": pa.array([], pa.string())})


# ---------------------------------------------------------------- plots


def _short_params(row: dict, limit: int = 3) -> str:
    parts = []
    for k, v in row.items():
        if k.startswith("param.") and len(parts) < limit:
            name = k.rsplit(".", 1)[-1]
            parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return ", ".join(parts)


FINISHED = ("completed", "early_stopped")


def plot_pareto(rows: list[dict], best: dict | None, title: str):
    """Every trial in (ID accuracy, OoD AUROC), the front highlighted with its attainment
    boundary, the best annotated; hollow markers for trials not finished (running, errored).
    Returns a matplotlib ``Figure`` (no pyplot: no global state, any backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5.5), dpi=110)
    ax = fig.subplots()
    valid = [r for r in rows if not (math.isnan(r["id_acc"]) or math.isnan(r["ood_auroc"]))]
    front = sorted((r for r in valid if r.get("pareto")), key=lambda r: r["id_acc"])
    done = [r for r in valid if not r.get("pareto") and r["stop_reason"] in FINISHED]
    unfinished = [r for r in valid if not r.get("pareto") and r["stop_reason"] not in FINISHED]

    def xy(rs):
        return [r["id_acc"] for r in rs], [r["ood_auroc"] for r in rs]

    ax.scatter(*xy(done), s=40, c="#9e9e9e", label=f"dominated ({len(done)})", zorder=2)
    if unfinished:
        ax.scatter(
            *xy(unfinished),
            s=40,
            facecolors="none",
            edgecolors="#616161",
            label=f"dominated, running or errored ({len(unfinished)})",
            zorder=2,
        )
    if front:
        # the attainment boundary: everything below and left of it is dominated
        ax.step(*xy(front), where="pre", c="#d62728", lw=1.2, ls="--", zorder=3)
        ax.scatter(
            *xy(front),
            s=80,
            c="#d62728",
            edgecolors="black",
            label=f"Pareto front ({len(front)})",
            zorder=4,
        )
    if best is not None:
        ax.scatter(*xy([best]), s=260, marker="*", c="#ffbf00", edgecolors="black", zorder=5)
    if not valid:
        ax.text(0.5, 0.5, "no trial has reported yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("ID accuracy (last report)")
    ax.set_ylabel("OoD AUROC (last report, mean over OoD val sets)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    if valid:
        ax.legend(loc="best", fontsize=8)
    if best is not None:
        # put the label on the side of the point that has room
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        right = best["id_acc"] > (x0 + x1) / 2
        top = best["ood_auroc"] > (y0 + y1) / 2
        ax.annotate(
            f"best {best['trial_id']}\n{_short_params(best)}",
            (best["id_acc"], best["ood_auroc"]),
            xytext=(-14 if right else 14, -30 if top else 24),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "lw": 0.8},
            bbox={"boxstyle": "round", "fc": "white", "alpha": 0.9},
            zorder=6,
        )
    fig.tight_layout()
    return fig


def plot_curves(exp: Experiment, rows: list[dict], top: int):
    """OoD AUROC and ID accuracy over epochs for the ``top`` trials by final ``score``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ranked = sorted((r for r in rows if not math.isnan(r["score"])), key=lambda r: -r["score"])[
        :top
    ]
    records = {t.trial_id: t for t in exp.trials}
    fig = Figure(figsize=(11, 4.5), dpi=110)
    axes = fig.subplots(1, 2)
    for metric, ax, label in (
        ("ood_auroc", axes[0], "OoD AUROC"),
        ("id_acc", axes[1], "ID accuracy"),
    ):
        for row in ranked:
            points = [
                (r["epoch"], _float(r.get(metric)))
                for r in records[row["trial_id"]].results
                if "epoch" in r
            ]
            if points:
                xs, ys = zip(*points)
                mark = " *" if row.get("pareto") else ""
                ax.plot(xs, ys, "o-", label=f"{row['trial_id']}{mark} ({_short_params(row)})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if not ranked:
            ax.text(0.5, 0.5, "no trial has reported yet", ha="center", transform=ax.transAxes)
    if ranked:
        axes[0].legend(fontsize=7)
    fig.suptitle(f"{exp.name}: top {len(ranked)} trials by score (* = Pareto front)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- the report


def _write_bytes(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(experiment_path: str, out_dir: str | None = None, *, top: int = 5) -> ReportPaths:
    """Read the experiment, write ``trials.parquet``, ``pareto.png``, ``curves.png`` into
    ``out_dir`` (default ``<experiment>/report``; local or URI) and return their paths."""
    import pyarrow.parquet as pq

    from raymmft.summary import best_row, format_trials, mark_front

    exp = read_experiment(str(experiment_path))
    rows = report_rows(exp)
    mark_front(rows)
    weight = _get(exp.base_config, "search.score_weight")
    best = best_row(
        rows, float(weight if weight is not None else _default("search", "score_weight"))
    )

    out = str(out_dir) if out_dir is not None else _join(str(experiment_path), REPORT_DIR)
    if "://" not in out:
        out = str(Path(out).expanduser().resolve())
    fs, out_root = storage_filesystem(out)
    fs.create_dir(out_root, recursive=True)
    paths = {
        name: (_join(out_root, name), _display_path(out, out_root, _join(out_root, name)))
        for name in ("trials.parquet", "pareto.png", "curves.png")
    }
    pq.write_table(rows_table(rows), paths["trials.parquet"][0], filesystem=fs)
    title = f"{exp.name}: {len(rows)} trials, Pareto front of (ID accuracy, OoD AUROC)"
    _write_bytes(fs, paths["pareto.png"][0], _png(plot_pareto(rows, best, title)))
    _write_bytes(fs, paths["curves.png"][0], _png(plot_curves(exp, rows, top)))

    return ReportPaths(
        out_dir=out,
        trials_parquet=paths["trials.parquet"][1],
        pareto_png=paths["pareto.png"][1],
        curves_png=paths["curves.png"][1],
        tensorboard_command=tensorboard_command(experiment_path),
        table=format_trials(rows) if rows else "(no trials yet)",
        num_trials=len(rows),
        best_trial=best["trial_id"] if best else None,
        notes=_notes(rows) + _hparams_note(exp),
    )


def tensorboard_command(experiment_path: str) -> str:
    path = str(experiment_path)
    if "://" not in path:
        path = str(Path(path).expanduser().resolve())
    return f"tensorboard --logdir {path}"


def _notes(rows: list[dict]) -> tuple[str, ...]:
    notes = []
    unfinished = [r["trial_id"] for r in rows if r["stop_reason"] in ("running", "pending")]
    if unfinished:
        notes.append(
            f"partial: {len(unfinished)} trial(s) not finished ({', '.join(unfinished)}); "
            "their values are the latest reported"
        )
    errored = [r for r in rows if r["stop_reason"] == "error"]
    for r in errored:
        notes.append(f"trial {r['trial_id']} errored: {r['error']}")
    return tuple(notes)


def _hparams_note(exp: Experiment) -> tuple[str, ...]:
    """TensorBoard's HParams dashboard takes its columns from the first run it finds with an
    experiment summary; Tune's own TBX logger writes one per ``trial_driver_*`` directory (its
    flattened params, ``ray/tune/*`` metrics), so with both present the columns may be Tune's."""
    from pyarrow import fs as pafs

    fs, root = storage_filesystem(exp.path)
    tb = _join(root, TENSORBOARD_DIR)
    first = next((t.path for t in exp.trials if t.path), None)
    if first is None or fs.get_file_info(tb).type != pafs.FileType.Directory:
        return ()
    _, first_path = storage_filesystem(first)
    tune_events = any(
        e.base_name.startswith("events.out.tfevents")
        for e in fs.get_file_info(pafs.FileSelector(first_path))
    )
    if not tune_events:
        return ()
    return (
        "HParams dashboard: Tune's own TensorBoard logs in trial_driver_* compete with the "
        "trials' entries; for the trials' hparams view use "
        f"tensorboard --logdir {_display_path(exp.path, root, tb)}",
    )
