"""The report of a search, finished, running or interrupted, written into ``<experiment>/report``
(or anywhere else) on any storage:

- ``trials.parquet``: one row per trial, and the zero-shot baseline's;
- ``confirmation.parquet``: with ``search.confirm``, one row per (confirmed trial, seed);
- ``pareto.png``, ``curves.png``, ``time.png``, ``importance.png``;
- ``best.yaml``: the whole config with the chosen trial's values and no search space
  (``raymmft train report/best.yaml`` re-runs it); when the zero-shot starting model is chosen,
  its head says so and the config is the best fine-tuned option's;
- ``index.html``: one self-contained page (the images inside) with all of it and the chosen
  configuration's test-set results, to open or send. Rendered with Jinja2 (autoescaping, a
  template file instead of HTML pieced together in code).

It needs no Ray, no torch and no cluster, and it reads partial results.
"""

from __future__ import annotations

import base64
import copy
import io
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import yaml

from raymmft.results.experiment import (
    OPTUNA_JOURNAL,
    REPORT_DIR,
    TENSORBOARD_DIR,
    Experiment,
    inside,
    printable,
    read_experiment,
)
from raymmft.results.importance import Importance, plot_importance, search_importance
from raymmft.results.plots import plot_axes, plot_curves, plot_pareto, plot_time, png
from raymmft.results.rows import (
    best_trial_row,
    choice_statement,
    chosen_row,
    confirmation_rows,
    format_confirmation,
    format_trials,
    objectives_of,
    rows_table,
    searched_params,
    sorted_rows,
    table_columns,
    trial_rows,
    trial_runs,
)
from raymmft.storage import Location

TEMPLATE = Path(__file__).resolve().parents[1] / "assets" / "templates" / "report.html"


@dataclass(frozen=True)
class ReportPaths:
    """What ``write_report`` wrote, the printable table and the TensorBoard command."""

    out_dir: str
    trials_parquet: str
    pareto_png: str
    curves_png: str
    time_png: str
    importance_png: str
    index_html: str
    best_yaml: str | None
    confirmation_parquet: str | None
    tensorboard_command: str
    table: str
    num_trials: int
    best_trial: str | None = None
    choice: str | None = None
    notes: tuple[str, ...] = ()

    importance: tuple[str, ...] = ()

    def describe(self) -> str:
        files = [self.index_html, self.trials_parquet, self.pareto_png, self.curves_png]
        files += [self.time_png, self.importance_png] + ([self.best_yaml] if self.best_yaml else [])
        files += [self.confirmation_parquet] if self.confirmation_parquet else []
        lines = [
            *self.importance,
            f"report of {self.num_trials} trial(s) in {self.out_dir}:",
            *(f"  {f}" for f in files),
            f"TensorBoard: {self.tensorboard_command}",
            f"  the objectives of every trial: {tensorboard_objectives_url()}",
            *self.notes,
        ]
        return "\n".join(lines)


