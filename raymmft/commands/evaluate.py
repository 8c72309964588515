"""``raymmft evaluate``: ID accuracy and OoD detection metrics of one model, zero-shot or fine-tuned.

Example (built-in data, random tiny model)::

    raymmft evaluate --arch raymmft-tiny \\
        --id 'builtin:shapes?split=test&classes=id' \\
        --ood 'builtin:shapes?split=test&classes=near_ood&name=near' \\
        --ood 'builtin:shapes?split=test&classes=far_ood&name=far' \\
        --scores neglabel,mcm --neg-corpus world --out results.json

Prints a table per score (per OoD set: AUROC, FPR95, AUPR-in, AUPR-out; their mean; ID accuracy)
and writes the same as JSON. The flags fill the config's ``eval`` section (``EvalConfig``), which
holds every rule about their values. With ``--checkpoint``, NegLabel negatives are mined with the
starting model (``--arch``/``--pretrained``) and re-encoded with the checkpoint's weights, as during
training. ``--bootstrap N`` adds 95 % bootstrap intervals to every metric (``raymmft.ood.bootstrap``);
with ``--checkpoint``, ``--compare-start`` also evaluates the starting model and gives the paired
difference checkpoint - start of every metric, with its interval.
"""

from __future__ import annotations

import argparse
import os

from raymmft.errors import ConfigError, ModelError

# flag -> the field of EvalConfig it sets
EVAL_FLAGS = {
    "scores": ("--scores", "scores"),
    "primary_score": ("--primary-score", "ood_score"),
    "templates": ("--template", "templates"),
    "temperature": ("--temperature", "temperature"),
    "batch_size": ("--batch-size", "batch_size"),
    "neg_corpus": ("--neg-corpus", "neglabel.corpus"),
    "neg_eta": ("--neg-eta", "neglabel.eta"),
    "neg_keep_fraction": ("--neg-keep-fraction", "neglabel.keep_fraction"),
    "neg_max": ("--neg-max", "neglabel.max_negatives"),
    "neg_ngroups": ("--neg-ngroups", "neglabel.ngroups"),
    "neg_seed": ("--neg-seed", "neglabel.seed"),
    "neg_exclude": ("--neg-exclude", "neglabel.exclude_categories"),
}


def _default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "raymmft", "neglabel")


