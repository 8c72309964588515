"""Zero-shot vs FLYP (lambda = 0) vs CMA from the pretrained world model, on the same data, seed and
starting model (``raymmft compare-world``): every run goes through ``run_training`` (one in-process
worker, no Ray) and every evaluation through the one evaluator, on the OoD test sets, with the
negatives the starting model mined."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from raymmft.world import WORLD_ARCH, WORLD_TAG

# Twelve concepts the shipped model confuses most (squares with circles, stars with triangles, in
# the colours it knows least): zero-shot ID accuracy ~0.74 (default selection: ~0.97), so
# fine-tuning has room to improve it and the search a real accuracy/AUROC trade-off.
FINE_GRAINED_ID_CONCEPTS: tuple[str, ...] = tuple(
    f"{colour} {shape}"
    for colour in ("pink", "blue", "black")
    for shape in ("square", "circle", "star", "triangle")
)
# The comparison's NegLabel corpus: the world's concept names. "world+wordnet:2000" (concept names
# plus WordNet words the model has never seen) scores better zero-shot but worse after CMA; see
# docs/world.md.
WORLD_NEGLABEL_CORPUS = "world"


def world_config(overrides: dict | None = None, *, id_concepts: Sequence[str] | None = None):
    """The comparison's configuration (the proposed demo's): fine-tune ``raymmft-world`` on 12 ID
    concepts (``id_concepts``; default: the world's default ID selection), validate on held-out
    near/far OoD sets (split ``val``), report on the test sets (split ``test``)."""
    from raymmft.config import validate_config
    from raymmft.search_space import set_path

    classes = "id" if id_concepts is None else list(id_concepts)

    def shapes_set(split: str, selection, per_class: int, name: str) -> dict:
        spec = {"uri": "builtin:shapes", "split": split, "classes": selection}
        return {**spec, "per_class": per_class, "name": name}

    raw = {
        "model": {
            "arch": WORLD_ARCH,
            "pretrained": WORLD_TAG,
            "temperature": 0.01,
            "learn_temperature": False,
        },
        "data": {
            "id_train": shapes_set("train", classes, 60, "id-train"),
            "id_val": shapes_set("val", classes, 25, "id-val"),
            "ood_val": [
                shapes_set("val", "near_ood", 3, "near-val"),
                shapes_set("val", "far_ood", 50, "far-val"),
            ],
            "ood_test": [
                shapes_set("test", "near_ood", 5, "near-test"),
                shapes_set("test", "far_ood", 50, "far-test"),
            ],
        },
        "train": {
            "epochs": 6,
            "batch_size": 60,
            "lr": 1e-4,
            "weight_decay": 0.1,
            "warmup_steps": 5,
            "lam": 0.0,
            "seed": 0,
        },
        "eval": {
            "scores": ["neglabel", "mcm"],
            "ood_score": "neglabel",
            "neglabel": {"corpus": WORLD_NEGLABEL_CORPUS},
        },
    }
    for key, value in (overrides or {}).items():
        set_path(raw, key, value)
    return validate_config(raw, "world comparison config")


def finetune_world(cfg, *, negatives=None) -> dict:
    """One fine-tuning run through ``run_training`` (one in-process worker): the final state dict
    (``{"model": ..., ...}``) and the last reported (validation) metrics."""
    from raymmft.loop import RunInputs, WorkerContext, run_training

    reports: list[tuple[dict, dict | None]] = []
    worker = WorkerContext(report=lambda m, s: reports.append((m, s)))
    run_training(cfg, worker, RunInputs(negatives=negatives))
    metrics, state = reports[-1]
    return {"metrics": metrics, "state": state}


def compare_methods(
    cfg, lams: Sequence[float], *, progress: Callable[[str], None] | None = None
) -> list[dict]:
    """Zero-shot, then one fine-tuning run per ``lam`` (0 is FLYP) from the same starting model,
    seed and data, all evaluated on the test sets (ID: ``id_val``, as a search's final report) with
    the negatives the starting model mined once. One row per method: ``method``, ``lam``,
    ``seconds`` and the test ``EvaluationResult.flat_metrics()``."""
    from raymmft.config import apply_trial_params
    from raymmft.loop import evaluator_for, model_of

    bundle = model_of(cfg)
    evaluator = evaluator_for(cfg, bundle, on="test")
    negatives = evaluator.setups["neglabel"].negatives if "neglabel" in evaluator.setups else None
    rows = [
        {
            "method": "zero-shot",
            "lam": None,
            "seconds": 0.0,
            **evaluator.evaluate(bundle.model).flat_metrics(),
        }
    ]
    start_state = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    for lam in lams:
        run_cfg = apply_trial_params(cfg, {"train.lam": float(lam)})
        if progress is not None:
            progress(f"fine-tuning with lam={lam:g}")
        start = time.perf_counter()
        result = finetune_world(run_cfg, negatives=negatives)
        seconds = time.perf_counter() - start
        bundle.model.load_state_dict(result["state"]["model"])
        metrics = evaluator.evaluate(bundle.model).flat_metrics()
        method = "FLYP" if lam == 0 else "CMA"
        rows.append({"method": method, "lam": float(lam), "seconds": seconds, **metrics})
    bundle.model.load_state_dict(start_state)
    return rows


def markdown_table(rows: Sequence[dict], set_names: Sequence[str]) -> str:
    """Rows of ``compare_methods`` as a markdown table: percentages, ``a / b`` for two OoD sets."""

    def pct(key: str, row: dict) -> str:
        return " / ".join(f"{100 * row[f'{key}/{name}']:.1f}" for name in set_names)

    columns = [
        ("ID acc", lambda r: f"{100 * r['id_acc']:.1f}"),
        ("gap", lambda r: f"{r['modality_gap']:.3f}"),
        ("NegLabel AUROC", lambda r: pct("neglabel/ood_auroc", r)),
        ("NegLabel FPR95", lambda r: pct("neglabel/ood_fpr95", r)),
        ("MCM AUROC", lambda r: pct("mcm/ood_auroc", r)),
        ("MCM FPR95", lambda r: pct("mcm/ood_fpr95", r)),
    ]
    names = ["zero-shot" if r["lam"] is None else f"{r['method']} (λ = {r['lam']:g})" for r in rows]
    lines = [
        "| method | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in zip(names, rows):
        lines.append(f"| {name} | " + " | ".join(cell(row) for _, cell in columns) + " |")
    return "\n".join(lines)
