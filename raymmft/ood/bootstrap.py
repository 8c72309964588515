"""Percentile bootstrap intervals of an evaluation's metrics (docs/method.md, "Confidence intervals").

The ID set and every OoD set are resampled apart, with replacement, each at its own size. Resample
``b`` of a set is drawn by ``numpy.random.default_rng([seed, crc32(stream), b])`` (``resample_indices``),
so it is the same for every score, every OoD set (the ID resample) and every model evaluated on the
same images: the mean over OoD sets and the paired difference of two models are taken on one
resample of all the images, and adding an OoD set or resampling in other chunks changes nothing.

Each metric of a resample is the one ``raymmft.ood.metrics`` defines, computed without a loop over
the resamples: the pooled scores of an (ID, OoD) pair are sorted once, a resample is a row of
draw counts per image, and cumulative sums of the counts at the ends of the runs of equal scores
give every resample's ROC counts at once (a run no image of the resample falls in repeats the
previous point, which adds nothing to any of the metrics). The interval is the 2.5 and 97.5
percentiles (``numpy.percentile``, linear) of the resampled values.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from raymmft.ood.metrics import _as_scores

if TYPE_CHECKING:
    from raymmft.evaluation import EvaluationResult

METRICS = ("auroc", "fpr95", "aupr_in", "aupr_out")  # raymmft.ood.metrics.ood_metrics' keys
DEFAULT_RESAMPLES = 1000
MIN_RESAMPLES = 100  # fewer leave under 3 resamples beyond each 2.5 % percentile
PERCENTILES = (2.5, 97.5)
ID_STREAM = "id"
# resample rows per block: bounds the [rows, images] count matrices held at once
BLOCK_ELEMENTS = 1 << 21

Interval = tuple[float, float]


def check_num_resamples(num_resamples: int) -> int:
    """The number of resamples: an integer of at least ``MIN_RESAMPLES``."""
    if (
        isinstance(num_resamples, bool)
        or not isinstance(num_resamples, (int, np.integer))
        or num_resamples < MIN_RESAMPLES
    ):
        raise ValueError(f"need at least {MIN_RESAMPLES} resamples, got {num_resamples!r}")
    return int(num_resamples)


def ood_stream(name: str) -> str:
    """The resample stream of the OoD set ``name`` (the ID set's is ``ID_STREAM``)."""
    return f"ood:{name}"


def resample_indices(n: int, rows: range, *, seed: int, stream: str) -> np.ndarray:
    """The image indices ``[len(rows), n]`` of resamples ``rows`` of a set of ``n`` images: row ``b``
    is ``n`` uniform draws with replacement by ``default_rng([seed, crc32(stream), b])``."""
    key = zlib.crc32(stream.encode())
    out = np.empty((len(rows), n), dtype=np.int64)
    for i, b in enumerate(rows):
        out[i] = np.random.default_rng([seed, key, b]).integers(0, n, size=n)
    return out


def draw_counts(indices: np.ndarray) -> np.ndarray:
    """How often each image is drawn in each resample: ``[B, n]`` counts of ``[B, n]`` indices."""
    rows, n = indices.shape
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


class RankedScores:
    """The pooled scores of one ID set and one OoD set, sorted once (highest first), cut into runs
    of equal scores: the thresholds of ``raymmft.ood.metrics``.

    ``id_order`` lists the ID images from the highest score down (as they come in the pooled
    order, ties in input order) and ``id_seen[k]`` how many of them lie above threshold ``k``
    (``k = 0`` is the empty prediction, above every score); ``ood_order`` and ``ood_seen`` the
    same for the OoD images.
    """

    def __init__(self, id_scores, ood_scores):
        pos = _as_scores("id_scores", id_scores)
        neg = _as_scores("ood_scores", ood_scores)
        pooled = np.concatenate([pos, neg])
        order = np.argsort(-pooled, kind="stable")
        ordered = pooled[order]
        is_id = order < pos.size
        ends = np.append(np.flatnonzero(np.diff(ordered) != 0), ordered.size - 1)
        self.id_order, self.ood_order = order[is_id], order[~is_id] - pos.size
        self.id_seen = np.concatenate([[0], np.cumsum(is_id)[ends]])
        self.ood_seen = np.concatenate([[0], ends + 1]) - self.id_seen
        self.num_id, self.num_ood = pos.size, neg.size

    def roc_counts(self, id_counts: np.ndarray, ood_counts: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per resample (rows of draw counts ``[B, N_id]``, ``[B, N_ood]``) the cumulative true
        and false positives ``[B, runs + 1]`` at each threshold, high to low, from (0, 0)."""
        return (
            _cumulative(id_counts, self.id_order)[:, self.id_seen],
            _cumulative(ood_counts, self.ood_order)[:, self.ood_seen],
        )

    def metrics(self, id_counts: np.ndarray, ood_counts: np.ndarray) -> dict[str, np.ndarray]:
        """AUROC, FPR95, AUPR-in and AUPR-out ``[B]`` of each resample."""
        tp, fp = self.roc_counts(id_counts, ood_counts)
        return metrics_from_counts(tp, fp, float(self.num_id), float(self.num_ood))


def _cumulative(counts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``[B, n + 1]``: 0, then the running sums of each row of ``counts`` taken in ``order``."""
    out = np.zeros((counts.shape[0], order.size + 1))
    np.cumsum(counts[:, order], axis=1, out=out[:, 1:])
    return out


def _precision_sum(gain: np.ndarray, hits: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``sum_k gain_k * hits_k / predicted_k`` per row; a point with nothing predicted (a run the
    resample left empty) has no gain either and adds nothing."""
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    return np.einsum("ij,ij->i", gain, precision)


def metrics_from_counts(
    tp: np.ndarray, fp: np.ndarray, n_id: float, n_ood: float
) -> dict[str, np.ndarray]:
    """The metrics of ``raymmft.ood.metrics`` (ID positive) from ROC counts ``[B, K]``, one row
    per resample, that start at (0, 0) and end at (``n_id``, ``n_ood``):

    - AUROC: the trapezoids ``sum_k (fp_k - fp_{k-1}) (tp_k + tp_{k-1}) / (2 n_id n_ood)``;
    - FPR95: ``fp_k / n_ood`` at the first ``k`` with ``tp_k / n_id >= 0.95``;
    - AUPR-in: ``sum_k (tp_k - tp_{k-1}) / n_id * tp_k / (tp_k + fp_k)``;
    - AUPR-out: the same with OoD positive, the runs scanned from the lowest score up: a run
      ``k`` adds ``(fp_k - fp_{k-1}) / n_ood * (n_ood - fp_{k-1}) / (n - tp_{k-1} - fp_{k-1})``.
    """
    d_tp, d_fp = np.diff(tp, axis=1), np.diff(fp, axis=1)
    auroc = np.einsum("ij,ij->i", d_fp, tp[:, 1:] + tp[:, :-1]) / (2 * n_id * n_ood)
    first = np.argmax(tp / n_id >= 0.95, axis=1)  # the last point has TPR 1, so one exists
    fpr95 = fp[np.arange(fp.shape[0]), first] / n_ood
    hits, predicted = tp[:, 1:], tp[:, 1:] + fp[:, 1:]
    aupr_in = _precision_sum(d_tp, hits, predicted) / n_id
    ood_left = n_ood - fp[:, :-1]
    aupr_out = _precision_sum(d_fp, ood_left, ood_left + (n_id - tp[:, :-1])) / n_ood
    return {"auroc": auroc, "fpr95": fpr95, "aupr_in": aupr_in, "aupr_out": aupr_out}


@dataclass
class Resampled:
    """Every metric on each of ``num_resamples`` resamples: ``id_accuracy`` ``[B]``,
    ``per_set[set][score][metric]`` ``[B]`` and ``mean[score][metric]`` (over the OoD sets) ``[B]``."""

    num_resamples: int
    seed: int
    id_accuracy: np.ndarray
    per_set: dict[str, dict[str, dict[str, np.ndarray]]]
    mean: dict[str, dict[str, np.ndarray]]


def resample_metrics(
    id_scores: Mapping[str, np.ndarray],
    ood_scores: Mapping[str, Mapping[str, np.ndarray]],
    id_correct: np.ndarray,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Resampled:
    """The metrics of ``num_resamples`` bootstrap resamples: ``id_scores[score]`` ``[N_id]``,
    ``ood_scores[set][score]`` ``[N_ood]`` and ``id_correct`` ``[N_id]`` (whether each ID image is
    classified right). The ID set and each OoD set are resampled apart (``resample_indices``)."""
    num_resamples = check_num_resamples(num_resamples)
    scores = list(id_scores)
    correct = np.asarray(id_correct, dtype=bool).reshape(-1)
    num_id = correct.size
    if not scores or not ood_scores:
        raise ValueError("need at least one score and one OoD set to resample")
    for score in scores:
        if np.asarray(id_scores[score]).size != num_id:
            raise ValueError(
                f"score '{score}' has {np.asarray(id_scores[score]).size} ID scores for "
                f"{num_id} ID images"
            )
    for name, by_score in ood_scores.items():
        missing = [s for s in scores if s not in by_score]
        if missing:
            raise ValueError(f"OoD set '{name}' has no '{missing[0]}' scores")
    ranked = {
        name: {s: RankedScores(id_scores[s], by_score[s]) for s in scores}
        for name, by_score in ood_scores.items()
    }
    sizes = {name: next(iter(r.values())).num_ood for name, r in ranked.items()}
    per_set = {
        name: {s: {m: np.empty(num_resamples) for m in METRICS} for s in scores} for name in ranked
    }
    accuracy = np.empty(num_resamples)
    rows = max(1, BLOCK_ELEMENTS // (num_id + max(sizes.values())))
    for start in range(0, num_resamples, rows):
        block = range(start, min(start + rows, num_resamples))
        id_counts = draw_counts(resample_indices(num_id, block, seed=seed, stream=ID_STREAM))
        accuracy[start : block.stop] = id_counts @ correct / num_id
        for name, by_score in ranked.items():
            ood_idx = resample_indices(sizes[name], block, seed=seed, stream=ood_stream(name))
            ood_counts = draw_counts(ood_idx)
            for score, r in by_score.items():
                for metric, values in r.metrics(id_counts, ood_counts).items():
                    per_set[name][score][metric][start : block.stop] = values
    mean = {
        s: {m: np.mean([per_set[name][s][m] for name in per_set], axis=0) for m in METRICS}
        for s in scores
    }
    return Resampled(num_resamples, seed, accuracy, per_set, mean)


def percentile_interval(values: np.ndarray) -> Interval:
    """The 95 % percentile interval: the 2.5 and 97.5 percentiles of the resampled values."""
    low, high = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A value on all the images and its 95 % interval over the resamples."""

    value: float
    ci95: Interval


@dataclass
class PairedDifference:
    """``metric(model) - metric(reference)`` on the same images, each resample's difference taken
    on the same resample of both: ``id_accuracy``, ``per_set[set][score][metric]`` and
    ``mean[score][metric]``, for the scores both evaluations computed."""

    reference: str
    id_accuracy: Estimate
    per_set: dict[str, dict[str, dict[str, Estimate]]]
    mean: dict[str, dict[str, Estimate]]


@dataclass
class BootstrapIntervals:
    """95 % percentile intervals of an evaluation's metrics (the shapes of ``EvaluationResult``'s
    ``id_accuracy``, ``per_set`` and ``mean``), and the paired difference from a reference."""

    num_resamples: int
    seed: int
    id_accuracy: Interval
    per_set: dict[str, dict[str, dict[str, Interval]]]
    mean: dict[str, dict[str, Interval]]
    delta: PairedDifference | None = None


def _resampled_of(result: EvaluationResult, scores, num_resamples: int, seed: int) -> Resampled:
    correct = np.asarray(result.id_correct, dtype=bool).reshape(-1)
    if correct.size != result.num_id:
        raise ValueError(
            f"the evaluation holds {correct.size} ID correctness values for {result.num_id} ID "
            "images (id_correct): evaluate it with evaluate_embeddings or an Evaluator"
        )
    return resample_metrics(
        {s: result.id_scores[s] for s in scores},
        {name: {s: by[s] for s in scores} for name, by in result.ood_scores.items()},
        correct,
        num_resamples=num_resamples,
        seed=seed,
    )


def _check_same_images(result: EvaluationResult, reference: EvaluationResult) -> list[str]:
    if reference.num_id != result.num_id:
        raise ValueError(
            f"the reference has {reference.num_id} ID images, the model {result.num_id}: a paired "
            "difference needs the same images in the same order"
        )
    if reference.num_ood != result.num_ood:
        raise ValueError(
            f"the reference's OoD sets {reference.num_ood} are not the model's {result.num_ood}: "
            "a paired difference needs the same images in the same order"
        )
    common = [s for s in result.scores if s in reference.scores]
    if not common:
        raise ValueError(
            f"the reference computed none of the model's scores ({', '.join(result.scores)})"
        )
    return common


def _differences(
    model: Resampled, ref: Resampled, result, reference, scores: list[str], name: str
) -> PairedDifference:
    """The paired differences ``model - ref`` of ``scores``, resample by resample."""

    def estimate(value: float, values: np.ndarray) -> Estimate:
        return Estimate(value, percentile_interval(values))

    per_set = {
        set_name: {
            s: {
                m: estimate(
                    result.per_set[set_name][s][m] - reference.per_set[set_name][s][m],
                    model.per_set[set_name][s][m] - ref.per_set[set_name][s][m],
                )
                for m in METRICS
            }
            for s in scores
        }
        for set_name in model.per_set
    }
    mean = {
        s: {
            m: estimate(result.mean[s][m] - reference.mean[s][m], model.mean[s][m] - ref.mean[s][m])
            for m in METRICS
        }
        for s in scores
    }
    accuracy = estimate(
        result.id_accuracy - reference.id_accuracy, model.id_accuracy - ref.id_accuracy
    )
    return PairedDifference(name, accuracy, per_set, mean)


def bootstrap_intervals(
    result: EvaluationResult,
    *,
    num_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    reference: EvaluationResult | None = None,
    reference_name: str = "reference",
) -> BootstrapIntervals:
    """95 % percentile bootstrap intervals of every metric of ``result`` (ID accuracy; AUROC,
    FPR95, AUPR-in, AUPR-out of every score and OoD set, and their mean over the sets), from its
    raw scores and ID correctness. With ``reference`` (another model's evaluation of the same
    images in the same order), also the paired difference ``result - reference`` per metric and
    its interval, both models' metrics taken on the same resamples."""
    common = _check_same_images(result, reference) if reference is not None else []
    model = _resampled_of(result, result.scores, num_resamples, seed)
    delta = None
    if reference is not None:
        ref = _resampled_of(reference, common, num_resamples, seed)
        delta = _differences(model, ref, result, reference, common, reference_name)
    return BootstrapIntervals(
        num_resamples=model.num_resamples,
        seed=seed,
        id_accuracy=percentile_interval(model.id_accuracy),
        per_set={
            name: {s: {m: percentile_interval(v) for m, v in by.items()} for s, by in d.items()}
            for name, d in model.per_set.items()
        },
        mean={
            s: {m: percentile_interval(v) for m, v in by.items()} for s, by in model.mean.items()
        },
        delta=delta,
    )