def write_report(
    experiment: str | Location, out_dir: str | Location | None = None, *, top: int = 5
) -> ReportPaths:
    """Read the experiment and write the report (module docstring) into ``out_dir`` (default
    ``<experiment>/report``; local or URI); return what it wrote."""
    exp = read_experiment(experiment, needs_config=True)
    rows = trial_rows(exp)
    objectives = objectives_of(exp)
    chosen = chosen_row(rows)
    best = best_trial_row(rows, objectives)  # the best fine-tuned option (best.yaml)
    importance = search_importance(rows, exp.base_config)
    test = exp.test_evaluation()  # every file read and checked before anything is written

    # <experiment>/report stays in the experiment (a link out of it is refused); every file is
    # written beside its place and renamed into it, so a link in its place is replaced, not
    # followed
    out = (
        inside(exp.location, exp.location.join(REPORT_DIR))
        if out_dir is None
        else Location.parse(out_dir)
    )
    out.mkdir()
    names = ("trials.parquet", "pareto.png", "curves.png", "time.png", "importance.png")
    parquet, pareto, curves, times, importance_png = (out.join(n) for n in names)
    parquet.write_bytes(_parquet(rows))
    confirmation = None
    runs = confirmation_rows(exp, rows)
    if runs:
        confirmation = out.join("confirmation.parquet").write_bytes(_parquet(runs))
    axes = plot_axes(objectives)
    title = f"{exp.name}: {len(trial_runs(rows))} trials, Pareto front of {objectives.describe()}"
    images = {
        "pareto": png(plot_pareto(rows, chosen, title, axes)),
        "curves": png(plot_curves(exp, rows, top)),
        "time": png(plot_time(rows)),
        "importance": png(plot_importance(importance)),
    }
    for location, key in ((pareto, "pareto"), (curves, "curves"), (times, "time")):
        location.write_bytes(images[key])
    importance_png.write_bytes(images["importance"])
    best_yaml = None
    if best is not None:
        best_yaml = out.join("best.yaml").write_text(best_config_yaml(exp, best, rows))
    notes = _notes(exp, rows) + _hparams_note(exp)
    page = render_page(exp, rows, best, importance, images, notes, test)
    index = out.join("index.html").write_text(page)
    return ReportPaths(
        out_dir=str(out),
        trials_parquet=str(parquet),
        pareto_png=str(pareto),
        curves_png=str(curves),
        time_png=str(times),
        importance_png=str(importance_png),
        index_html=str(index),
        best_yaml=str(best_yaml) if best_yaml is not None else None,
        confirmation_parquet=str(confirmation) if confirmation is not None else None,
        tensorboard_command=tensorboard_command(exp.location),
        table=format_trials(rows, objectives),
        num_trials=len(trial_runs(rows)),
        best_trial=best["trial_id"] if best else None,
        choice=choice_statement(rows, objectives),
        notes=notes,
        importance=tuple(importance.lines()),
    )


def _parquet(rows: list[dict]) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(rows_table(rows), buffer)
    return buffer.getvalue()


def best_config(exp: Experiment, best: dict) -> dict:
    """The search's whole config with the best trial's values set and no search space; it runs
    as a new experiment (``<name>-best``) beside the search."""
    from raymmft.search_space import set_path

    raw = copy.deepcopy(exp.base_config)
    raw.pop("search", None)
    for key, value in searched_params(best).items():
        set_path(raw, key, value)
    if best.get("alpha", 1.0) < 1.0:  # an interpolated candidate: train applies its alpha
        set_path(raw, "model.interpolate", float(best["alpha"]))
    raw.setdefault("storage", {})["name"] = f"{exp.name}-best"
    return raw


def best_config_yaml(exp: Experiment, best: dict, rows: list[dict]) -> str:
    """``best.yaml``: the best trial's whole config, under a head that says what was chosen
    (the zero-shot starting model, when no trial beat it on the score)."""
    chosen = chosen_row(rows)
    # comments of YAML: a newline in a name (a directory's) would start a line of config
    name, trial = printable(exp.name), printable(best["trial_id"])
    if chosen is not None and chosen.get("baseline"):
        statement = printable(choice_statement(rows, objectives_of(exp)) or "", 2000)
        head = (
            f"# The search {name} chose the zero-shot starting model: {statement}.\n"
            "# Use the starting model (model.arch and model.pretrained below) as it is. What\n"
            f"# follows is the best fine-tuned option, trial {trial}; re-run it with:\n"
            "# raymmft train best.yaml\n"
        )
    else:
        head = (
            f"# The chosen configuration of the search {name}: trial {trial} "
            f"(Pareto front, highest score).\n# Re-run it with: raymmft train best.yaml\n"
        )
    return head + yaml.safe_dump(best_config(exp, best), sort_keys=False)


