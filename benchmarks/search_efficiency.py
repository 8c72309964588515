"""Does the search find good configurations fast? ASHA against no early stopping, and TPE against random.

1. The demo search (``search_spaces/demo.yaml``) with its ASHA scheduler against the same search with
   ``scheduler: fifo`` (no early stopping), same sampler and seed, same ``num_samples``: the wall-time
   ratio, the best AUROC each reached (``ood_auroc``, the primary NegLabel score on the OoD
   validation sets; best over trials of the last report, and best over all reports), and when ASHA
   first came within 1 AUROC point of the no-stopping best.
2. Optuna TPE against random sampling at an equal budget (``--sampler-trials`` trials, FIFO, a few
   sampler seeds): the best AUROC after each number of trials, and the AUROCs of the trials after
   TPE's start-up. Optuna's TPE samples its first ``n_startup_trials`` (10) at random, the same
   points as random search from the same seed, so budgets of 10 trials or fewer cannot tell them
   apart.

Each search calls ``raymmft.search.run_search`` in this process on a fresh Ray instance (started only
once no other Ray runs on the machine, shut down after), with its own storage directory; the wall time
is that of ``run_search`` (Ray's start is timed apart), which includes the search's preparation step
(``raymmft.prepare``: NegLabel mining, through the mining cache, and the zero-shot evaluation, once
before the trials; ``preparation_s`` gives its share).

Cost on 2 CPU cores: a 2-epoch trial takes about 30 s, most of it the trial's fixed cost (Ray's
start-up and teardown, see ``trial_fixed_cost.py``), the demo's 6-epoch trial about 40 s; 2 trials
run at once.

    .venv/bin/python benchmarks/search_efficiency.py                   # full: about 1 hour here
    .venv/bin/python benchmarks/search_efficiency.py --part asha       # the demo, ASHA vs FIFO only
    .venv/bin/python benchmarks/search_efficiency.py --part sampler    # 6 searches x 30 trials: 50 min
    .venv/bin/python benchmarks/search_efficiency.py --quick           # small, cheap evaluation
    .venv/bin/python benchmarks/search_efficiency.py --set train.epochs=4 --sampler-trials 16
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import harness

from raymmft.config_file import load_config


def search_config(args, *, storage: str, name: str, **search):
    from raymmft.config import validate_config
    from raymmft.config_file import parse_overrides
    from raymmft.search_space import set_path

    raw = load_config(harness.DEMO_CONFIG).to_dict()
    for key, value in parse_overrides(args.set):
        set_path(raw, key, value)
    epochs = search.pop("epochs", None)
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    raw["search"].update(search)
    raw["storage"] = {"path": storage, "name": name}
    return validate_config(raw, "search_efficiency config")


def one_search(cfg) -> dict:
    """Run a search on a fresh Ray instance; per trial: its reports' AUROCs and their times."""
    from raymmft import search

    preparations = harness.time_preparation(search)
    harness.wait_for_ray_free()
    ray_start = time.time()
    with harness.ray_instance(wait=False):
        ray_init_s = time.time() - ray_start
        start = time.time()
        with search.hold_experiment(cfg, resume=False, command="benchmark") as lease:
            grid = search.run_search(cfg, lease)
        wall = time.time() - start
        preparation = harness.span_within(preparations, start, start + wall)
    trials = []
    for result in grid:
        index = _trial_index(result.path)
        df = result.metrics_dataframe
        if df is None or "ood_auroc" not in df:
            trials.append(
                {"trial_id": None, "index": index, "error": str(result.error)[:200], "aurocs": []}
            )
            continue
        trials.append(
            {
                "trial_id": str(df["trial_id"].iloc[-1]),
                "index": index,
                "params": _flat(result.config or {}),
                "aurocs": [float(x) for x in df["ood_auroc"]],
                "report_times": [float(t) - start for t in df["timestamp"]],
                "iterations": int(df["training_iteration"].iloc[-1]),
            }
        )
    trials.sort(key=lambda t: t["index"])  # the order the searcher proposed them
    finished = [t for t in trials if t["aurocs"]]
    return {
        "wall_s": wall,
        "preparation_s": preparation,
        "ray_init_s": ray_init_s,
        "best_last_auroc": max((t["aurocs"][-1] for t in finished), default=float("nan")),
        "best_seen_auroc": max((max(t["aurocs"]) for t in finished), default=float("nan")),
        "best_last_after_k": _running_best(
            [t["aurocs"][-1] if t["aurocs"] else None for t in trials]
        ),
        "trials": trials,
        "errors": sum(1 for t in trials if not t["aurocs"]),
    }


