"""Pareto front of trials on (ID accuracy, OoD AUROC), and the trial table printed after a search."""

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
