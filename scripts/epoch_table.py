"""Print two experiments' trials epoch by epoch, side by side, as a markdown table: what Tune
recorded in each trial's ``result.json`` (``training_iteration``, ``train_loss``, ``id_acc``,
``ood_auroc``). Used to compare an interrupted-and-resumed search with an uninterrupted one.

    python scripts/epoch_table.py EXPERIMENT_A EXPERIMENT_B
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("training_iteration", "train_loss", "id_acc", "ood_auroc")


def reports(experiment: str) -> list[dict]:
    (result,) = Path(experiment).glob("trial_driver_*/result.json")
    return [json.loads(line) for line in result.read_text().splitlines() if line.strip()]


def cell(report: dict | None) -> str:
    if report is None:
        return "(missing)"
    return ", ".join(
        f"{report[k]:.6f}" if isinstance(report[k], float) else str(report[k]) for k in KEYS
    )


def main(a: str, b: str) -> None:
    left = {r["epoch"]: r for r in reports(a)}
    right = {r["epoch"]: r for r in reports(b)}
    print(f"| epoch | {Path(a).name}: {', '.join(KEYS)} | {Path(b).name} |")
    print("|---|---|---|")
    for epoch in sorted(set(left) | set(right)):
        print(f"| {epoch} | {cell(left.get(epoch))} | {cell(right.get(epoch))} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