def _num(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
    return str(value)


def _delta(value) -> str:
    return "" if not isinstance(value, float) or math.isnan(value) else f"{value:+.4f}"


def _sign(value, lower_better: bool = False) -> str:
    if not isinstance(value, float) or math.isnan(value) or value == 0:
        return ""
    return "up" if (value > 0) != lower_better else "down"


def _secs(value) -> str:
    return "" if not isinstance(value, float) or math.isnan(value) else f"{value:.0f}"


def _pct(value) -> str:
    return "" if not isinstance(value, (int, float)) or math.isnan(value) else f"{100 * value:.2f}"


def _ci(pair) -> str:
    """A 95 % interval of a fraction, in %: ``[90.20, 94.91]``."""
    return f"[{_pct(pair[0])}, {_pct(pair[1])}]" if pair else ""


def _pp(value) -> str:
    """A difference of fractions in percentage points, signed."""
    return "" if not isinstance(value, (int, float)) or math.isnan(value) else f"{100 * value:+.2f}"


def _cipp(pair) -> str:
    return f"[{_pp(pair[0])}, {_pp(pair[1])}]" if pair else ""


def render_page(
    exp: Experiment,
    rows: list[dict],
    best: dict | None,
    importance: Importance,
    images: dict[str, bytes],
    notes: tuple[str, ...],
    test: dict | None = None,
) -> str:
    """``index.html``: the whole report on one page, the PNGs embedded as data URIs; ``test``:
    the test-set evaluation (``Experiment.test_evaluation``)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(
        num=_num, delta=_delta, sign=_sign, secs=_secs, pct=_pct, ci=_ci, pp=_pp, cipp=_cipp
    )
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    trials = trial_runs(rows)
    timed = [
        r
        for r in trials
        if isinstance(r.get("time_train_s"), float) and not math.isnan(r["time_train_s"])
    ]
    total = sum(r["time_total_s"] for r in timed if not math.isnan(r["time_total_s"]))
    journal = exp.location.join(OPTUNA_JOURNAL)
    fields = list(next(iter(importance.values.values()), {}))
    return template.render(
        name=exp.name,
        location=str(exp.location),
        trials=trials,
        baseline=any(r.get("baseline") for r in rows),
        rows=sorted_rows(rows),
        params=sorted(
            {k.removeprefix("param.") for r in rows for k in r if k.startswith("param.")}
        ),
        best_id=best["trial_id"] if best else None,
        best_params=searched_params(best) if best else {},
        best_yaml=best_config_yaml(exp, best, rows) if best else "",
        chosen=chosen_row(rows),
        confirmation=format_confirmation(rows, objectives_of(exp)),
        choice=choice_statement(rows, objectives_of(exp)),
        objectives=objectives_of(exp),
        metric_columns=table_columns(objectives_of(exp), False),
        test=test,
        importance=importance,
        importance_fields=fields,
        images={k: base64.b64encode(v).decode("ascii") for k, v in images.items()},
        time_share=sum(r["time_train_s"] for r in timed) / total if total else None,
        notes=notes,
        tensorboard=tensorboard_command(exp.location),
        objectives_url=tensorboard_objectives_url(),
        optuna_dashboard=f"optuna-dashboard {shlex.quote(journal.path)}"
        if journal.is_local and journal.is_file()
        else None,
    )


def tensorboard_command(logdir: str | Location) -> str:
    """The shell command that shows ``logdir`` in TensorBoard.

    TensorBoard reads ``s3://`` through boto3, which knows nothing of a URI's query: the endpoint
    of an S3-compatible store goes into ``S3_ENDPOINT`` (from ``endpoint_override`` and
    ``scheme`` in the query, else ``AWS_ENDPOINT_URL``), the rest of the query is dropped.
    """
    location = Location.parse(logdir)
    if location.is_local:
        return f"tensorboard --logdir {shlex.quote(location.path)}"
    bare = Location(location.scheme, location.netloc, location.path).uri
    env = ""
    if location.scheme == "s3":
        query = dict(parse_qsl(location.query))
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            env = f"S3_ENDPOINT={shlex.quote(endpoint)} "
    return f"{env}tensorboard --logdir {shlex.quote(bare)}"


def tensorboard_objectives_url(port: int = 6006) -> str:
    """The page TensorBoard opens on the objectives (the custom-scalars layout every trial writes)."""
    return f"http://localhost:{port}/#custom_scalars"


def _notes(exp: Experiment, rows: list[dict]) -> tuple[str, ...]:
    # what was read as missing (after the rows: they read the zero-shot evaluation)
    notes = [*exp.notes, *(exp.confirmation.notes if exp.confirmation is not None else [])]
    if not any(r.get("baseline") for r in rows):
        notes.append(
            "no zero-shot baseline: this experiment stored none (made before searches were "
            "prepared, or prepared per trial); none is computed by the report"
        )
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
