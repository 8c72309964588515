"""``raymmft search CONFIG``: a Ray Tune + Optuna search over CMA fine-tuning hyperparameters."""

from __future__ import annotations

import argparse
import shlex


def add_arguments(p: argparse.ArgumentParser, *, resume: bool = True) -> None:
    """The flags of ``search`` (``resume=False``: of ``train``, which keeps no resumable state:
    a run that stopped is run again under a new ``--name``)."""
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
    if resume:
        p.add_argument(
            "--resume",
            metavar="EXPERIMENT",
            help="continue an interrupted experiment (its directory; its saved config is used)",
        )
    else:
        p.set_defaults(resume=None)
    p.add_argument(
        "--no-preflight",
        dest="preflight",
        action="store_false",
        help="skip opening every dataset on the driver before trials start",
    )


def load_for_run(args: argparse.Namespace, *, search: bool = True):
    """The config of a new run (CONFIG + overrides) or of the experiment being resumed. A search
    refuses a ``--set`` on a searched field (``search=False``: a training run allows it)."""
    from raymmft.config_file import check_searchable, load_config, load_experiment_config
    from raymmft.errors import ConfigError
    from raymmft.storage import check_name

    if args.resume:
        if args.config or args.overrides or args.name or args.storage:
            raise ConfigError(
                "--resume takes the experiment's saved config: drop CONFIG, --set, --name and --storage"
            )
        from raymmft.search import check_free_space, restore_tune_state
        from raymmft.storage import Location

        resumed = Location.parse(args.resume)
        if resumed.is_local:  # before anything is rewritten there
            check_free_space(resumed)
        restored = restore_tune_state(args.resume)
        if restored:
            print(f"note: {restored}")
        if not unstarted(args.resume):  # else --resume starts the interrupted start's search
            from raymmft.results.experiment import check_resumable

            check_resumable(args.resume)
        return load_experiment_config(args.resume)
    if not args.config:
        raise ConfigError("give a CONFIG file, or --resume EXPERIMENT")
    fields = {}
    if args.name is not None:
        try:
            fields["storage.name"] = check_name(args.name)
        except ValueError as exc:
            raise ConfigError(f"--name: {exc}") from None
    if args.storage is not None:
        fields["storage.path"] = args.storage
    cfg = load_config(args.config, args.overrides, fields=fields)
    if search:
        check_searchable(cfg, args.overrides)
    return cfg


def unstarted(experiment: str) -> bool:
    """Whether ``experiment`` is a start interrupted before Tune wrote anything (its config is
    there, no Tune state, no pickled tuner): ``--resume`` then starts the search."""
    from raymmft.config_file import EXPERIMENT_CONFIG_FILE
    from raymmft.errors import StorageError
    from raymmft.results.experiment import TUNER_FILE, newest_state
    from raymmft.storage import Location

    try:
        names = set(Location.parse(experiment).children())
    except (StorageError, ValueError, OSError):
        return False  # check_resumable says what is wrong
    return EXPERIMENT_CONFIG_FILE in names and TUNER_FILE not in names and not newest_state(names)


def run(args: argparse.Namespace) -> int:
    cfg = load_for_run(args)
    from raymmft.search import hold_experiment

    held = hold_experiment(
        cfg,
        resume=bool(args.resume),
        command=command_line(),
        address=args.address,
        preflight=args.preflight,
    )
    with held as lease:
        return _search(args, cfg, lease)


def command_line() -> str:
    """This process's command, for the experiment's lease (who holds it)."""
    import sys

    return " ".join(shlex.quote(a) for a in ["raymmft", *sys.argv[1:]])


