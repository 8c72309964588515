"""One row per trial, built once from an ``Experiment``: what the search prints at its end, what
``raymmft report`` prints and what ``trials.parquet`` holds.

Stop reason: ``error`` (status ERROR), ``completed`` (reached the configured epochs),
``early_stopped`` (TERMINATED before them: ASHA), ``running`` / ``pending`` otherwise.

The objectives, the score, the front and the choice are the search's own
(``raymmft.objectives.Objectives``, read from the saved config). The zero-shot starting model is a
candidate like any trial: it can be on the front and it can be chosen (then no fine-tuned trial
beat it on the score, and the report says so).
"""

from __future__ import annotations

import math
from typing import Any

from raymmft.objectives import SCORE, TIME_PARTS, Objectives, interp_name, mode_of, to_float
from raymmft.results.experiment import TUNE_KEYS, Experiment
from raymmft.search_space import flatten_fields

# each trial's change against the zero-shot starting model (besides the objectives)
DELTAS = ("id_acc", "ood_auroc", "ood_fpr95")
BASELINE_ID = "zero-shot"
FINISHED = ("completed", "early_stopped")
# best_<metric> over a trial's reports, besides the objectives
BEST_OF = ("id_acc", "ood_auroc", "ood_fpr95", SCORE)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def get_field(d: dict, dotted: str, default=None):
    """``d["a"]["b"]`` for ``dotted = "a.b"``; ``default`` when a part is missing."""
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def config_value(base_config: dict, dotted: str, trial_config: dict | None = None):
    """A config field of a trial: searched (``trial_config``), else the base config's (saved
    whole, defaults included), else, for a config saved without its defaults, today's default."""
    from raymmft import config

    value = get_field(trial_config or {}, dotted, get_field(base_config, dotted))
    if value is not None:
        return value
    section, name = dotted.split(".")
    model = {"train": config.TrainConfig, "search": config.SearchConfig}[section]
    return model.model_fields[name].default


def stop_reason(status: str, epochs: float, max_epochs: int) -> str:
    if status == "ERROR":
        return "error"
    if status == "TERMINATED":
        return "completed" if epochs >= max_epochs else "early_stopped"
    return "running" if status in ("RUNNING", "PAUSED") else "pending"


def objectives_of(exp: Experiment) -> Objectives:
    """The objectives the experiment's search optimised (its saved config)."""
    search = exp.base_config.get("search") if isinstance(exp.base_config, dict) else None
    return Objectives.of_saved(search if isinstance(search, dict) else None)


def row_metrics(exp: Experiment) -> list[str]:
    """The metrics every row carries as columns: the objectives, then the usual ones."""
    usual = ["id_acc", "ood_auroc", "ood_fpr95", "modality_gap", SCORE]
    return list(dict.fromkeys([*objectives_of(exp).metrics, *usual]))


