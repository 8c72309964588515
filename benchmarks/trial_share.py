"""The share of a trial's time spent in training steps, this checkout against a baseline that does
the work around the steps in every trial and on rank 0, on a scaled CPU config: ``raymmft-small``,
2 Train workers of 1 CPU, ImageFolder data on disk (PNG files), NegLabel over all of WordNet
(140,572 words), an evaluation after every epoch.

The baseline (``--before REV``) is a revision from before object storage: by default the parent of
the commit that added ``raymmft/storage.py``. Its trials mine NegLabel's negatives on rank 0 while
the other ranks wait, evaluate on rank 0 alone and read every image header when they open a
dataset; it has no preparation step (its ``make_trainer`` takes no ``negatives``, which is how
``run_side`` tells the two apart) and its ``prepare_run`` returns ``(storage, experiment, fits)``.

Both sides run in this one invocation, one after the other, each in its own process on a fresh
Ray instance (the baseline from a ``git worktree`` of ``--before``). For each: the Ray Train run's
wall time (``TorchTrainer.fit``: a trial), the seconds of its training steps (from each epoch's
``train/images_per_s`` in its TensorBoard events), and for the new code the preparation step that
runs once per search before the trials (mining, the zero-shot evaluation).

    .venv/bin/python benchmarks/trial_share.py            # ~12 min here
    .venv/bin/python benchmarks/trial_share.py --quick    # the world corpus instead of WordNet
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, emit, loadavg, table, wait_for_ray_free

CLASSES = [
    "red circle",
    "blue square",
    "green star",
    "pink triangle",
    "black square",
    "orange ring",
]


def make_data(root: Path, per_class: int) -> dict:
    """ImageFolders of generated images: ID train/val and a far-OoD validation set."""
    from raymmft.data import open_dataset

    def folder(name: str, spec: dict) -> str:
        out = root / name
        dataset = open_dataset(spec, None)
        for k in range(len(dataset)):
            image, label = dataset[k]
            target = out / dataset.classnames[label].replace(" ", "_")
            target.mkdir(parents=True, exist_ok=True)
            image.resize((64, 64)).save(target / f"{k}.png")
        return str(out)

    shapes = {"uri": "builtin:shapes", "seed": 0}
    return {
        "id_train": {
            "uri": "imagefolder:"
            + folder(
                "train", {**shapes, "split": "train", "classes": CLASSES, "per_class": per_class}
            )
        },
        "id_val": {
            "uri": "imagefolder:"
            + folder(
                "val", {**shapes, "split": "val", "classes": CLASSES, "per_class": per_class // 4}
            )
        },
        "ood_val": [
            {
                "uri": "imagefolder:"
                + folder(
                    "far", {**shapes, "split": "val", "classes": "far_ood", "per_class": per_class}
                ),
                "name": "far",
            }
        ],
    }


def make_config(root: Path, data: dict, corpus: str, epochs: int) -> Path:
    import yaml

    raw = {
        "model": {"arch": "raymmft-small", "temperature": 0.05},
        "data": data,
        "train": {"epochs": epochs, "batch_size": 48, "lr": 1e-3, "augment": False},
        "eval": {"scores": ["neglabel", "mcm"], "neglabel": {"corpus": corpus}},
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(root / "results"), "name": "share"},
    }
    path = root / "share.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_side(config: str, side: str) -> dict:
    """One side, in this process: the preparation (new code only) and one trial's fit."""
    import inspect

    import ray

    from raymmft import search

    try:
        from raymmft.config_file import load_config
    except ImportError:  # the baseline revision read configs in raymmft.config
        from raymmft.config import load_config

    cfg = load_config(config, [f"storage.name={side}"])
    new = "negatives" in inspect.signature(search.make_trainer).parameters
    start = getattr(search, "start_run", None) or search.prepare_run  # the baseline's name
    if "preflight" in inspect.signature(start).parameters:  # before the experiment's lease
        prepared = start(cfg, address=None, resume=False, preflight=True)
    else:  # held until the benchmark's process ends
        search.hold_experiment(cfg, resume=False, command="benchmark").acquire()
        prepared = start(cfg, address=None)
    exp = prepared[0] if new else prepared[1]  # before: (storage, experiment, fits)
    exp_path = exp.uri if new else str(exp)
    prep_s, kwargs = 0.0, {}
    if new:
        start = time.perf_counter()
        kwargs["negatives"] = search.run_preparation(cfg, exp)
        prep_s = time.perf_counter() - start
        storage, cache = cfg.storage.location, search.cache_location(cfg)
        tensorboard = exp.join("tensorboard", "run")
    else:
        storage = prepared[0]
        cache, tensorboard = None, f"{storage}/{side}/tensorboard/run"  # no cache: the trial mines
    trainer = search.make_trainer(
        cfg, storage=storage, name=side, cache=cache, tensorboard_dir=tensorboard, **kwargs
    )
    start = time.perf_counter()
    trainer.fit()
    fit_s = time.perf_counter() - start
    ray.shutdown()
    return {
        "side": side,
        "experiment": exp_path,
        "prep_s": prep_s,
        "fit_s": fit_s,
        "epochs": cfg.train.epochs,
    }