def _trial_index(path: str) -> int:
    """Tune's trial number from the trial's directory (``trial_driver_<id>_<n>_<params>``)."""
    m = re.search(r"trial_driver_[0-9a-f]+_(\d+)", Path(path).name)
    return int(m.group(1)) if m else 10**9


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _running_best(values: list[float | None]) -> list[float]:
    best, out = float("-inf"), []
    for v in values:
        if v is not None:
            best = max(best, v)
        out.append(best)
    return out


def time_to_reach(run: dict, level: float) -> float | None:
    """Seconds from the search's start until any trial reported ``ood_auroc >= level``."""
    times = [
        t
        for trial in run["trials"]
        for a, t in zip(trial["aurocs"], trial.get("report_times", []))
        if a >= level
    ]
    return min(times) if times else None


def compare_schedulers(args, root: Path) -> dict:
    runs = {}
    for scheduler in ("asha", "fifo"):
        cfg = search_config(
            args,
            storage=str(root),
            name=f"demo-{scheduler}",
            scheduler=scheduler,
            seed=args.seed,
            num_samples=args.num_samples,
            epochs=args.epochs,
        )
        runs[scheduler] = one_search(cfg)
        print(
            f"{scheduler}: {runs[scheduler]['wall_s']:.0f} s, best AUROC "
            f"{runs[scheduler]['best_last_auroc']:.4f}, load {harness.loadavg()}",
            flush=True,
        )
    asha, fifo = runs["asha"], runs["fifo"]
    level = fifo["best_last_auroc"] - 0.01
    reach = time_to_reach(asha, level)
    rows = [
        (
            s,
            r["wall_s"],
            r["best_last_auroc"],
            r["best_seen_auroc"],
            sum(t["iterations"] for t in r["trials"] if t["aurocs"]),
            r["errors"],
        )
        for s, r in runs.items()
    ]
    harness.table(
        [
            "scheduler",
            "wall s",
            "best AUROC (last)",
            "best AUROC (any report)",
            "epochs run",
            "errors",
        ],
        rows,
        title=f"demo search, {args.num_samples} trials, sampler seed {args.seed}",
    )
    wall_ratio = asha["wall_s"] / fifo["wall_s"]
    gap = fifo["best_last_auroc"] - asha["best_last_auroc"]
    return {
        "runs": runs,
        "wall_ratio_asha_over_fifo": wall_ratio,
        "auroc_gap_points": 100 * gap,
        "asha_time_to_within_1pt_over_fifo_wall": None if reach is None else reach / fifo["wall_s"],
        "target_met": gap <= 0.01 and wall_ratio <= 0.40,
    }


TPE_STARTUP_TRIALS = 10  # optuna.samplers.TPESampler's n_startup_trials default
GOOD_AUROC = 0.85


def after_startup(run: dict) -> dict:
    """The last AUROC of each trial after TPE's start-up trials: mean, median, count >= GOOD_AUROC."""
    values = [t["aurocs"][-1] for t in run["trials"][TPE_STARTUP_TRIALS:] if t["aurocs"]]
    if not values:
        return {"trials": 0, "mean": float("nan"), "median": float("nan"), "good": 0}
    return {
        "trials": len(values),
        "mean": sum(values) / len(values),
        "median": harness.median(values),
        "good": sum(v >= GOOD_AUROC for v in values),
    }