def trial_rows(exp: Experiment) -> list[dict]:
    """One row per trial: ``trial_id``, ``status``, ``param.<field>`` (searched), ``epochs`` (of the
    last report), ``max_epochs``, ``reports``, ``stop_reason``; the last report's objectives and
    every other metric under its reported name; ``best_<metric>``, ``best_epoch`` (of the best
    ``score``), ``time_total_s``, ``num_failures``, ``checkpoint_path``, ``path``, ``error``; and
    ``time_<part>_s`` for the parts of ``TIME_PARTS`` (summed over the reports), ``pareto`` (on
    the front of the search's objectives), ``chosen`` (the one candidate recommended: on the
    front, highest score), ``baseline`` (False) and ``delta_<metric>`` against the zero-shot
    baseline for the objectives and ``DELTAS``.

    When the experiment stored its zero-shot evaluation, the first row is that baseline:
    ``trial_id == "zero-shot"``, ``baseline`` True, ``stop_reason`` ``baseline``, its metrics as
    the trials report theirs; it is a candidate on the front and in the choice like a trial."""
    objectives = objectives_of(exp)
    metrics = row_metrics(exp)
    rows = []
    for t in exp.trials:
        last = t.results[-1] if t.results else {}
        max_epochs = int(config_value(exp.base_config, "train.epochs", t.config))
        epochs = last.get("epoch")
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.status,
            **{f"param.{k}": v for k, v in flatten_fields(t.config).items()},
            "epochs": epochs,
            "max_epochs": max_epochs,
            "reports": len(t.results),
            "stop_reason": stop_reason(t.status, to_float(epochs), max_epochs),
        }
        for key in metrics:
            row[key] = to_float(last.get(key))
        for key, value in last.items():
            own = key not in TUNE_KEYS and key not in row and key != "epoch"
            if own and not key.startswith("time/") and _is_number(value):
                row[key] = value
        modes = {g.metric: g.mode for g in objectives.goals}
        for metric in dict.fromkeys([*objectives.metrics, *BEST_OF]):
            mode = modes.get(metric, mode_of(metric))
            values = [to_float(r.get(metric)) for r in t.results]
            values = [v for v in values if not math.isnan(v)]
            row[f"best_{metric}"] = (max if mode == "max" else min)(values) if values else math.nan
        scored = [r for r in t.results if not math.isnan(to_float(r.get("score")))]
        row["best_epoch"] = max(scored, key=lambda r: r["score"]).get("epoch") if scored else None
        row["time_total_s"] = to_float(last.get("time_total_s"))
        for part in TIME_PARTS:
            values = [r[f"time/{part}_s"] for r in t.results if _is_number(r.get(f"time/{part}_s"))]
            row[f"time_{part}_s"] = float(sum(values)) if values else math.nan
        row["num_failures"] = t.num_failures
        checkpoint = exp.checkpoint(t)
        row["checkpoint_path"] = checkpoint.uri if checkpoint is not None else None
        row["path"] = t.path.uri if t.path is not None else None
        row["error"] = t.error
        row["baseline"] = False
        row["alpha"] = 1.0
        row["trial"] = t.trial_id
        rows.append(row)
        rows += interpolated_rows(row, last, metrics)
    base = baseline_row(exp, metrics)
    for row in rows:
        for metric in dict.fromkeys([*objectives.metrics, *DELTAS]):
            reference = base[metric] if base is not None else math.nan
            row[f"delta_{metric}"] = row[metric] - reference
    rows = ([base] if base is not None else []) + rows
    add_confirmation(rows, confirmation_rows(exp, rows), objectives)
    mark_choice(rows, objectives)
    return rows


def confirmation_rows(exp: Experiment, rows: list[dict]) -> list[dict]:
    """One row per (candidate, seed) of a search's confirmation (``search.confirm``): each
    confirmed trial's own run (its seed, its last report) and every confirmation run's last
    report; ``candidate``, ``seed``, ``own_run``, ``status`` and the reported metrics. Empty when
    the search had no confirmation."""
    confirm = exp.confirmation
    if confirm is None:
        return []
    runs = []
    for t in confirm.trials:
        run = t.config.get("run") if isinstance(t.config, dict) else None
        if not isinstance(run, dict):
            continue
        last = t.results[-1] if t.results else {}
        runs.append(
            {
                "candidate": run.get("candidate"),
                "seed": run.get("seed"),
                "own_run": False,
                "status": t.status,
                **_metrics_of(last),
            }
        )
    by_id = {r["trial_id"]: r for r in rows}
    out = []
    for candidate in dict.fromkeys(r["candidate"] for r in runs):
        own = by_id.get(candidate)
        if own is not None:
            seed = own.get("param.train.seed", config_value(exp.base_config, "train.seed"))
            out.append(
                {
                    "candidate": candidate,
                    "seed": seed,
                    "own_run": True,
                    "status": own["status"],
                    **_metrics_of(own),
                }
            )
        out += sorted((r for r in runs if r["candidate"] == candidate), key=lambda r: r["seed"])
    return out


