"""OoD detection and classification metrics (docs/method.md, "Metrics").

ID is the positive class and scores are "higher = more ID"; a sample is predicted ID when its score is
``>= threshold``. All curves are taken at the distinct score values, so tied scores move together
(a tie between an ID and an OoD sample counts one half towards AUROC), as in scikit-learn.
Inputs may be tensors, arrays or sequences; results are Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _as_scores(name: str, values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    nan = int(np.isnan(arr).sum())
    if nan:
        raise ValueError(f"{name} contains {nan} NaN value(s) out of {arr.size}")
    return arr


def _roc_counts(id_scores: ArrayLike, ood_scores: ArrayLike) -> tuple[np.ndarray, ...]:
    """Cumulative (true positives, false positives) at each distinct threshold, high to low.

    Entry ``i`` counts the samples with score ``>= thresholds[i]``; the first entry is the empty
    prediction (threshold above every score), so the curves start at (0, 0).
    """
    pos = _as_scores("id_scores", id_scores)
    neg = _as_scores("ood_scores", ood_scores)
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    # last index of each run of equal scores
    ends = np.flatnonzero(np.diff(scores) != 0)
    ends = np.append(ends, scores.size - 1)
    tp = np.concatenate([[0.0], np.cumsum(is_pos)[ends]])
    fp = np.concatenate([[0.0], (ends + 1) - tp[1:]])
    return tp, fp, float(pos.size), float(neg.size)


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal over distinct thresholds).

    Equals ``P(s_id > s_ood) + P(s_id = s_ood) / 2`` over all (ID, OoD) pairs.
    """
    tp, fp, n_pos, n_neg = _roc_counts(id_scores, ood_scores)
    tpr, fpr = tp / n_pos, fp / n_neg
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> float:
    """FPR at the first ROC point (threshold scanned from high to low) whose TPR is ``>= tpr``.

    That is the highest threshold reaching the target TPR, hence the smallest FPR that achieves it
    (OpenOOD's ``fpr[argmax(tpr >= 0.95)]`` on scikit-learn's full ROC curve). Lower is better.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    tp, fp, n_pos, n_neg = _roc_counts(id_scores, ood_scores)
    index = int(np.argmax(tp / n_pos >= tpr))  # the last point has TPR 1, so one exists
    return float(fp[index] / n_neg)


def _average_precision(tp: np.ndarray, fp: np.ndarray, n_pos: float) -> float:
    """``AP = sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (scikit-learn's definition)."""
    tp, fp = tp[1:], fp[1:]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def aupr_in(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Area under the precision-recall curve with ID as positive (average precision)."""
    tp, fp, n_pos, _ = _roc_counts(id_scores, ood_scores)
    return _average_precision(tp, fp, n_pos)


def aupr_out(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Average precision with OoD as positive, ranked by the negated score."""
    id_arr = _as_scores("id_scores", id_scores)
    ood_arr = _as_scores("ood_scores", ood_scores)
    tp, fp, n_pos, _ = _roc_counts(-ood_arr, -id_arr)
    return _average_precision(tp, fp, n_pos)


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike) -> dict[str, float]:
    """``{"auroc", "fpr95", "aupr_in", "aupr_out"}`` for one OoD set."""
    id_arr = _as_scores("id_scores", id_scores)
    ood_arr = _as_scores("ood_scores", ood_scores)
    return {
        "auroc": auroc(id_arr, ood_arr),
        "fpr95": fpr_at_tpr(id_arr, ood_arr, 0.95),
        "aupr_in": aupr_in(id_arr, ood_arr),
        "aupr_out": aupr_out(id_arr, ood_arr),
    }


def accuracy(logits: Tensor | np.ndarray, labels: Tensor | np.ndarray | Sequence[int]) -> float:
    """Top-1 accuracy: the fraction of rows whose ``argmax`` equals the label (first max on ties)."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels).reshape(-1)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("logits is empty: need at least one sample")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    pred = logits.argmax(dim=-1).to(labels.device)
    return float((pred == labels.long()).double().mean())