def compare_samplers(args, root: Path) -> dict:
    if args.sampler_trials <= TPE_STARTUP_TRIALS:
        print(
            f"note: {args.sampler_trials} trials <= TPE's 10 random start-up trials: "
            "TPE samples like random search here"
        )
    runs: dict[str, dict[int, dict]] = {"tpe": {}, "random": {}}
    for seed in args.seeds:
        for sampler in ("tpe", "random"):
            cfg = search_config(
                args,
                storage=str(root),
                name=f"sampler-{sampler}-{seed}",
                scheduler="fifo",
                sampler=sampler,
                seed=seed,
                num_samples=args.sampler_trials,
                epochs=args.sampler_epochs,
            )
            runs[sampler][seed] = one_search(cfg)
            print(
                f"{sampler} seed {seed}: best AUROC {runs[sampler][seed]['best_last_auroc']:.4f}, "
                f"{runs[sampler][seed]['wall_s']:.0f} s, load {harness.loadavg()}",
                flush=True,
            )
    rows = []
    for k in range(args.sampler_trials):
        rows.append(
            (
                k + 1,
                *(
                    harness.median(runs[s][seed]["best_last_after_k"][k] for seed in args.seeds)
                    for s in ("tpe", "random")
                ),
            )
        )
    harness.table(
        ["trials", "TPE best AUROC (median over seeds)", "random best AUROC (median over seeds)"],
        rows,
        title=f"TPE vs random, {args.sampler_trials} trials x {args.sampler_epochs} epochs, seeds {args.seeds}",
    )
    # Best-so-far hides how a sampler spends its budget: the trials after TPE's random start-up
    # (the same for both samplers and seeds) show whether its proposals concentrate on good regions.
    after = {s: {seed: after_startup(runs[s][seed]) for seed in args.seeds} for s in runs}
    if args.sampler_trials > TPE_STARTUP_TRIALS:
        harness.table(
            ["sampler", "seed", "mean AUROC", "median AUROC", f"trials >= {GOOD_AUROC}"],
            [
                (s, seed, a["mean"], a["median"], a["good"])
                for s in after
                for seed, a in after[s].items()
            ],
            title=f"trials {TPE_STARTUP_TRIALS + 1}..{args.sampler_trials} "
            "(after TPE's random start-up), last AUROC of each",
        )
    return {
        "after_startup": after,
        "best_after_n": {
            s: {seed: runs[s][seed]["best_last_auroc"] for seed in args.seeds} for s in runs
        },
        "median_best_after_n": {
            s: harness.median(runs[s][seed]["best_last_auroc"] for seed in args.seeds) for s in runs
        },
        "wall_s": {s: {seed: runs[s][seed]["wall_s"] for seed in args.seeds} for s in runs},
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="4 trials x 4 epochs; sampler: 3 x 1, one seed; WordNet -> world corpus",
    )
    p.add_argument("--part", choices=["asha", "sampler", "both"], default="both")
    p.add_argument("--num-samples", type=int, default=6, help="ASHA vs FIFO: the demo's 6")
    p.add_argument("--epochs", type=int, default=None, help="ASHA vs FIFO: default the demo's 6")
    p.add_argument("--seed", type=int, default=0, help="ASHA vs FIFO: sampler seed")
    p.add_argument("--sampler-trials", type=int, default=30, help="TPE's start-up is 10 of them")
    p.add_argument("--sampler-epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override the demo config"
    )
    args = p.parse_args()
    if args.quick:
        args.num_samples, args.epochs = 4, 4
        args.sampler_trials, args.sampler_epochs, args.seeds = 3, 1, [0]
        args.set = ["eval.neglabel.corpus=world", *args.set]
    load_start = harness.loadavg()
    harness.quiet_ray_logs()
    result = {"settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="raymmft-bench-") as tmp:
        if args.part in ("asha", "both"):
            result["asha_vs_fifo"] = compare_schedulers(args, Path(tmp))
        if args.part in ("sampler", "both"):
            result["tpe_vs_random"] = compare_samplers(args, Path(tmp))
    harness.emit("search_efficiency", result, load_start=load_start)


if __name__ == "__main__":
    main()