def _metrics_of(report: dict) -> dict:
    """The numbers a report (or a row) holds under their reported names."""
    skip = TUNE_KEYS | {"epoch", "epochs", "max_epochs", "reports", "baseline", "pareto", "chosen"}
    return {
        k: v
        for k, v in report.items()
        if _is_number(v)
        and k not in skip | {"num_failures", "confirm_runs"}
        and not k.startswith(("best_", "delta_", "time_", "time/", "param.", "mean_", "std_"))
    }


def add_confirmation(rows: list[dict], runs: list[dict], objectives: Objectives) -> None:
    """Each confirmed trial's ``confirm_runs`` (finished runs, its own included) and the mean and
    standard deviation (``mean_<m>``, ``std_<m>``; ``ddof=1``) of every objective and the score
    over them; an interpolated candidate (``alpha`` < 1) gets those of its trial's runs at its
    alpha."""
    if not runs:
        return
    import statistics

    for row in rows:
        if row.get("baseline"):
            continue
        alpha = row.get("alpha", 1.0)
        mine = [
            # an interpolated candidate's runs: the same runs' metrics at its alpha
            r if alpha == 1.0 else {m: r.get(interp_name(m, alpha)) for m in objectives.metrics}
            for r in runs
            if r["candidate"] == row.get("trial", row["trial_id"])
        ]
        done = [
            r for r in mine if all(not math.isnan(to_float(r.get(m))) for m in objectives.metrics)
        ]
        row["confirm_runs"] = len(done)
        for metric in dict.fromkeys([*objectives.metrics, SCORE]):
            values = [
                objectives.score(r) if metric == SCORE else to_float(r.get(metric)) for r in done
            ]
            row[f"mean_{metric}"] = statistics.fmean(values) if values else math.nan
            row[f"std_{metric}"] = statistics.stdev(values) if len(values) > 1 else math.nan


def baseline_row(exp: Experiment, metrics: list[str] | None = None) -> dict | None:
    """The zero-shot starting model as a row (``None`` when the experiment has no stored one)."""
    stored = exp.zero_shot()
    if stored is None or not isinstance(stored.get("metrics"), dict):
        return None
    row: dict[str, Any] = {
        "trial_id": BASELINE_ID,
        "status": "BASELINE",
        "epochs": 0,
        "reports": 0,
        "stop_reason": "baseline",
        "baseline": True,
        "alpha": 0.0,
    }
    objectives = objectives_of(exp)
    stored = dict(stored["metrics"])
    # the score as this search defines it (a stored one may predate its objectives' weights)
    stored[SCORE] = objectives.score(stored)
    for key in metrics or row_metrics(exp):
        row[key] = to_float(stored.get(key))
    row.update({k: v for k, v in stored.items() if k not in row and _is_number(v)})
    for metric in dict.fromkeys([*objectives.metrics, *DELTAS]):
        row[f"delta_{metric}"] = 0.0
    return row


def interpolated_rows(row: dict, last: dict, metrics: list[str]) -> list[dict]:
    """A trial's candidates between the start and itself (``eval.interpolation``): one row per
    alpha its last report measured, ``trial_id`` ``<trial>@<alpha>``, ``alpha``, ``trial`` (the
    trial's id), its searched values, status and checkpoint, and the metrics of
    ``interp/<alpha>/...`` under their own names."""
    alphas = sorted(
        {float(k.split("/")[1]) for k in last if k.startswith("interp/") and k.count("/") >= 2}
    )
    out = []
    for alpha in alphas:
        prefix = interp_name("", alpha)
        own = {k.removeprefix(prefix): v for k, v in last.items() if k.startswith(prefix)}
        keep = ("status", "epochs", "max_epochs", "reports", "stop_reason", "checkpoint_path")
        candidate = {
            "trial_id": f"{row['trial_id']}@{alpha:g}",
            **{k: v for k, v in row.items() if k.startswith("param.") or k in keep},
            "baseline": False,
            "alpha": alpha,
            "trial": row["trial_id"],
        }
        for key in metrics:
            candidate[key] = to_float(own.get(key))
        candidate.update({k: v for k, v in own.items() if k not in candidate and _is_number(v)})
        out.append(candidate)
    return out


