"""The report's figures: matplotlib ``Figure`` objects (no pyplot: no global state, any backend).

Every text in them is drawn as it is written (``literal_text``): trial ids, set, metric and
experiment names come from the user and from an experiment's files, and matplotlib would read
``$...$`` in them as mathtext (or hand them to LaTeX under ``text.usetex``).
"""

from __future__ import annotations

import functools
import io
import math

from raymmft.results.experiment import Experiment
from raymmft.results.rows import FINISHED, to_float

# no mathtext, no LaTeX: a "$", "_", "^" or "\\" in a name is that character
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def literal_text(draw):
    """``draw`` (a function that makes or saves a figure) with ``LITERAL_TEXT`` in force. A
    matplotlib ``Text`` takes these settings when it is made, and tick labels are made when the
    figure is drawn: so both the plotting functions and ``png`` run under it."""

    @functools.wraps(draw)
    def literal(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(LITERAL_TEXT):
            return draw(*args, **kwargs)

    return literal


@literal_text
def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _short_params(row: dict, limit: int = 3) -> str:
    parts = []
    for k, v in row.items():
        if k.startswith("param.") and len(parts) < limit:
            name = k.rsplit(".", 1)[-1]
            parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return ", ".join(parts)


AXIS_LABELS = {
    "id_acc": "ID accuracy",
    "ood_auroc": "OoD AUROC (mean over OoD val sets)",
    "ood_fpr95": "OoD FPR95 (mean over OoD val sets)",
}


def plot_axes(objectives) -> tuple[str, str]:
    """The two metrics a Pareto plot shows: the first two objectives (one objective: it against
    the score)."""
    metrics = objectives.metrics
    return (metrics[0], metrics[1]) if len(metrics) > 1 else (metrics[0], "score")


@literal_text
def plot_pareto(rows: list[dict], chosen: dict | None, title: str, axes=("id_acc", "ood_auroc")):
    """Every candidate in the plane of ``axes`` (two metrics), the front highlighted (with its
    attainment boundary when both are maximised), the chosen candidate annotated; hollow markers
    for trials not finished (running, errored); the zero-shot starting model as a labelled black
    cross (a candidate too: red-edged when on the front). Returns a matplotlib ``Figure`` (no
    pyplot: no global state, any backend)."""
    from matplotlib.figure import Figure

    xm, ym = axes
    fig = Figure(figsize=(7, 5.5), dpi=110)
    ax = fig.subplots()
    base = next((r for r in rows if r.get("baseline")), None)
    rows = [r for r in rows if not r.get("baseline")]
    valid = [
        r for r in rows if not (math.isnan(to_float(r.get(xm))) or math.isnan(to_float(r.get(ym))))
    ]
    front = sorted((r for r in valid if r.get("pareto")), key=lambda r: r[xm])
    done = [r for r in valid if not r.get("pareto") and r["stop_reason"] in FINISHED]
    unfinished = [r for r in valid if not r.get("pareto") and r["stop_reason"] not in FINISHED]
    both_max = not any(m.endswith("fpr95") for m in axes)

    def xy(rs):
        return [r[xm] for r in rs], [r[ym] for r in rs]

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
    if front and both_max and len(front) > 1:
        # the attainment boundary: everything below and left of it is dominated
        ax.step(*xy(front), where="pre", c="#d62728", lw=1.2, ls="--", zorder=3)
    if front:
        ax.scatter(
            *xy(front),
            s=80,
            c="#d62728",
            edgecolors="black",
            label=f"Pareto front ({len(front)})",
            zorder=4,
        )
    curves = [r for r in valid if r.get("alpha", 1.0) < 1.0]
    if curves:  # WiSE-FT: each trial's candidates from the start (alpha 0) to itself (alpha 1)
        for trial in dict.fromkeys(r["trial"] for r in curves):
            path = sorted(
                (r for r in valid if r.get("trial") == trial), key=lambda r: r.get("alpha", 1.0)
            )
            path = ([base] if base is not None else []) + path
            ax.plot(*xy(path), c="#1f77b4", lw=0.8, alpha=0.5, zorder=1)
        ax.plot([], [], c="#1f77b4", lw=0.8, alpha=0.5, label="interpolation, start to trial")
    if chosen is not None:
        ax.scatter(*xy([chosen]), s=260, marker="*", c="#ffbf00", edgecolors="black", zorder=5)
    if base is not None:
        on_front = bool(base.get("pareto"))
        ax.scatter(
            *xy([base]),
            s=120,
            marker="X",
            c="black",
            edgecolors="#d62728" if on_front else "black",
            linewidths=1.5 if on_front else 0.5,
            label="zero-shot (starting model)" + (", on the front" if on_front else ""),
            zorder=6,
        )
        point = (base[xm], base[ym])
        ax.annotate("zero-shot", point, xytext=(8, -12), textcoords="offset points", fontsize=8)
    if not valid:
        ax.text(0.5, 0.5, "no trial has reported yet", ha="center", transform=ax.transAxes)
    if base is not None:
        valid = [*valid, base]  # a legend and margins that include it
    ax.set_xlabel(f"{AXIS_LABELS.get(xm, xm)} (last report)")
    ax.set_ylabel(f"{AXIS_LABELS.get(ym, ym)} (last report)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.12)
    if valid:
        ax.legend(loc="best", fontsize=8)
    if chosen is not None:
        # put the label on the side of the point that has room
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        right = chosen[xm] > (x0 + x1) / 2
        top = chosen[ym] > (y0 + y1) / 2
        ax.annotate(
            f"chosen: {chosen['trial_id']}\n{_short_params(chosen)}",
            (chosen[xm], chosen[ym]),
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


@literal_text
def plot_curves(exp: Experiment, rows: list[dict], top: int):
    """OoD AUROC and ID accuracy over epochs for the ``top`` trials by final ``score``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    base = next((r for r in rows if r.get("baseline")), None)
    # the trials themselves: an interpolated candidate has no curve of its own
    rows = [r for r in rows if not r.get("baseline") and r.get("alpha", 1.0) == 1.0]
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
                (r["epoch"], to_float(r.get(metric)))
                for r in records[row["trial_id"]].results
                if not math.isnan(to_float(r.get("epoch")))
            ]
            if points:
                xs, ys = zip(*points)
                mark = " *" if row.get("pareto") else ""
                ax.plot(xs, ys, "o-", label=f"{row['trial_id']}{mark} ({_short_params(row)})")
        if base is not None and not math.isnan(base[metric]):
            ax.axhline(base[metric], ls="--", lw=1.2, c="black", label="zero-shot (starting model)")
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


TIME_COLOURS = {
    "startup": "#9467bd",
    "train": "#2ca02c",
    "eval": "#1f77b4",
    "checkpoint": "#ff7f0e",
    "other": "#c7c7c7",
}


@literal_text
def plot_time(rows: list[dict]):
    """How each trial's time divides: start-up (to the first step), training steps, evaluations,
    checkpoints, and the rest of its wall time (Ray's scheduling, reporting), as stacked bars."""
    from matplotlib.figure import Figure

    from raymmft.results.rows import TIME_PARTS, sorted_rows

    timed = [r for r in sorted_rows(rows) if not math.isnan(to_float(r.get("time_train_s")))]
    fig = Figure(figsize=(9, 1.5 + 0.32 * max(len(timed), 3)), dpi=110)
    ax = fig.subplots()
    labels = [r["trial_id"] for r in timed]
    left = [0.0] * len(timed)
    for part in (*TIME_PARTS, "other"):
        if part == "other":
            widths = [
                max(0.0, to_float(r["time_total_s"]) - sum(r[f"time_{p}_s"] for p in TIME_PARTS))
                for r in timed
            ]
        else:
            widths = [
                0.0 if math.isnan(r[f"time_{part}_s"]) else r[f"time_{part}_s"] for r in timed
            ]
        ax.barh(labels, widths, left=left, color=TIME_COLOURS[part], label=part)
        left = [a + b for a, b in zip(left, widths)]
    if timed:
        share = sum(r["time_train_s"] for r in timed) / max(sum(left), 1e-9)
        ax.set_title(
            f"where the trials' time went (training steps: {100 * share:.0f} %)", fontsize=10
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncols=5)
        ax.invert_yaxis()
    else:
        ax.text(0.5, 0.5, "no trial has reported its time yet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("seconds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
