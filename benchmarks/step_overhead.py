"""Training throughput of the Ray Train worker loop against a plain PyTorch loop, and 2 workers vs 1.

The Ray side is a real trial: ``raymmft.trial.make_trainer``'s ``TorchTrainer`` running
``raymmft.worker.train_fn_per_worker`` (through ``worker_probe.probed_train_fn``, which only adds a
stopwatch), and its throughput is the ``images_per_s`` that the worker *reports* per epoch. The plain
side is a hand-written loop in this process with the same model, data, batch, forward
(``raymmft.text_tower.TrainingForward``, as the worker wraps the model: both towers, the prompts
at their real length), loss (CMA, same lambda), optimiser and schedule, timed the same way (images /
seconds of the epoch's steps); a second plain loop calls ``FineTuner.train_step`` (the worker's own
step), which separates what the Ray process environment costs from what our step code adds. Both exclude the
first epoch (warm-up: allocator, first-touch, lazy init) and take medians over the remaining epochs
and over repeats; the runs alternate (Ray, plain, Ray, plain ...) on the same Ray instance, so both
sides see the same background load.

Fairness: Ray sets ``OMP_NUM_THREADS`` to a worker's CPU count (1 for the demo's ``cpus_per_worker:
1``), so the worker's torch runs 1 intra-op thread, while this process would use every core; and
the raylet starts worker processes at niceness 15 (``RAY_worker_niceness``), so that on a busy
machine they yield the CPU to everything else. The baseline runs with the worker's thread count
and niceness (read back from the worker); it is also run at this process's niceness, and once with
torch's default thread count, to show what an unfair comparison would report.
``--worker-niceness 0`` starts Ray with workers at niceness 0.

    .venv/bin/python benchmarks/step_overhead.py            # 3 repeats, 5 epochs
    .venv/bin/python benchmarks/step_overhead.py --quick    # 1 repeat, 3 epochs
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import harness
import torch
import worker_probe

from raymmft.config import validate_config
from raymmft.config_file import load_config


def bench_config(args, *, num_workers: int, storage: str, name: str):
    """The demo's model, data and training settings with a cheap evaluation (MCM only, small
    sets): evaluation runs between epochs, outside the timed steps, but costs wall time."""
    raw = load_config(harness.DEMO_CONFIG).to_dict()
    raw["data"]["id_train"]["per_class"] = args.per_class
    raw["data"]["id_val"]["per_class"] = 4
    raw["data"]["ood_val"] = [raw["data"]["ood_val"][1] | {"per_class": 5}]
    raw["data"].pop("ood_test", None)
    raw["train"].update(epochs=args.epochs, lam=args.lam, lr=1e-3, batch_size=args.batch)
    raw["eval"] = {"scores": ["mcm"], "ood_score": "mcm", "every_n_epochs": 1}
    raw["resources"] = {
        "num_workers": num_workers,
        "cpus_per_worker": args.cpus_per_worker,
        "max_failures": 0,
    }
    raw["storage"] = {"path": storage, "name": name}
    return validate_config(raw, "step_overhead config")


@contextmanager
def niceness(value: int | None):
    """Run the block at scheduling priority ``value`` (this thread; Linux niceness is per thread)."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    if value is None or value == before:
        yield before
        return
    os.setpriority(os.PRIO_PROCESS, 0, value)
    try:
        yield value
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, before)
        except PermissionError:
            raise SystemExit(
                f"cannot restore niceness {before} after running at {value} (not root): "
                "rerun with --plain-niceness 0"
            ) from None