def _search(args: argparse.Namespace, cfg, lease) -> int:
    from raymmft.cluster import TERMINATED
    from raymmft.errors import RunFailedError
    from raymmft.results.experiment import read_experiment
    from raymmft.search import STORAGE_FAULTS, run_search

    run_search(cfg, lease, address=args.address, resume=bool(args.resume))
    resume = f"raymmft search --resume {shlex.quote(cfg.storage.experiment.uri)}"
    try:
        exp = read_experiment(cfg.storage.experiment)
        confirmation = exp.confirmation
        pending = exp.unfinished() + (confirmation.unfinished() if confirmation else [])
        if pending:
            stopped = (
                f"with {len(pending)} unfinished trial(s); nothing is lost. Resume with: {resume}"
            )
            if STORAGE_FAULTS:
                raise RunFailedError(
                    f"the search stopped: {STORAGE_FAULTS[0]}; {len(pending)} unfinished "
                    f"trial(s), nothing is lost. Once the storage is fixed, resume with: {resume}"
                )
            if TERMINATED.is_set():
                raise RunFailedError(f"the search was stopped by SIGTERM {stopped}")
            print(f"search interrupted {stopped}")
            return 130
        return _summarise(cfg, exp)
    except KeyboardInterrupt:
        stopped = f"after its trials ended; nothing is lost. Resume with: {resume}"
        if TERMINATED.is_set():
            raise RunFailedError(f"the search was stopped by SIGTERM {stopped}") from None
        print(f"search interrupted {stopped}")
        return 130


def _summarise(cfg, exp) -> int:
    """The end of a search whose trials all ended: failures, the summary, the report."""
    from raymmft.errors import RunFailedError
    from raymmft.results.report import write_report

    failed = [t for t in exp.trials if t.status == "ERROR"]
    for t in failed:
        print(f"trial {t.trial_id} failed: {t.error or 'see its error.txt'}")
    if len(failed) == len(exp.trials):
        first = failed[0] if failed else None
        why = f"trial {first.trial_id}: {first.error}" if first else "no trial ran"
        raise RunFailedError(
            f"no trial of the search finished ({len(failed)} failed; the first, {why}); "
            f"each trial's error.txt under {exp.location.uri} has its traceback"
        )
    print_search_summary(cfg, exp)
    print()
    print(write_report(exp.location).describe())
    return 0


def print_search_summary(cfg, exp) -> None:
    """The trial table (the report's rows), the choice in plain words, and the chosen
    candidate's evaluation on the OoD *test* sets (the zero-shot starting model's when it is
    chosen), on as many workers as one trial has."""
    from raymmft.config import apply_trial_params
    from raymmft.evaluation import format_table as format_evaluation
    from raymmft.evaluation import write_json
    from raymmft.faults import pause_if_asked
    from raymmft.results.experiment import TEST_EVALUATION_FILE
    from raymmft.results.rows import (
        best_trial_row,
        choice_statement,
        chosen_row,
        format_confirmation,
        format_trials,
        searched_params,
        trial_rows,
    )
    from raymmft.search import evaluate_remote

    objectives = cfg.search.goals
    rows = trial_rows(exp)
    print()
    print(format_trials(rows, objectives))
    chosen = chosen_row(rows)
    if chosen is None:
        print(
            f"\nno candidate reported every objective ({objectives.describe()}); nothing to choose"
        )
        return
    confirmed = format_confirmation(rows, objectives)
    if confirmed:
        print(f"\n{confirmed}")
    print(f"\n{choice_statement(rows, objectives)}")
    best = best_trial_row(rows, objectives)
    if best is not None:
        print(f"best trial {best['trial_id']} (the best fine-tuned option):")
        for k, v in sorted(searched_params(best).items()):
            print(f"  {k} = {v}")
        print(f"  checkpoint: {best['checkpoint_path']}")
    baseline = bool(chosen.get("baseline"))
    checkpoint = None if baseline else chosen.get("checkpoint_path")
    if not cfg.data.ood_test or not (baseline or checkpoint):
        return
    params = {} if baseline else searched_params(chosen)
    if not baseline and chosen.get("alpha", 1.0) < 1.0:
        params["model.interpolate"] = float(chosen["alpha"])
    pause_if_asked("test-evaluation")
    result = evaluate_remote(
        apply_trial_params(cfg, params),
        checkpoint,
        bootstrap=cfg.eval.bootstrap_resamples,
        compare_start=True,
    )
    what = (
        "the zero-shot starting model (chosen)"
        if baseline
        else f"chosen trial {chosen['trial_id']}"
    )
    print(f"\n{what} on the OoD *test* sets (never seen by the search):")
    print(format_evaluation(result))
    record = {"trial_id": chosen["trial_id"], "params": params, "checkpoint": checkpoint}
    write_json(result, exp.location.join(TEST_EVALUATION_FILE), record)
