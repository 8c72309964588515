"""``raymmft search CONFIG``: a Ray Tune + Optuna search over CMA fine-tuning hyperparameters."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="search config (YAML), e.g. search_spaces/demo.yaml")
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
    p.add_argument(
        "--resume",
        metavar="EXPERIMENT",
        help="continue an interrupted experiment (its directory; its saved config is used)",
    )
    p.add_argument(
        "--no-preflight",
        dest="preflight",
        action="store_false",
        help="skip opening every dataset on the driver before trials start",
    )


def load_for_run(args: argparse.Namespace):
    """The config of a new run (CONFIG + overrides) or of the experiment being resumed."""
    from raymmft.config import load_config, load_experiment_config
    from raymmft.errors import ConfigError

    if args.resume:
        if args.config or args.overrides or args.name or args.storage:
            raise ConfigError(
                "--resume takes the experiment's saved config: drop CONFIG, --set, --name and --storage"
            )
        return load_experiment_config(args.resume)
    if not args.config:
        raise ConfigError("give a CONFIG file, or --resume EXPERIMENT")
    overrides = list(args.overrides)
    if args.name:
        overrides.append(f"storage.name={args.name}")
    if args.storage:
        overrides.append(f"storage.path={args.storage}")
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = load_for_run(args)
    from raymmft.search import experiment_dir, run_search, unfinished_trials
    from raymmft.summary import print_search_summary

    grid = run_search(cfg, address=args.address, resume=bool(args.resume), preflight=args.preflight)
    exp_dir = experiment_dir(cfg)
    pending = unfinished_trials(exp_dir) if "://" not in str(exp_dir) else []
    if pending:
        print(
            f"search interrupted with {len(pending)} unfinished trial(s); nothing is lost. "
            f"Resume with: raymmft search --resume {exp_dir}"
        )
        return 130
    print_search_summary(cfg, grid)
    from raymmft.report import write_report

    print()
    print(write_report(str(exp_dir)).describe())
    return 0
