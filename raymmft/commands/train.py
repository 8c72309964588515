"""``raymmft train CONFIG``: one fine-tuning run at fixed values through the same worker loop."""

from __future__ import annotations

import argparse

from raymmft.commands.search import add_arguments as _search_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    _search_arguments(p)


def run(args: argparse.Namespace) -> int:
    from raymmft.commands.search import load_for_run

    cfg = load_for_run(args)
    from raymmft.search import run_train
    from raymmft.summary import print_train_summary

    result = run_train(
        cfg, address=args.address, resume=bool(args.resume), preflight=args.preflight
    )
    print_train_summary(cfg, result)
    return 0
