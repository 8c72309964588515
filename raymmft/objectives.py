"""What a trial reports, what a search optimises, and the score: the one contract.

Every report of a trial (``raymmft.loop``) carries the names ``reported_metrics`` lists: the
training figures (``TRAINING_METRICS``), the time budget, ``id_acc``, ``modality_gap``, the OoD
metrics of every score and OoD validation set (``ood_metric_name``) and ``score``.

A search optimises ``search.objectives``: a list of ``(metric, mode, weight)``. Optuna is told the
metrics and modes; the Pareto front, the choice, ``best.yaml``, the printed table, the HTML page,
``trials.parquet`` and TensorBoard's objectives view all read them from ``Objectives``. The scalar
``score`` (what ASHA stops on by default, and what picks one candidate off the front) is

    score = sum_i weight_i * sign_i * metric_i,   sign_i = +1 for max, -1 for min

so the default objectives ``[{metric: id_acc, weight: 0.5}, {metric: ood_auroc}]`` give
``score = ood_auroc + 0.5 * id_acc``. Pure Python: the results layer reads it without torch or Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# what an evaluation measures per OoD set and score (docs/method.md, "Metrics")
OOD_METRICS: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out")
# what every report of a trial carries besides the evaluation
TRAINING_METRICS: tuple[str, ...] = (
    "epoch",
    "step",
    "world_size",
    "train_loss",
    "train_contrastive",
    "train_regularizer",
    "lr",
    "logit_scale",
    "images_per_s",
    "train_skipped",
)
# where a trial's time went, in every report: time/<part>_s
TIME_PARTS: tuple[str, ...] = ("startup", "train", "eval", "checkpoint")
TIME_METRICS: tuple[str, ...] = tuple(f"time/{part}_s" for part in TIME_PARTS)
EVAL_METRICS: tuple[str, ...] = ("id_acc", "modality_gap")
SCORE = "score"
# lower is better for these (best_<metric> columns, the sign of a delta)
LOWER_IS_BETTER = ("fpr95", "train_loss", "modality_gap")


def ood_metric_name(metric: str, score: str | None = None, ood_set: str | None = None) -> str:
    """``ood_<metric>`` (primary score, mean over the OoD sets), ``ood_<metric>/<set>``,
    ``<score>/ood_<metric>`` and ``<score>/ood_<metric>/<set>``."""
    name = f"ood_{metric}"
    if score is not None:
        name = f"{score}/{name}"
    if ood_set is not None:
        name = f"{name}/{ood_set}"
    return name


def evaluation_metrics(scores: Iterable[str], ood_sets: Iterable[str]) -> list[str]:
    """The names an evaluation reports (``EvaluationResult.flat_metrics``), in its order."""
    scores, ood_sets = list(scores), list(ood_sets)
    out = list(EVAL_METRICS)
    for metric in OOD_METRICS:
        out += [ood_metric_name(metric), *(ood_metric_name(metric, ood_set=s) for s in ood_sets)]
    for score in scores:
        for metric in OOD_METRICS:
            out.append(ood_metric_name(metric, score))
            out += [ood_metric_name(metric, score, s) for s in ood_sets]
    return out


def reported_metrics(
    scores: Iterable[str], ood_sets: Iterable[str], alphas: Iterable[float] = ()
) -> set[str]:
    """Every name a report of a trial carries (the first report also ``time/startup_s``); with
    interpolation (``eval.interpolation``), every evaluation metric and the score of each
    ``alpha`` as ``interp/<alpha>/<name>`` and ``time/interp_eval_s``."""
    own = [*evaluation_metrics(scores, ood_sets), SCORE]
    alphas = list(alphas)
    out = {*TRAINING_METRICS, *TIME_METRICS, *own}
    for alpha in alphas:
        out |= {interp_name(name, alpha) for name in own}
    if alphas:
        out.add(INTERP_TIME)
    return out


INTERP_TIME = "time/interp_eval_s"


def interp_name(metric: str, alpha: float) -> str:
    """``interp/<alpha>/<metric>``: a metric of the weights interpolated at ``alpha`` toward the
    starting model (``raymmft.interpolation``)."""
    return f"interp/{alpha:g}/{metric}"


def mode_of(metric: str) -> str:
    """``"min"`` for a metric where lower is better (FPR95, losses), else ``"max"``."""
    return "min" if any(word in metric for word in LOWER_IS_BETTER) else "max"


def to_float(v: Any) -> float:
    """A finite number as a float; anything else (missing, text, inf) as NaN."""
    if isinstance(v, bool):
        return math.nan
    try:
        out = float(v)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


@dataclass(frozen=True)
class Goal:
    """One objective: a reported metric, its direction, and its weight in ``score``."""

    metric: str
    mode: str = "max"
    weight: float = 1.0

    @property
    def sign(self) -> int:
        return 1 if self.mode == "max" else -1


DEFAULT_GOALS = (Goal("id_acc", "max", 0.5), Goal("ood_auroc", "max", 1.0))


class Objectives:
    """The objectives of a search, and everything derived from them: the score, the Pareto front
    and the choice of one candidate."""

    def __init__(self, goals: Sequence[Goal]):
        if not goals:
            raise ValueError("at least one objective is needed")
        self.goals = tuple(goals)

    @classmethod
    def of(cls, objectives: Sequence[Any]) -> Objectives:
        """From the config's ``search.objectives`` (models or their JSON dicts)."""
        goals = []
        for o in objectives:
            d = o if isinstance(o, Mapping) else o.model_dump()
            goals.append(Goal(d["metric"], d.get("mode", "max"), float(d.get("weight", 1.0))))
        return cls(goals)

    @classmethod
    def of_saved(cls, search: Mapping | None) -> Objectives:
        """From a saved config's ``search`` section (``raymmft_config.json``); one saved before
        objectives had weights (``score_weight``: w in ``ood_auroc + w * id_acc``) reads as it
        meant then."""
        search = search or {}
        saved = search.get("objectives")
        if not saved:
            goals = list(DEFAULT_GOALS)
        else:
            goals = list(cls.of(saved).goals)
        if "score_weight" in search and all("weight" not in o for o in saved or []):
            w = float(search["score_weight"])
            goals = [
                Goal(g.metric, g.mode, w if g.metric == "id_acc" else 1.0)
                if g.metric in ("id_acc", "ood_auroc")
                else g
                for g in goals
            ]
        return cls(goals)

    @property
    def metrics(self) -> list[str]:
        return [g.metric for g in self.goals]

    @property
    def modes(self) -> list[str]:
        return [g.mode for g in self.goals]

    def score(self, metrics: Mapping[str, Any]) -> float:
        """``sum_i weight_i * sign_i * metric_i`` (NaN when an objective is missing)."""
        return math.fsum(g.weight * g.sign * to_float(metrics.get(g.metric)) for g in self.goals)

    def formula(self) -> str:
        """The score as the page and the legend write it, e.g. ``ood_auroc + 0.5 * id_acc``."""
        terms = []
        for g in sorted(self.goals, key=lambda g: -abs(g.weight)):
            coef = "" if g.weight == 1 else f"{g.weight:g} * "
            terms.append(("- " if g.sign < 0 else "+ ") + coef + g.metric)
        text = " ".join(terms)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]

    def describe(self) -> str:
        """``id_acc (max), ood_auroc (max)``."""
        return ", ".join(f"{g.metric} ({g.mode})" for g in self.goals)

    def point(self, row: Mapping[str, Any]) -> list[float]:
        """The row's objectives, oriented so that larger is better (NaN where missing)."""
        return [g.sign * to_float(row.get(g.metric)) for g in self.goals]

    def front(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Indices of the rows on the Pareto front of the objectives."""
        return pareto_front([self.point(r) for r in rows])

    def choose(self, rows: Sequence[Mapping[str, Any]]) -> int | None:
        """The row to recommend: on the front, with the highest score (the first of equals);
        ``None`` when no row has every objective."""
        front = self.front(rows)
        if not front:
            return None
        return max(front, key=lambda i: (self.score(rows[i]), -i))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, every coordinate maximised.

    A point is dominated when another is >= in every coordinate and > in at least one; equal
    points do not dominate each other, so ties stay on the front together. A point with a NaN is
    never on it.
    """
    valid = [i for i, p in enumerate(points) if not any(math.isnan(v) for v in p)]
    front = []
    for i in valid:
        p = points[i]
        dominated = any(
            all(q_k >= p_k for q_k, p_k in zip(points[j], p))
            and any(q_k > p_k for q_k, p_k in zip(points[j], p))
            for j in valid
            if j != i
        )
        if not dominated:
            front.append(i)
    return front
