"""The report of a search, finished, running or interrupted: ``trials.parquet``, the trial table
with the Pareto front of (ID accuracy, OoD AUROC), ``pareto.png`` and ``curves.png``, written into
``<experiment>/report`` (or anywhere else) on any storage, with the TensorBoard command to view
the experiment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qsl

from raymmft.results.experiment import REPORT_DIR, TENSORBOARD_DIR, Experiment, read_experiment
from raymmft.results.plots import plot_curves, plot_pareto, plot_time, png
from raymmft.results.rows import best_row, config_value, format_trials, rows_table, trial_rows
from raymmft.storage import Location


@dataclass(frozen=True)
class ReportPaths:
    """What ``write_report`` wrote, the printable table and the TensorBoard command."""

    out_dir: str
    trials_parquet: str
    pareto_png: str
    curves_png: str
    time_png: str
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
            f"  {self.time_png}",
            f"TensorBoard: {self.tensorboard_command}",
            *self.notes,
        ]
        return "\n".join(lines)


def write_report(
    experiment: str | Location, out_dir: str | Location | None = None, *, top: int = 5
) -> ReportPaths:
    """Read the experiment, write ``trials.parquet``, ``pareto.png``, ``curves.png`` into
    ``out_dir`` (default ``<experiment>/report``; local or URI) and return their locations."""
    import pyarrow.parquet as pq

    exp = read_experiment(experiment)
    rows = trial_rows(exp)
    best = best_row(rows, float(config_value(exp.base_config, "search.score_weight")))

    out = exp.location.join(REPORT_DIR) if out_dir is None else Location.parse(out_dir)
    out.mkdir()
    names = ("trials.parquet", "pareto.png", "curves.png", "time.png")
    parquet, pareto, curves, times = (out.join(n) for n in names)
    pq.write_table(rows_table(rows), parquet.fs_path, filesystem=parquet.filesystem)
    title = f"{exp.name}: {len(rows)} trials, Pareto front of (ID accuracy, OoD AUROC)"
    pareto.write_bytes(png(plot_pareto(rows, best, title)))
    curves.write_bytes(png(plot_curves(exp, rows, top)))
    times.write_bytes(png(plot_time(rows)))
    return ReportPaths(
        out_dir=str(out),
        trials_parquet=str(parquet),
        pareto_png=str(pareto),
        curves_png=str(curves),
        time_png=str(times),
        tensorboard_command=tensorboard_command(exp.location),
        table=format_trials(rows),
        num_trials=len(rows),
        best_trial=best["trial_id"] if best else None,
        notes=_notes(rows) + _hparams_note(exp),
    )


def tensorboard_command(logdir: str | Location) -> str:
    """The shell command that shows ``logdir`` in TensorBoard.

    TensorBoard reads ``s3://`` through boto3, which knows nothing of a URI's query: the endpoint
    of an S3-compatible store goes into ``S3_ENDPOINT`` (from ``endpoint_override`` and
    ``scheme`` in the query, else ``AWS_ENDPOINT_URL``), the rest of the query is dropped.
    """
    location = Location.parse(logdir)
    if location.is_local:
        return f"tensorboard --logdir {location.path}"
    bare = Location(location.scheme, location.netloc, location.path).uri
    env = ""
    if location.scheme == "s3":
        query = dict(parse_qsl(location.query))
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            env = f"S3_ENDPOINT={endpoint} "
    return f"{env}tensorboard --logdir {bare}"


def _notes(rows: list[dict]) -> tuple[str, ...]:
    notes = []
    unfinished = [r["trial_id"] for r in rows if r["stop_reason"] in ("running", "pending")]
    if unfinished:
        notes.append(
            f"partial: {len(unfinished)} trial(s) not finished ({', '.join(unfinished)}); "
            "their values are the latest reported"
        )
    for r in rows:
        if r["stop_reason"] == "error":
            notes.append(f"trial {r['trial_id']} errored: {r['error']}")
    return tuple(notes)


def _hparams_note(exp: Experiment) -> tuple[str, ...]:
    """TensorBoard's HParams dashboard takes its columns from the first run it finds with an
    experiment summary; Tune's own TBX logger writes one per ``trial_driver_*`` directory (its
    flattened params, ``ray/tune/*`` metrics), so with both present the columns may be Tune's."""
    tb = exp.location.join(TENSORBOARD_DIR)
    first = next((t.path for t in exp.trials if t.path is not None), None)
    if first is None or not tb.is_dir():
        return ()
    if not any(name.startswith("events.out.tfevents") for name in first.children()):
        return ()
    return (
        "HParams dashboard: Tune's own TensorBoard logs in trial_driver_* compete with the "
        f"trials' entries; for the trials' hparams view use {tensorboard_command(tb)}",
    )
