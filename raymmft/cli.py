"""The ``raymmft`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported lazily so ``raymmft --help`` stays fast and the core never pulls in Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from raymmft.errors import RaymmftError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "search": (
        "raymmft.commands.search",
        "search lambda, tau, lr (or any field) with Ray Tune + Optuna",
    ),
    "train": ("raymmft.commands.train", "one fine-tuning run at fixed values (Ray Train workers)"),
    "report": (
        "raymmft.commands.report",
        "trials.parquet, Pareto table and plots of a search (running or finished)",
    ),
    "pretrain-world": (
        "raymmft.commands.pretrain_world",
        "pretrain the built-in world's CLIP (raymmft-world) and record its zero-shot metrics",
    ),
    "compare-world": (
        "raymmft.commands.compare_world",
        "zero-shot vs FLYP vs CMA from raymmft-world: a markdown table of ID and OoD metrics",
    ),
    "evaluate": (
        "raymmft.commands.evaluate",
        "ID accuracy and OoD detection metrics of a model, zero-shot or from a checkpoint",
    ),
    "convert-parquet": (
        "raymmft.commands.convert_parquet",
        "convert an ImageFolder into Parquet shards for parquet: datasets",
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in raymmft's form: one line ``error: ...`` and exit status 2
    (argparse's own form prints the usage first)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="raymmft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except RaymmftError as exc:
        _stop_ray()  # its workers' last log lines first: the error is the last line printed
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        cluster = sys.modules.get("raymmft.cluster")
        if cluster is not None and cluster.TERMINATED.is_set():
            _stop_ray()
            print("error: stopped by SIGTERM", file=sys.stderr)
            return 1
        print("interrupted", file=sys.stderr)
        return 130


def _stop_ray() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
