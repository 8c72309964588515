"""``raymmft compare-world``: zero-shot vs FLYP (lambda = 0) vs CMA from the pretrained world model.

Example (the README's table)::

    raymmft compare-world --seed 0 --lams 0,0.1,0.3,1.0

Every run fine-tunes ``raymmft-world`` with the same configuration, seed and data through
``run_training`` (the loop Ray runs, here one in-process worker, no Ray), then evaluates the final
weights on the OoD *test* sets exactly as a search's final report does (NegLabel negatives mined by
the starting model, re-encoded by the fine-tuned one). Prints a markdown table: ID accuracy,
modality gap, NegLabel and MCM AUROC / FPR95 for the near and far OoD sets.
"""

from __future__ import annotations

import argparse
import json

from raymmft.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="train.seed of every run (default 0)")
    p.add_argument(
        "--lams",
        default="0,0.1,0.3,1.0",
        help="comma-separated lambdas; 0 is FLYP (default %(default)s)",
    )
    p.add_argument(
        "--id",
        choices=("default", "fine-grained"),
        default="default",
        dest="id_set",
        help="ID concepts of the built-in config: the world's default selection, or 12 confusable "
        "ones (raymmft.world.compare.FINE_GRAINED_ID_CONCEPTS) (default %(default)s)",
    )
    p.add_argument("--config", help="a config file to use instead of the built-in world config")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="FIELD=VALUE",
        help="override a config field, e.g. train.epochs=6 (repeatable)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", help="also write the rows as JSON to this file")


def _lams(text: str) -> list[float]:
    try:
        lams = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--lams expects comma-separated numbers, got {text!r}") from None
    if not lams or any(lam < 0 for lam in lams):
        raise ConfigError(f"--lams expects one or more lambdas >= 0, got {text!r}")
    return lams


def run(args: argparse.Namespace) -> int:
    from raymmft.storage import check_output

    lams = _lams(args.lams)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.out:
        check_output(args.out, "--out", directory=False)
    overrides = [*args.overrides, f"train.seed={args.seed}"]

    import torch

    from raymmft.config_file import load_config, parse_overrides
    from raymmft.storage import Location
    from raymmft.world.compare import (
        FINE_GRAINED_ID_CONCEPTS,
        compare_methods,
        markdown_table,
        world_config,
    )

    torch.set_num_threads(args.threads)
    if args.config:
        cfg = load_config(args.config, overrides)
    else:
        ids = FINE_GRAINED_ID_CONCEPTS if args.id_set == "fine-grained" else None
        cfg = world_config(dict(parse_overrides(overrides)), id_concepts=ids)
    if not cfg.data.ood_test:
        raise ConfigError("compare-world evaluates on data.ood_test, which is empty")

    rows = compare_methods(cfg, lams, progress=lambda msg: print(msg, flush=True))
    from raymmft.data.spec import set_names

    names = set_names(cfg.data.ood_test)
    id_name = cfg.data.id_val.display_name
    t = cfg.train
    print(
        f"\n{cfg.model.arch} ({cfg.model.pretrained}), seed {t.seed}: {t.epochs} epochs, lr {t.lr:g}, "
        f"batch {t.batch_size}, tau {cfg.model.temperature} "
        f"({'learned' if cfg.model.learn_temperature else 'fixed'}); "
        f"NegLabel corpus {cfg.eval.neglabel.corpus}; ID acc on {id_name}; "
        f"AUROC/FPR95 in % as {' / '.join(names)}\n"
    )
    print(markdown_table(rows, names))
    if args.out:
        Location.parse(args.out).write_text(json.dumps(rows, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0