def trial_runs(rows: list[dict]) -> list[dict]:
    """The trials themselves: no baseline, no interpolated candidates."""
    return [r for r in rows if not r.get("baseline") and r.get("alpha", 1.0) == 1.0]


def trials_only(rows: list[dict]) -> list[dict]:
    """The rows without the zero-shot baseline."""
    return [r for r in rows if not r.get("baseline")]


def choice_view(row: dict, confirming: bool) -> dict:
    """What the choice sees of a row: its last report's values; with a confirmation, a trial's
    means over its runs (a trial that was not confirmed is no candidate then)."""
    if row.get("baseline") or not confirming:
        return row
    if not row.get("confirm_runs"):
        return {}
    return {k.removeprefix("mean_"): v for k, v in row.items() if k.startswith("mean_")}


def mark_choice(rows: list[dict], objectives: Objectives) -> int | None:
    """Mark every candidate (the baseline and the trials; with a confirmation, the baseline and
    the confirmed trials on their means) on the Pareto front of the objectives (``pareto``) and
    the one chosen (``chosen``: on the front, highest score); return its index."""
    confirming = any(r.get("confirm_runs") for r in rows)
    views = [choice_view(r, confirming) for r in rows]
    front = set(objectives.front(views))
    chosen = objectives.choose(views)
    for i, r in enumerate(rows):
        r["pareto"] = i in front
        r["chosen"] = i == chosen
    return chosen


def chosen_row(rows: list[dict]) -> dict | None:
    """The recommended candidate (possibly the zero-shot baseline); ``None`` when no candidate
    has every objective."""
    return next((r for r in rows if r.get("chosen")), None)


def best_trial_row(rows: list[dict], objectives: Objectives) -> dict | None:
    """The best fine-tuned option: the choice among the trials alone (on their means when
    confirmed)."""
    trials = trials_only(rows)
    confirming = any(r.get("confirm_runs") for r in trials)
    index = objectives.choose([choice_view(r, confirming) for r in trials])
    return None if index is None else trials[index]


def _choice_score(row: dict, objectives: Objectives) -> str:
    """A candidate's score as the choice saw it, with its spread when it is a mean."""
    runs = row.get("confirm_runs") or 0
    if row.get("baseline") or runs == 0:
        return f"{objectives.score(row):.3f}"
    spread = row.get(f"std_{SCORE}", math.nan)
    spread = "" if math.isnan(spread) else f" ± {spread:.3f}"
    return f"{row[f'mean_{SCORE}']:.3f}{spread} (mean of {runs} runs)"


def choice_statement(rows: list[dict], objectives: Objectives) -> str | None:
    """The choice in plain words, the zero-shot starting model's case first: when it is chosen,
    no fine-tuned trial beat it on the score, and the best trial is named as the best fine-tuned
    option."""
    chosen = chosen_row(rows)
    if chosen is None:
        return None
    best = best_trial_row(rows, objectives)
    how = f"score = {objectives.formula()}"
    if chosen.get("baseline"):
        if best is None:
            return (
                f"the zero-shot starting model is chosen: no trial reported every objective "
                f"({objectives.describe()}); nothing was fine-tuned that could be compared"
            )
        return (
            f"no trial beat the zero-shot model on score: {_choice_score(chosen, objectives)} "
            f"against {_choice_score(best, objectives)} for the best trial {best['trial_id']} "
            f"({how}); the recommendation is the starting model itself, and "
            f"{best['trial_id']} is the best fine-tuned option"
        )
    base = next((r for r in rows if r.get("baseline")), None)
    against = f", zero-shot {_choice_score(base, objectives)}" if base is not None else ""
    alpha = chosen.get("alpha", 1.0)
    mixed = (
        f"; its weights are (1 - {alpha:g}) * start + {alpha:g} * trial {chosen['trial']} "
        "(model.interpolate)"
        if alpha < 1.0
        else ""
    )
    return (
        f"trial {chosen['trial_id']} is chosen: on the Pareto front of "
        f"{objectives.describe()}, highest score {_choice_score(chosen, objectives)}{against} "
        f"({how}){mixed}"
    )


