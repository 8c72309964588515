"""``raymmft train CONFIG``: one fine-tuning run at fixed values through the same worker loop."""

from __future__ import annotations

import argparse

from raymmft.commands.search import add_arguments as _search_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    _search_arguments(p, resume=False)


def run(args: argparse.Namespace) -> int:
    from raymmft.commands.search import command_line, load_for_run

    cfg = load_for_run(args, search=False)
    from raymmft.search import hold_experiment, run_train

    held = hold_experiment(
        cfg, resume=False, command=command_line(), address=args.address, preflight=args.preflight
    )
    with held as lease:
        result = run_train(cfg, lease, address=args.address)
        print_train_summary(cfg, result)
    return 0


def print_train_summary(cfg, result) -> None:
    """The last report's main metrics, the checkpoint, and its evaluation on the OoD test sets."""
    from raymmft.evaluation import format_table as format_evaluation
    from raymmft.results.rows import format_table
    from raymmft.search import evaluate_remote

    m = result.metrics or {}
    keys = ["epoch", "id_acc", "ood_auroc", "ood_fpr95", "modality_gap", "logit_scale"]
    keys.append("train_loss")
    print()
    print(format_table([{k: m.get(k) for k in keys}], keys))
    if result.checkpoint is None:
        return
    checkpoint = cfg.storage.experiment.with_fs_path(result.checkpoint.path)
    print(f"checkpoint: {checkpoint}")
    if cfg.data.ood_test:
        print("\nOoD *test* sets:")
        print(format_evaluation(evaluate_remote(cfg, checkpoint.uri)))
