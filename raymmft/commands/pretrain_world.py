"""``raymmft pretrain-world``: pretrain the built-in world's CLIP (``raymmft-world``), measure it.

Example (what produced the shipped weights)::

    raymmft pretrain-world --seed 0 --out raymmft/assets/pretrained/raymmft-world.pt

Writes the fp16 state dict to ``--out`` and, beside it (same name, ``.json``), how it was made and
its zero-shot metrics on held-out world images. ``--check`` compares the metrics with a recorded
JSON (default: the shipped one) and fails when one misses by more than the stated tolerance.
Pretraining is deterministic for a seed on a given machine and thread count (see raymmft.world).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raymmft.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="weights file to write (.pt); metrics go beside it")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, images and batches")
    p.add_argument("--steps", type=int, help="optimiser steps (default: PretrainSettings.steps)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--corpus",
        action="append",
        dest="corpora",
        metavar="CORPUS",
        help="NegLabel corpus of the recorded metrics (repeatable; default: world and "
        "world+wordnet:2000)",
    )
    p.add_argument(
        "--check",
        nargs="?",
        const="shipped",
        metavar="RECORD",
        help="compare the metrics with a recorded JSON (default: the shipped record)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix != ".pt":
        raise ConfigError(f"--out must name a .pt file, got {out}")
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    from raymmft.config import check_seed

    check_seed(args.seed, "--seed")
    from raymmft.storage import check_output

    check_output(str(out), "--out", directory=False)

    from raymmft.model import build_model
    from raymmft.world import WORLD_METRICS
    from raymmft.world import metrics as world_metrics
    from raymmft.world import pretrain as world

    corpora = args.corpora or ["world", "world+wordnet:2000"]
    record = None
    if args.check:
        record_path = WORLD_METRICS if args.check == "shipped" else Path(args.check)
        if not record_path.is_file():
            raise ConfigError(f"--check: recorded metrics not found: {record_path}")
        record = json.loads(record_path.read_text())

    overrides = {k: v for k, v in (("steps", args.steps), ("lr", args.lr)) if v is not None}
    try:
        settings = world.PretrainSettings(seed=args.seed, **overrides)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(f"pretraining {settings.arch} for {settings.steps} steps (seed {settings.seed})")

    def progress(step: int, loss: float, _model) -> None:
        print(f"  step {step:>5}/{settings.steps}  loss {loss:.4f}", flush=True)

    log = world.PretrainLog(every=100)
    bundle = world.pretrain_world(settings, threads=args.threads, progress=progress, log=log)
    print(f"pretraining took {log.seconds:.0f} s")
    world.save_world_weights(bundle.model, out)

    # Measure what was written (fp16), as it will be loaded.
    shipped = build_model(settings.arch, str(out))
    metrics = world_metrics.world_metrics(shipped, corpora=corpora)
    record_path = world.write_record(
        out.with_suffix(".json"), settings, metrics, log, out, threads=args.threads, corpora=corpora
    )
    size_mb = out.stat().st_size / 2**20
    print(f"wrote {out} ({size_mb:.1f} MiB) and {record_path}")
    for key, value in metrics.items():
        print(f"  {key:<24} {value:.4f}")
    if record is not None:
        written = json.loads(record_path.read_text())["weights_fingerprint"]
        same = written == record.get("weights_fingerprint")
        print("weights identical to the record" if same else "weights differ from the record")
        misses = world_metrics.metrics_within_tolerance(metrics, record["metrics"])
        if misses:
            print("metrics differ from the record beyond tolerance:\n  " + "\n  ".join(misses))
            return 1
        print("all metrics within tolerance of the record")
    return 0