def add_arguments(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model")
    model.add_argument("--arch", required=True, help="architecture, e.g. raymmft-tiny or ViT-B-16")
    model.add_argument("--pretrained", help="open_clip pretrained tag or a local weights file")
    model.add_argument(
        "--checkpoint",
        help="raymmft checkpoint directory, its state.pt, or a state dict file; a local path or "
        "a URI (s3://, gs://, file://)",
    )
    model.add_argument(
        "--interpolate",
        type=float,
        metavar="ALPHA",
        help="with --checkpoint: evaluate (1 - ALPHA) * start + ALPHA * checkpoint (WiSE-FT; the "
        "start is --arch/--pretrained/--seed), as a search's interpolated candidates",
    )
    model.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype"
    )
    model.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda:0, ..."
    )
    model.add_argument("--seed", type=int, default=0, help="seed of random initialisation")

    data = p.add_argument_group("data")
    data.add_argument("--id", required=True, dest="id_set", metavar="SPEC", help="ID test set")
    data.add_argument(
        "--ood",
        required=True,
        action="append",
        dest="ood_sets",
        metavar="SPEC",
        help="an OoD set (repeat for several); name it with the spec option name=...",
    )
    data.add_argument("--batch-size", type=int, help="images per batch (eval.batch_size)")

    ood = p.add_argument_group("scores (the config's eval section)")
    ood.add_argument("--scores", help="comma-separated OoD score names (eval.scores)")
    ood.add_argument("--primary-score", help="the score listed first (default: first of --scores)")
    ood.add_argument(
        "--template",
        action="append",
        dest="templates",
        metavar="TEMPLATE",
        help="class prompt template with one {} (repeat to average; default 'a photo of a {}.')",
    )
    ood.add_argument("--temperature", type=float, help="t in f.T/t (default 0.01)")

    neg = p.add_argument_group("NegLabel (eval.neglabel)")
    neg.add_argument("--neg-corpus", help="wordnet, world, world+wordnet:N, or a word file")
    neg.add_argument("--neg-eta", type=float, help="similarity quantile (default 0.95)")
    neg.add_argument("--neg-keep-fraction", type=float, help="fraction kept per kind (0.15)")
    neg.add_argument("--neg-max", type=int, help="at most this many negative labels")
    neg.add_argument("--neg-ngroups", type=int, help="groups (the paper uses 100; default 1)")
    neg.add_argument("--neg-seed", type=int, help="seed of the grouping shuffle")
    neg.add_argument(
        "--neg-exclude",
        action="append",
        metavar="CATEGORY",
        help="exclude a WordNet category, e.g. noun.animal (repeatable)",
    )
    neg.add_argument(
        "--neg-cache",
        default=_default_cache(),
        help="cache of mined negatives ('none' disables; default %(default)s)",
    )

    boot = p.add_argument_group("confidence intervals")
    boot.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="N",
        help="95 %% percentile bootstrap intervals of every metric from N resamples of the ID and "
        "each OoD set (0: none, the default; at least 100; 1000 is usual)",
    )
    boot.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resamples")
    boot.add_argument(
        "--compare-start",
        action="store_true",
        help="with --checkpoint and --bootstrap: also evaluate the starting model (--arch, "
        "--pretrained) and give checkpoint - start of every metric with its interval, both "
        "on the same resamples",
    )

    p.add_argument("--out", help="write the results as JSON to this file (local path or URI)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def eval_settings(args: argparse.Namespace):
    """The ``EvalConfig`` the flags describe; an invalid value is one line naming its flag."""
    from pydantic import ValidationError

    from raymmft.config import EvalConfig, describe_error, set_path

    raw: dict = {}
    for attr, (_, field) in EVAL_FLAGS.items():
        value = getattr(args, attr)
        if value is None:
            continue
        if attr == "scores":
            value = [s.strip() for s in value.split(",") if s.strip()]
        set_path(raw, field, value)
    if "scores" in raw and "ood_score" not in raw and raw["scores"]:
        raw["ood_score"] = raw["scores"][0]
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as err:
        loc, msg = describe_error(err)
        field = loc.split("[", 1)[0]
        flag = next((f for f, name in EVAL_FLAGS.values() if name == field), field)
        raise ConfigError(f"{flag}: {msg}") from None


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` (CUDA when a GPU is visible), ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``, checked against what this machine has before any work."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"--device {name}: only {count} CUDA GPU(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available here; use --device cpu")
    return name


def _parse_spec(text: str, option: str):
    from pydantic import ValidationError

    from raymmft.data import DatasetSpec

    try:
        return DatasetSpec.model_validate(text)
    except (ValidationError, ValueError) as exc:
        errors = getattr(exc, "errors", None)
        reason = errors()[0]["msg"] if errors else str(exc)
        raise ConfigError(f"{option} {text!r}: {reason.removeprefix('Value error, ')}") from None


def check_interpolate(args: argparse.Namespace) -> None:
    """``--interpolate`` needs ``--checkpoint`` and an alpha in [0, 1]."""
    from raymmft.errors import ConfigError

    if args.interpolate is None:
        return
    if not args.checkpoint:
        raise ConfigError("--interpolate needs --checkpoint (the weights interpolated toward)")
    if not 0 <= args.interpolate <= 1:
        raise ConfigError(f"--interpolate must be in [0, 1], got {args.interpolate}")


def check_bootstrap(args: argparse.Namespace) -> None:
    """``--bootstrap``, ``--bootstrap-seed`` and ``--compare-start``, one line naming the flag."""
    from raymmft.config import check_seed
    from raymmft.ood.bootstrap import check_num_resamples

    if args.bootstrap:
        try:
            check_num_resamples(args.bootstrap)
        except ValueError as exc:
            raise ConfigError(f"--bootstrap: {exc} (0 turns the intervals off)") from None
    check_seed(args.bootstrap_seed, "--bootstrap-seed")
    if args.compare_start and not (args.checkpoint and args.bootstrap):
        raise ConfigError(
            "--compare-start: needs --checkpoint (the model compared with the start) and "
            "--bootstrap N"
        )


def run(args: argparse.Namespace) -> int:
    from raymmft.config import check_seed
    from raymmft.storage import check_output

    if args.out:
        check_output(args.out, "--out", directory=False)
    cache = None if args.neg_cache in (None, "", "none") else args.neg_cache
    if cache is not None:
        check_output(cache, "--neg-cache", directory=True)
    check_seed(args.seed, "--seed")
    check_bootstrap(args)
    check_interpolate(args)
    device = resolve_device(args.device)
    settings = eval_settings(args)
    id_spec = _parse_spec(args.id_set, "--id")
    ood_specs = [_parse_spec(text, "--ood") for text in args.ood_sets]
    from raymmft.data.spec import set_names

    try:
        names = set_names(ood_specs)
    except ValueError as exc:
        raise ConfigError(f"--ood: {exc}") from None
    if args.checkpoint:
        from raymmft.checkpoint import state_file

        checkpoint = state_file(args.checkpoint)
        if not checkpoint.is_file():
            raise ModelError(f"checkpoint file not found: {checkpoint}")

    import torch

    from raymmft.checkpoint import load_weights
    from raymmft.data import open_dataset, require_id_classes
    from raymmft.evaluation import Evaluator, format_table, write_json
    from raymmft.model import build_model
    from raymmft.neglabel_corpus import resolve_corpus
    from raymmft.preflight import check_model

    check_model(args.arch, args.pretrained)  # weights that do not load: one line, now
    torch.manual_seed(args.seed)
    bundle = build_model(args.arch, args.pretrained, precision=args.precision, device=device)
    weights = args.pretrained or f"random init (seed {args.seed})"
    checkpoint = f", checkpoint {args.checkpoint}" if args.checkpoint else ""
    print(f"model: {args.arch}, weights {weights}{checkpoint}, on {device}")
    id_set = open_dataset(id_spec, bundle.preprocess_eval)
    require_id_classes(id_set, f"--id {args.id_set!r}")
    classnames = list(id_set.classnames)
    ood_sets = {
        name: open_dataset(spec, bundle.preprocess_eval, id_classnames=classnames)
        for name, spec in zip(names, ood_specs)
    }
    corpus = resolve_corpus(settings.neglabel) if "neglabel" in settings.scores else None
    # the scores' setup (NegLabel's mining) runs with the starting model
    evaluator = Evaluator(
        settings,
        bundle,
        classnames,
        id_set,
        ood_sets,
        device=device,
        corpus=corpus,
        cache=cache,
        out=None if args.no_progress else print,
    )
    start = evaluator.evaluate(bundle.model) if args.compare_start else None
    if args.checkpoint:
        load_weights(bundle.model, args.checkpoint, arch=args.arch, interpolate=args.interpolate)
    result = evaluator.evaluate(bundle.model)
    if args.bootstrap:
        result.add_intervals(
            args.bootstrap, args.bootstrap_seed, reference=start, reference_name="start"
        )
    print(format_table(result))
    if args.out:
        extra = {
            "model": {
                "arch": args.arch,
                "pretrained": args.pretrained,
                "checkpoint": args.checkpoint,
                "precision": args.precision,
            },
            "id_set": str(id_spec),
            "ood_sets": {name: str(spec) for name, spec in zip(names, ood_specs)},
            "eval": settings.model_dump(mode="json"),
        }
        print(f"\nwrote {write_json(result, args.out, extra)}")
    return 0
