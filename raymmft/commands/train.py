"""``raymmft train CONFIG``: one fine-tuning run at fixed values through the same worker loop."""

from __future__ import annotations

import argparse

from raymmft.commands.search import add_arguments as _search_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    _search_arguments(p)


def run(args: argparse.Namespace) -> int:
    from raymmft.config import load_config
    from raymmft.search import run_train
    from raymmft.summary import print_train_summary

    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"storage.name={args.name}")
    if args.storage:
        overrides.append(f"storage.path={args.storage}")
    cfg = load_config(args.config, overrides)
    result = run_train(cfg, address=args.address, resume=args.resume)
    print_train_summary(cfg, result)
    return 0
