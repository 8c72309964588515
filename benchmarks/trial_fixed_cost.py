"""A trial's fixed cost: from its start to its first training step, and from its last step to its end,
split into Ray's part and ours.

Three runs of the demo's trial (``search_spaces/demo.yaml``, fewer epochs) on one Ray instance:

- ``train-cold``: ``raymmft.search.run_train`` on fresh storage (the NegLabel mining cache is empty);
- ``train-warm``: the same configuration again on the same storage (the mining cache hits);
- ``search``: ``raymmft.search.run_search`` with ``num_samples: 1`` (Tune's layer on top; the
  trial's temperature is sampled, as in the demo).

Both ``run_train`` and ``run_search`` first run the preparation step (``raymmft.prepare``, in one
Ray task: NegLabel mining with the starting model, through the mining cache, and the zero-shot
evaluation) and hand its negatives to the trial, which then does not mine. The preparation is timed
in the driver (``raymmft.search.run_preparation``) and shown as its own part: it is paid once per
search, not per trial, so ``fixed_s_per_trial`` leaves it out.

Every trial's ``TorchTrainer`` runs ``worker_probe.probed_train_fn`` (the real
``train_fn_per_worker`` with a stopwatch around the loop's phases); in the search, a Ray
``worker_process_setup_hook`` swaps ``raymmft.trial.make_trainer`` for the probed one when the
trial's process imports it. Ray's side is read from Ray Train's controller log (the DEBUG lines
``[Worker Group Initialization] ... in X s`` in ``logs/train/ray-train-sys-controller-*.log``) and
from ``ray.timeline()``.

    .venv/bin/python benchmarks/trial_fixed_cost.py              # 2 epochs, the three runs
    .venv/bin/python benchmarks/trial_fixed_cost.py --quick      # 1 epoch, no search run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import harness
import worker_probe

from raymmft.config import validate_config
from raymmft.config_file import load_config

WG_LINE = re.compile(r"\[Worker Group Initialization\] (.*?) (?:in|completed in) ([0-9.]+)s")


def demo_config(args, *, storage: str, name: str, num_samples: int = 1):
    raw = load_config(harness.DEMO_CONFIG).to_dict()
    raw["train"]["epochs"] = args.epochs
    raw["search"]["num_samples"] = num_samples
    raw["storage"] = {"path": storage, "name": name}
    return validate_config(raw, "trial_fixed_cost config")


def controller_files(logs_dir: Path) -> set[Path]:
    return set((logs_dir / "train").glob("ray-train-sys-controller-*.log"))


def worker_group_lines(files) -> list[tuple[str, float]]:
    """``(what, seconds)`` of every ``[Worker Group Initialization]`` line in these log files."""
    out = []
    for path in sorted(files):
        for line in path.read_text(errors="replace").splitlines():
            try:
                message = json.loads(line).get("message", "")
            except json.JSONDecodeError:
                message = line
            m = WG_LINE.search(message)
            if m:
                out.append((m.group(1).split("\n")[0].strip(), float(m.group(2))))
    return out


def breakdown(
    run_start: float, run_end: float, fit: dict, probe: dict, preparation: float = 0.0
) -> dict:
    """Seconds of each part of the trial's start-up and teardown (wall-clock, all processes);
    ``preparation``: the seconds the driver spent in the search's preparation step."""
    marks, steps = probe["marks"], probe["steps"]
    first_step, last_step = steps[0][0], steps[-1][1]

    def spans(name, lo=float("-inf"), hi=float("inf")):
        return sum(e - s for n, s, e in probe["spans"] if n == name and lo <= s and e <= hi)

    def first_span(name):
        return next((e - s for n, s, e in probe["spans"] if n == name), 0.0)

    enter = marks["enter"]
    # Driver to fit(): the preparation step (timed in the driver), then with run_train our config
    # checks and preflight; under Tune, Tune starting the trial's process, which then imports
    # raymmft.search (ours, timed by the probe).
    driver_to_fit = fit["fit_start"] - run_start - preparation
    search_import = fit.get("search_import_s") or 0.0
    ray_start = {
        "tune_to_trial_fn": driver_to_fit - search_import if search_import else 0.0,
        "fit_to_worker_fn": enter - fit["fit_start"],
        "prepare_model": spans("prepare_model", hi=first_step),
    }
    ours_driver = {
        "preparation": preparation,
        "driver_to_fit": 0.0 if search_import else driver_to_fit,
        "trial_imports_raymmft_search": search_import,
    }
    ours_start = {
        **ours_driver,
        "import_torch": marks["torch_imported"] - enter,
        "import_raymmft": marks["raymmft_imported"] - marks["torch_imported"],
        "load_negatives": spans("load_negatives", hi=first_step),
        "build_model": spans("build_model", hi=first_step),
        "open_train_set": first_span("open_dataset"),
        "evaluator_init": spans("evaluator_init", hi=first_step),
        "neglabel_mining": spans("neglabel_mining", hi=first_step),
        "tensorboard_init": spans("tensorboard_init", hi=first_step),
        "finetuner_init": spans("finetuner_init", hi=first_step),
    }
    # what the listed parts leave out: config parsing, loader, tokenisation, Ray context calls
    # (neglabel_mining is part of evaluator_init: without prepared negatives the Evaluator mines)
    listed = sum(v for k, v in ours_start.items() if k not in ("neglabel_mining", *ours_driver))
    ours_start["other"] = (first_step - enter) - listed - spans("prepare_model", hi=first_step)
    ours_end = {
        "final_evaluate": spans("evaluate", lo=last_step),
        "save_checkpoint": spans("save_checkpoint", lo=last_step),
        "tensorboard_close": spans("tensorboard_close", lo=last_step),
    }
    # Under Tune, ASHA stops a trial at its last report and Tune kills the trial's process, so
    # fit() may never return there: then the teardown is one figure, worker exit -> driver.
    fit_end = fit.get("fit_end")
    ray_end = {
        "ray_train_report": spans("ray_train_report", lo=last_step),
        "worker_fn_to_fit_end": (fit_end - marks["exit"]) if fit_end else float("nan"),
        "fit_end_to_driver": (run_end - fit_end) if fit_end else run_end - marks["exit"],
    }
    ours_end["other"] = (
        (marks["exit"] - last_step) - sum(ours_end.values()) - ray_end["ray_train_report"]
    )
    report_spans = [e - s for n, s, e in probe["spans"] if n == "ray_train_report"]
    eval_spans = [e - s for n, s, e in probe["spans"] if n == "evaluate"]
    return {
        "total_s": run_end - run_start,
        "start_to_first_step_s": first_step - run_start,
        "last_step_to_end_s": run_end - last_step,
        "training_s": last_step - first_step,
        "fixed_s": (first_step - run_start) + (run_end - last_step),
        "preparation_s": preparation,
        "fixed_s_per_trial": (first_step - run_start) + (run_end - last_step) - preparation,
        "ray_start": ray_start,
        "ours_start": ours_start,
        "ours_end": ours_end,
        "ray_end": ray_end,
        "ray_part_s": sum(ray_start.values()) + sum(v for v in ray_end.values() if v == v),
        "ours_part_s": sum(v for k, v in ours_start.items() if k != "neglabel_mining")
        + sum(ours_end.values()),
        "ray_train_report_s_each": report_spans,
        "evaluate_s_each": eval_spans,
        "steps": len(steps),
        "worker_torch_threads": probe["torch_threads"],
        "search_import_s": fit.get("search_import_s"),
    }


