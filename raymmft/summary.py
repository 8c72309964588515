"""What a finished (or interrupted) search amounts to: one row per trial, the Pareto front of
(ID accuracy, OoD AUROC), the best configuration, and its evaluation on the OoD *test* sets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from raymmft.config import Config, flatten_fields
from raymmft.pareto import format_table, pareto_front

OBJECTIVES = ("id_acc", "ood_auroc")


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def trial_rows(result_grid, max_reports: int | None = None) -> list[dict]:
    """One dict per trial: id, status, searched params, final and best metrics, checkpoint."""
    rows = []
    for result in result_grid:
        m = result.metrics or {}
        df = result.metrics_dataframe
        reports = int(m.get("training_iteration", 0) or 0)
        row = {
            "trial_id": m.get("trial_id") or Path(result.path).name,
            "status": "ERROR" if result.error else "TERMINATED",
            **{f"param.{k}": v for k, v in flatten_fields(result.config).items()},
            "epochs": m.get("epoch"),
            "reports": reports,
            "id_acc": _float(m.get("id_acc")),
            "ood_auroc": _float(m.get("ood_auroc")),
            "ood_fpr95": _float(m.get("ood_fpr95")),
            "modality_gap": _float(m.get("modality_gap")),
            "score": _float(m.get("score")),
            "checkpoint_path": m.get("checkpoint_path"),
            "path": result.path,
            "error": str(result.error).splitlines()[0][:300] if result.error else None,
        }
        for metric in ("id_acc", "ood_auroc", "score"):
            if df is not None and metric in df:
                row[f"best_{metric}"] = _float(df[metric].max())
        if result.error:
            row["stop_reason"] = "error"
        elif max_reports is not None and reports < max_reports:
            row["stop_reason"] = "early_stopped"
        else:
            row["stop_reason"] = "completed"
        rows.append(row)
    return rows


def mark_front(rows: list[dict]) -> list[int]:
    front = pareto_front([[r[k] for k in OBJECTIVES] for r in rows])
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    return front


def best_row(rows: list[dict], score_weight: float) -> dict | None:
    """The front's trial with the highest ``ood_auroc + w * id_acc``."""
    front = [r for r in rows if r.get("pareto")]
    if not front:
        return None
    return max(front, key=lambda r: r["ood_auroc"] + score_weight * r["id_acc"])


def format_trials(rows: list[dict]) -> str:
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    order = sorted(range(len(rows)), key=lambda i: -_nan_low(rows[i]["score"]))
    ordered = [rows[i] for i in order]
    marks = {i: "*" for i, r in enumerate(ordered) if r.get("pareto")}
    cols = ["trial_id", "status", "stop_reason", *params, "epochs", *OBJECTIVES, "ood_fpr95"]
    cols += ["modality_gap"]
    return format_table(ordered, cols, marks=marks) + "\n(* = Pareto front of id_acc, ood_auroc)"


def _nan_low(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def load_trial_state(checkpoint_path: str) -> dict:
    """rank 0's checkpoint (``state.pt``) from a local path or a storage URI."""
    import ray.train

    from raymmft.worker import load_checkpoint

    return load_checkpoint(ray.train.Checkpoint(checkpoint_path))


def evaluate_checkpoint(
    cfg: Config, checkpoint_path: str, *, on: str = "test", cache_dir: str | None = None
):
    """Evaluate a trial's final weights on its OoD test (or validation) sets.

    NegLabel's negatives are mined with the starting model, as during training (the same cache
    entry), and re-encoded with the fine-tuned weights.
    """
    from raymmft.loop import final_evaluator, model_of

    state = load_trial_state(checkpoint_path)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.resources.use_gpu else "cpu")
    bundle = model_of(cfg, device)
    ood_specs = cfg.data.ood_test if on == "test" else cfg.data.ood_val
    evaluator = final_evaluator(cfg, bundle, device, ood_specs=ood_specs, cache_dir=cache_dir)
    bundle.model.load_state_dict(state["model"])
    return evaluator.evaluate(bundle.model)


# ---------------------------------------------------------------- printing


def print_search_summary(cfg: Config, grid) -> list[dict]:
    """Trial table, Pareto front, best configuration, and its OoD *test* evaluation."""
    from raymmft.evaluate import format_table as format_evaluation
    from raymmft.search import evaluate_remote, flatten_params, num_reports

    rows = trial_rows(grid, num_reports(cfg))
    mark_front(rows)
    print()
    print(format_trials(rows))
    best = best_row(rows, cfg.search.score_weight)
    if best is None:
        print("\nno trial reported id_acc and ood_auroc; nothing to choose")
        return rows
    params = {k.removeprefix("param."): v for k, v in best.items() if k.startswith("param.")}
    print(
        f"\nbest trial {best['trial_id']} (Pareto front, highest ood_auroc + "
        f"{cfg.search.score_weight:g} * id_acc):"
    )
    for k, v in sorted(params.items()):
        print(f"  {k} = {v}")
    print(f"  checkpoint: {best['checkpoint_path']}")
    if cfg.data.ood_test and best["checkpoint_path"]:
        from raymmft.config import apply_trial_params

        trial_cfg = apply_trial_params(cfg, flatten_params(params))
        result = evaluate_remote(trial_cfg, best["checkpoint_path"], on="test")
        best["test"] = result.to_dict()
        print("\nbest trial on the OoD *test* sets (never seen by the search):")
        print(format_evaluation(result))
    return rows


def print_train_summary(cfg: Config, result) -> None:
    from raymmft.evaluate import format_table as format_evaluation
    from raymmft.search import evaluate_remote

    m = result.metrics or {}
    keys = [
        "epoch",
        "id_acc",
        "ood_auroc",
        "ood_fpr95",
        "modality_gap",
        "logit_scale",
        "train_loss",
    ]
    print()
    print(format_table([{k: m.get(k) for k in keys}], keys))
    if result.checkpoint is None:
        return
    print(f"checkpoint: {result.checkpoint.path}")
    if cfg.data.ood_test:
        evaluation = evaluate_remote(cfg, result.checkpoint.path, on="test")
        print("\nOoD *test* sets:")
        print(format_evaluation(evaluation))
