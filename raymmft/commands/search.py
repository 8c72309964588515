"""``raymmft search CONFIG``: a Ray Tune + Optuna search over CMA fine-tuning hyperparameters."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="search config (YAML), e.g. search_spaces/demo.yaml")
    p.add_argument("--name", help="experiment name (default: storage.name or the config's stem)")
    p.add_argument("--storage", help="results storage: a local path or s3:// / gs:// URI")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set search.num_samples=8 (repeatable)",
    )
    p.add_argument("--address", help="join an existing Ray cluster ('auto' or host:port)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")


def run(args: argparse.Namespace) -> int:
    from raymmft.config import load_config
    from raymmft.search import run_search
    from raymmft.summary import print_search_summary

    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"storage.name={args.name}")
    if args.storage:
        overrides.append(f"storage.path={args.storage}")
    cfg = load_config(args.config, overrides)
    grid = run_search(cfg, address=args.address, resume=args.resume)
    print_search_summary(cfg, grid)
    return 0