def timeline_summary(
    path: Path, start: float, end: float, top: int = 14
) -> list[tuple[str, int, float]]:
    """Ray's timeline events inside ``[start, end]``, by task or actor method (``task::Class.method``;
    the generic phases of every task, such as ``task:deserialize_arguments``, are summed apart):
    (event, count, total seconds), longest first."""
    events = json.loads(path.read_text())
    totals: dict[str, list[float]] = defaultdict(list)
    for ev in events:
        if "dur" not in ev or "ts" not in ev:
            continue
        ts = ev["ts"] / 1e6
        if start <= ts <= end and ev.get("cat") != "task:execute":
            totals[ev.get("cat", "?")].append(ev["dur"] / 1e6)
    rows = [(name, len(d), sum(d)) for name, d in totals.items()]
    return sorted(rows, key=lambda r: -r[2])[:top]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 epoch, no search run")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--no-search", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.no_search = 1, True
    load_start = harness.loadavg()
    harness.quiet_ray_logs()
    import ray

    from raymmft import search

    preparations = harness.time_preparation(search)
    runs: dict[str, dict] = {}
    wg: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="raymmft-bench-") as tmp:
        storage, probe_root = str(Path(tmp) / "results"), Path(tmp) / "probes"
        os.environ[worker_probe.PROBE_ROOT_ENV] = str(probe_root)
        worker_probe.patch_search_module(search, probe_root)
        runtime_env = {
            "worker_process_setup_hook": worker_probe.install_search_probe,
            # the hook is unpickled before Ray puts the driver's script directory on sys.path
            "env_vars": {
                worker_probe.PROBE_ROOT_ENV: str(probe_root),
                "PYTHONPATH": os.pathsep.join(
                    p
                    for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH"))
                    if p
                ),
            },
        }
        harness.wait_for_ray_free()
        init_start = time.time()
        with harness.ray_instance(wait=False, runtime_env=runtime_env):
            ray_init_s = time.time() - init_start
            logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
            plan = [("train-cold", "train"), ("train-warm", "train")]
            if not args.no_search:
                plan.append(("search", "search"))
            windows = {}
            for name, kind in plan:
                before = controller_files(logs_dir)
                # the warm run reuses the cold run's storage, hence its NegLabel cache
                cfg = demo_config(args, storage=storage, name=name)
                start = time.time()
                with search.hold_experiment(cfg, resume=False, command="benchmark") as lease:
                    if kind == "train":
                        search.run_train(cfg, lease)
                        trial_name = name
                    else:
                        grid = search.run_search(cfg, lease)
                        trial_name = grid[0].metrics["trial_id"]
                end = time.time()
                windows[name] = (start, end)
                probe_dir = probe_root / trial_name
                fit = json.loads((probe_dir / "fit.json").read_text())
                probe = worker_probe.read_probe(probe_dir)
                prepared = harness.span_within(preparations, start, end)
                runs[name] = breakdown(start, end, fit, probe, prepared)
                time.sleep(1.0)  # let the controller's log handler flush
                wg[name] = worker_group_lines(controller_files(logs_dir) - before)
                print(f"{name}: {end - start:.1f} s, load {harness.loadavg()}", flush=True)
            timeline = Path(tmp) / "timeline.json"
            ray.timeline(filename=str(timeline))
            tl = timeline_summary(timeline, *windows["train-cold"])

    names = list(runs)
    rows = []
    for section, label in (
        ("ray_start", "Ray"),
        ("ours_start", "ours"),
        ("ours_end", "ours"),
        ("ray_end", "Ray"),
    ):
        keys = list(runs[names[0]][section])
        for k in keys:
            rows.append((f"{section}.{k}", label, *(runs[n][section][k] for n in names)))
    for k in (
        "start_to_first_step_s",
        "last_step_to_end_s",
        "fixed_s",
        "preparation_s",
        "fixed_s_per_trial",
        "ray_part_s",
        "ours_part_s",
        "training_s",
        "total_s",
    ):
        rows.append((k, "", *(runs[n][k] for n in names)))
    harness.table(
        ["part", "whose", *names],
        rows,
        title=f"trial fixed cost, seconds (demo trial, {args.epochs} epoch(s))",
    )
    harness.table(
        ["Ray Train controller: [Worker Group Initialization]", *names],
        _align_wg(wg, names),
        title="Ray Train worker-group start-up (controller DEBUG log), seconds",
    )
    harness.table(
        ["ray.timeline() event (train-cold)", "count", "seconds"],
        tl,
        title="Ray timeline, longest events",
    )
    for n in names:
        r = runs[n]
        print(
            f"{n}: ray.train.report each {[round(x, 2) for x in r['ray_train_report_s_each']]} s; "
            f"evaluate each {[round(x, 2) for x in r['evaluate_s_each']]} s"
        )
    fixed = {n: runs[n]["fixed_s"] for n in names}
    per_trial = {n: runs[n]["fixed_s_per_trial"] for n in names}
    harness.emit(
        "trial_fixed_cost",
        {
            "fixed_s": fixed,
            "fixed_s_per_trial": per_trial,
            "target_fixed_s": 10.0,
            "target_met": {n: v <= 10.0 for n, v in fixed.items()},
            "target_met_per_trial": {n: v <= 10.0 for n, v in per_trial.items()},
            "runs": runs,
            "worker_group_init": wg,
            "timeline_top": tl,
            "ray_init_s": ray_init_s,
            "settings": vars(args),
        },
        load_start=load_start,
    )


def _align_wg(wg: dict[str, list], names: list[str]) -> list[tuple]:
    whats = []
    for n in names:
        for what, _ in wg[n]:
            if what not in whats:
                whats.append(what)
    rows = []
    for what in whats:
        rows.append((what, *(next((s for w, s in wg[n] if w == what), "-") for n in names)))
    return rows


if __name__ == "__main__":
    main()