def searched_params(row: dict) -> dict[str, Any]:
    """``{dotted.field: value}`` of a row's searched fields."""
    return {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}


# ---------------------------------------------------------------- text


def format_table(
    rows: list[dict], columns: list[str], *, marks: dict[int, str] | None = None
) -> str:
    """A plain fixed-width table; floats with 4 decimals; ``marks`` prefixes chosen rows."""
    marks = marks or {}

    def cell(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e-3 and v else f"{v:.4f}"
        return "" if v is None else str(v)

    body = [[marks.get(i, ""), *(cell(r.get(c)) for c in columns)] for i, r in enumerate(rows)]
    head = ["", *columns]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _nan_low(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def sorted_rows(rows: list[dict]) -> list[dict]:
    """The baseline first, then best ``score`` first; trials without one last."""
    return sorted(rows, key=lambda r: (not r.get("baseline"), -_nan_low(r["score"])))


def table_columns(objectives: Objectives, has_base: bool) -> list[str]:
    """The metric columns of the table: each objective (and its change against the baseline),
    then the usual ones not already there, and the score."""
    cols: list[str] = []
    for metric in dict.fromkeys([*objectives.metrics, "id_acc", "ood_auroc", "ood_fpr95"]):
        cols += [metric, f"delta_{metric}"] if has_base else [metric]
    return [*cols, "modality_gap", SCORE]


def format_trials(rows: list[dict], objectives: Objectives) -> str:
    """The trial table: the zero-shot baseline first, then score descending, the Pareto front
    marked ``*`` and the choice ``>``, each trial's change against the baseline (``delta_*``)."""
    if not rows:
        return "(no trials yet)"
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    ordered = sorted_rows(rows)
    marks = {i: ">" if r.get("chosen") else "*" for i, r in enumerate(ordered) if r.get("pareto")}
    has_base = any(r.get("baseline") for r in rows)
    cols = ["trial_id", "status", "stop_reason", *params, "epochs"]
    cols += table_columns(objectives, has_base)
    legend = f"(* = Pareto front of {objectives.describe()}; > = chosen: on the front, highest "
    legend += f"score = {objectives.formula()}"
    legend += "; delta_* = change against the zero-shot starting model)" if has_base else ")"
    return format_table(ordered, cols, marks=marks) + "\n" + legend


def format_confirmation(rows: list[dict], objectives: Objectives) -> str | None:
    """The confirmed trials: runs, and mean ± std of every objective and the score over them
    (``None`` without a confirmation)."""
    confirmed = [r for r in rows if r.get("confirm_runs")]
    if not confirmed:
        return None
    metrics = [*dict.fromkeys([*objectives.metrics, SCORE])]

    def pm(row: dict, metric: str) -> str:
        mean, std = row[f"mean_{metric}"], row[f"std_{metric}"]
        return f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")

    table = [
        {"trial_id": r["trial_id"], "runs": r["confirm_runs"], **{m: pm(r, m) for m in metrics}}
        for r in sorted(confirmed, key=lambda r: -_nan_low(r[f"mean_{SCORE}"]))
    ]
    head = "confirmation over seeds (mean ± std over each trial's runs, its own included):"
    return head + "\n" + format_table(table, ["trial_id", "runs", *metrics])


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
