"""Which searched fields mattered for each objective: Optuna's importance API (fANOVA, seeded) on
the finished trials of a search, rebuilt from its rows (so it works on any storage, and on a
search whose Optuna study lived only in Tune's memory)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raymmft.objectives import Objectives
from raymmft.results.plots import literal_text
from raymmft.results.rows import get_field, trials_only
from raymmft.search_space import distributions_of

# Fewer than two finished trials per searched field cannot tell the fields' effects apart.
TRIALS_PER_FIELD = 2
MIN_TRIALS = 4


@dataclass
class Importance:
    """``values[objective][field]`` (summing to 1 per objective, largest first), or the reason
    there are none (``note``)."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    trials: int = 0
    note: str | None = None

    def lines(self) -> list[str]:
        if self.note:
            return [f"importance: {self.note}"]
        out = [f"importance of the searched fields (fANOVA over {self.trials} finished trials):"]
        for objective, by_field in self.values.items():
            ranked = ", ".join(f"{k} {v:.2f}" for k, v in by_field.items())
            out.append(f"  {objective}: {ranked}")
        return out


def search_importance(rows: list[dict], base_config: dict) -> Importance:
    """The importance of every searched field for every objective of the search."""
    import optuna

    space = get_field(base_config, "search.space")
    if space is None:  # never today's default space: the fields this search did not search
        return Importance(note="not computed: the search's config holds no search.space")
    distributions = {k: d.to_optuna() for k, d in distributions_of(space).items()}
    goals = Objectives.of_saved(base_config.get("search"))
    metrics, modes = goals.metrics, goals.modes
    finished = [
        r
        for r in trials_only(rows)
        if r.get("alpha", 1.0) == 1.0  # a trial once, not its interpolations
        and r["stop_reason"] in ("completed", "early_stopped")
        and all(isinstance(r.get(m), float) and math.isfinite(r[m]) for m in metrics)
        and all(f"param.{k}" in r for k in distributions)
    ]
    needed = max(MIN_TRIALS, TRIALS_PER_FIELD * len(distributions))
    if not distributions:
        return Importance(note="nothing was searched")
    if len(finished) < needed:
        return Importance(
            trials=len(finished),
            note=f"not computed: {len(finished)} finished trial(s), {needed} needed for "
            f"{len(distributions)} searched field(s) (at least {TRIALS_PER_FIELD} per field)",
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    study = optuna.create_study(directions=directions)
    for r in finished:
        params = {k: r[f"param.{k}"] for k in distributions}
        values = [r[m] for m in metrics]
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, values=values)
        )
    out = {}
    for i, metric in enumerate(metrics):
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        out[metric] = optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=lambda t, i=i: t.values[i]
        )
    return Importance(values=out, trials=len(finished))


@literal_text
def plot_importance(importance: Importance):
    """One bar chart per objective (the fields' shares), or the note when there are none."""
    from matplotlib.figure import Figure

    panels = max(len(importance.values), 1)
    fig = Figure(figsize=(4.2 * panels, 3.4), dpi=110)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if importance.note:
        axes[0].text(0.5, 0.5, importance.note, ha="center", va="center", wrap=True, fontsize=9)
        axes[0].set_axis_off()
    for ax, (objective, by_field) in zip(axes, importance.values.items()):
        names = list(by_field)[::-1]
        ax.barh(names, [by_field[n] for n in names], color="#1f77b4")
        ax.set_xlim(0, 1)
        ax.set_title(objective, fontsize=10)
        ax.set_xlabel("importance (fANOVA)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(
        f"which searched field mattered ({importance.trials} finished trials)", fontsize=10
    )
    fig.tight_layout()
    return fig
