"""The Pareto front of trials on their objectives (ID accuracy, OoD AUROC)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, all objectives maximised.

    A point is dominated when another is >= in every objective and > in at least one; equal points
    do not dominate each other, so ties stay on the front together. NaN points are never on it.
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