def _train_plain(cfg, finetuner: bool) -> dict:
    """The same training without Ray: images/s of each epoch, and each step's seconds.

    With ``finetuner`` the step is ``raymmft.finetune.FineTuner.train_step`` (the worker loop's own
    step, with its finiteness check and metric ``.item()`` calls), else a hand-written one.
    """
    from raymmft.data import build_loader, open_dataset, per_worker_batch
    from raymmft.finetune import make_lr_schedule, make_optimizer, seed_everything, steps_per_epoch
    from raymmft.loop import model_of
    from raymmft.losses import cma_loss
    from raymmft.model import clamp_logit_scale
    from raymmft.text import tokenize_class_prompts
    from raymmft.text_tower import TrainingForward

    seed_everything(cfg.train.seed)
    bundle = model_of(cfg)
    transform = bundle.preprocess_train if cfg.train.augment else bundle.preprocess_eval
    train_set = open_dataset(cfg.data.id_train, transform)
    loader = build_loader(
        train_set,
        per_worker_batch(cfg.train.batch_size, 1),
        shuffle=True,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        drop_last=True,
    )
    n_steps = steps_per_epoch(len(loader), cfg.train)
    tokens = tokenize_class_prompts(bundle.tokenizer, train_set.classnames, cfg.train.template)
    model = TrainingForward(bundle.model)  # what the worker loop steps (before its DDP wrapping)
    optimizer = make_optimizer(model, cfg.train)
    scheduler = make_lr_schedule(optimizer, cfg.train, n_steps * cfg.train.epochs)
    lam = cfg.train.lam
    tuner = None
    if finetuner:
        from raymmft.finetune import FineTuner

        tuner = FineTuner(
            model,
            tokens,
            cfg.train,
            total_steps=n_steps * cfg.train.epochs,
            device=torch.device("cpu"),
            autocast_dtype=None,
        )
    epochs, steps = [], []
    model.train()
    for epoch in range(cfg.train.epochs):
        loader.sampler.set_epoch(epoch)
        start, n, step_times = time.perf_counter(), 0, []
        for i, (images, labels) in enumerate(loader):
            if i >= n_steps:
                break
            t0 = time.perf_counter()
            if tuner is not None:
                tuner.train_step(images, labels)
                step_times.append(time.perf_counter() - t0)
                n += 1
                continue
            image_features, text_features, logit_scale = model(images, tokens[labels])
            loss = cma_loss(image_features, text_features, logit_scale, lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            clamp_logit_scale(bundle.model)
            loss.item()
            step_times.append(time.perf_counter() - t0)
            n += 1
        epochs.append(n * cfg.train.batch_size / (time.perf_counter() - start))
        steps.append(step_times)
    return {"epoch_images_per_s": epochs, "step_s": steps}


def plain_loop(cfg, *, threads: int, finetuner: bool = False, nice: int | None = None) -> dict:
    """``_train_plain`` with ``threads`` torch threads at niceness ``nice`` (None: this process's)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with niceness(nice) as actual:
            out = _train_plain(cfg, finetuner)
    finally:
        torch.set_num_threads(previous)
    return out | {"threads": threads, "niceness": actual}


def ray_run(cfg, *, storage: str, name: str) -> dict:
    """One Ray Train run; the images/s each epoch reported, the worker's threads and step times."""
    probe_dir = Path(storage) / name / "probe"
    start = time.time()
    with harness.RayCpuSampler() as cpu:
        worker_probe.probed_trainer(cfg, storage=storage, name=name, probe_dir=probe_dir).fit()
    wall = time.time() - start
    probe = worker_probe.read_probe(probe_dir)
    per_epoch: list[list[float]] = [[] for _ in probe["reports"]]
    bounds = [r["time"] for r in probe["reports"]]
    for s, e in probe["steps"]:
        k = next(i for i, t in enumerate(bounds) if s < t)
        per_epoch[k].append(e - s)
    return {
        "epoch_images_per_s": [r["images_per_s"] for r in probe["reports"]],
        "step_s": per_epoch,
        "threads": probe["torch_threads"],
        "niceness": probe["niceness"],
        "OMP_NUM_THREADS": probe["OMP_NUM_THREADS"],
        "cpu_affinity": probe["cpu_affinity"],
        "dist_backend": probe["dist_backend"],
        "wall_s": wall,
        # during the steady epochs (the second epoch's first step to the last step)
        "ray_cpu_steady": cpu.totals(
            per_epoch_start(probe, 1), probe["steps"][-1][1] if probe["steps"] else None
        ),
    }


def per_epoch_start(probe: dict, epoch: int) -> float | None:
    """Wall time of the first step after the ``epoch``-th report (epoch counted from 0)."""
    if epoch == 0:
        return probe["steps"][0][0] if probe["steps"] else None
    after = probe["reports"][epoch - 1]["time"] if len(probe["reports"]) >= epoch else None
    return next((s for s, _ in probe["steps"] if after is not None and s > after), None)


def steady(run: dict) -> tuple[float, float]:
    """(median images/s, median step seconds) over every epoch but the first."""
    ips = run["epoch_images_per_s"][1:]
    steps = [s for epoch in run["step_s"][1:] for s in epoch]
    return harness.median(ips), harness.median(steps)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="1 repeat of 3 epochs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5, help="per run; the first is warm-up")
    p.add_argument(
        "--per-class", type=int, default=120, help="ID training images per class (12 classes)"
    )
    p.add_argument("--batch", type=int, default=60, help="global batch (the demo's)")
    p.add_argument("--lam", type=float, default=0.01)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--no-two-workers", action="store_true", help="skip the 2-worker runs")
    p.add_argument(
        "--worker-niceness",
        type=int,
        default=None,
        help="start Ray with RAY_worker_niceness (Ray's default: 15)",
    )
    args = p.parse_args()
    if args.quick:
        args.repeats, args.epochs = 1, 3
    load_start = harness.loadavg()
    harness.quiet_ray_logs()

    runs: dict[str, list[dict]] = {
        "ray_1w": [],
        "plain": [],
        "plain_finetuner": [],
        "plain_own_nice": [],
        "plain_default_threads": [],
        "ray_2w": [],
    }
    default_threads = torch.get_num_threads()
    own_nice = os.getpriority(os.PRIO_PROCESS, 0)
    if args.worker_niceness is not None:
        # read by the raylet when it starts: the niceness of every worker process it launches
        os.environ["RAY_worker_niceness"] = str(args.worker_niceness)
    with tempfile.TemporaryDirectory(prefix="raymmft-bench-") as storage, harness.ray_instance():
        for r in range(args.repeats):
            cfg1 = bench_config(args, num_workers=1, storage=storage, name=f"w1-{r}")
            runs["ray_1w"].append(ray_run(cfg1, storage=storage, name=f"w1-{r}"))
            worker_threads = runs["ray_1w"][-1]["threads"]
            worker_nice = runs["ray_1w"][-1]["niceness"]
            # same threads and niceness as the worker: the fair baseline
            runs["plain"].append(plain_loop(cfg1, threads=worker_threads, nice=worker_nice))
            runs["plain_finetuner"].append(
                plain_loop(cfg1, threads=worker_threads, nice=worker_nice, finetuner=True)
            )
            if worker_nice != own_nice:
                runs["plain_own_nice"].append(plain_loop(cfg1, threads=worker_threads))
            if r == 0 and default_threads != worker_threads:
                runs["plain_default_threads"].append(plain_loop(cfg1, threads=default_threads))
            if not args.no_two_workers:
                cfg2 = bench_config(args, num_workers=2, storage=storage, name=f"w2-{r}")
                runs["ray_2w"].append(ray_run(cfg2, storage=storage, name=f"w2-{r}"))
            print(f"repeat {r + 1}/{args.repeats} done, load {harness.loadavg()}", flush=True)

    rows, summary = [], {}
    for key, label in (
        ("plain", "plain PyTorch (worker's threads and niceness)"),
        ("plain_finetuner", "plain, FineTuner.train_step (same)"),
        ("plain_own_nice", f"plain PyTorch, niceness {own_nice}"),
        ("plain_default_threads", f"plain PyTorch, niceness {own_nice}, {default_threads} threads"),
        ("ray_1w", "Ray Train, 1 worker"),
        ("ray_2w", "Ray Train, 2 workers"),
    ):
        if not runs[key]:
            continue
        per_run = [steady(run) for run in runs[key]]
        ips = harness.median(x[0] for x in per_run)
        step = harness.median(x[1] for x in per_run)
        summary[key] = {
            "images_per_s": ips,
            "step_ms": 1000 * step,
            "threads": runs[key][0]["threads"],
            "images_per_s_runs": [x[0] for x in per_run],
        }
        nice = runs[key][0]["niceness"]
        rows.append((label, runs[key][0]["threads"], nice, ips, 1000 * step, len(per_run)))
    harness.table(
        ["loop", "torch threads", "niceness", "images/s (median)", "step ms (median)", "runs"],
        rows,
        title=f"steady-state training throughput (epochs 2..{args.epochs}, batch {args.batch})",
    )
    ratio = summary["ray_1w"]["images_per_s"] / summary["plain"]["images_per_s"]
    result = {
        "ray_over_plain": ratio,
        "ray_over_plain_per_step": summary["plain"]["step_ms"] / summary["ray_1w"]["step_ms"],
        # the same step code on both sides: what the Ray process environment alone costs
        "ray_over_plain_finetuner": summary["ray_1w"]["images_per_s"]
        / summary["plain_finetuner"]["images_per_s"],
        "target_ray_over_plain": 0.95,
        "target_met": ratio >= 0.95,
        "two_over_one_worker": (
            summary["ray_2w"]["images_per_s"] / summary["ray_1w"]["images_per_s"]
            if "ray_2w" in summary
            else None
        ),
        "worker_env": {
            k: runs["ray_1w"][0][k]
            for k in ("threads", "niceness", "OMP_NUM_THREADS", "cpu_affinity", "dist_backend")
        },
        "driver_default_threads": default_threads,
        "driver_niceness": own_nice,
        "ray_run_wall_s": [run["wall_s"] for run in runs["ray_1w"]],
        # CPU seconds used by Ray's processes during the steady epochs of each 1-worker run
        "ray_1w_cpu_steady": [run["ray_cpu_steady"] for run in runs["ray_1w"]],
        "loops": summary,
        "settings": {k: v for k, v in vars(args).items()},
    }
    print(
        f"Ray/plain images/s: {ratio:.3f} (target >= 0.95); 2 workers / 1 worker: "
        f"{result['two_over_one_worker'] if result['two_over_one_worker'] is None else round(result['two_over_one_worker'], 3)}"
    )
    harness.emit("step_overhead", result, load_start=load_start)


if __name__ == "__main__":
    main()