def git(*args: str) -> str:
    """The output of ``git -C REPO *args``."""
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout


def default_before() -> str:
    """The baseline revision: the parent of the commit that added ``raymmft/storage.py``."""
    added = git("log", "--diff-filter=A", "--format=%H", "--", "raymmft/storage.py").split()
    if not added:
        raise SystemExit("no commit added raymmft/storage.py: give the baseline as --before REV")
    return added[-1] + "^"


def train_seconds(tensorboard_dir: str, steps_per_epoch: int, batch: int) -> dict:
    """Seconds of training steps per epoch, from the run's train/images_per_s scalars."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tensorboard_dir)
    events.Reload()
    rates = [e.value for e in events.Scalars("train/images_per_s")]
    out = {"train_s": sum(steps_per_epoch * batch / r for r in rates), "epochs_logged": len(rates)}
    if "time/eval_s" in events.Tags()["scalars"]:
        out["eval_s"] = sum(e.value for e in events.Scalars("time/eval_s"))
        out["startup_s"] = events.Scalars("time/startup_s")[0].value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before",
        help="the baseline revision (default: the parent of the commit that added raymmft/storage.py)",
    )
    parser.add_argument("--per-class", type=int, default=40, help="ID train images per class")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--corpus", default="wordnet")
    parser.add_argument("--quick", action="store_true", help="the world corpus, 2 epochs")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: CONFIG,SIDE
    args = parser.parse_args(argv)
    if args.run:
        config, side = args.run.split(",")
        print(json.dumps(run_side(config, side)), flush=True)
        return 0
    if args.quick:
        args.corpus, args.epochs = "world", 2
    args.before = git("rev-parse", "--short", args.before or default_before()).strip()
    load_start = loadavg()
    with tempfile.TemporaryDirectory(prefix="raymmft-share-") as tmp:
        root = Path(tmp)
        data = make_data(root, args.per_class)
        config = make_config(root, data, args.corpus, args.epochs)
        old = root / "before"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.before],
            check=True,
            capture_output=True,
        )
        results = {}
        try:
            for side, code in (("before", old), ("after", REPO)):
                wait_for_ray_free()
                env = {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}
                start = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--run", f"{config},{side}"],
                    cwd=code,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=3600,
                )
                if proc.returncode != 0:
                    print(proc.stdout[-3000:], proc.stderr[-3000:])
                    raise SystemExit(f"{side}: exit {proc.returncode}")
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result["wall_s"] = time.perf_counter() - start
                images = args.per_class * len(CLASSES)
                steps = images // 48
                tb = Path(result["experiment"]) / "tensorboard" / "run"
                result.update(train_seconds(str(tb), steps, 48))
                result["share"] = result["train_s"] / result["fit_s"]
                results[side] = result
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                capture_output=True,
            )
    b, a = results["before"], results["after"]
    table(
        ["side", "trial (fit) s", "training steps s", "share", "preparation s", "whole run s"],
        [
            [s, r["fit_s"], r["train_s"], r["share"], r["prep_s"], r["prep_s"] + r["fit_s"]]
            for s, r in results.items()
        ],
        title=f"one trial, raymmft-small, 2 workers, NegLabel over '{args.corpus}' ({args.before} vs this checkout)",
    )
    emit(
        "trial_share",
        {
            "before_commit": args.before,
            "corpus": args.corpus,
            "epochs": args.epochs,
            "before": b,
            "after": a,
            "share_before": b["share"],
            "share_after": a["share"],
            "trial_time_ratio": a["fit_s"] / b["fit_s"],
        },
        load_start=load_start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
