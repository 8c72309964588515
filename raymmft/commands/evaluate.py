"""``raymmft evaluate``: ID accuracy and OoD detection metrics of one model, zero-shot or fine-tuned.

Example (built-in data, random tiny model)::

    raymmft evaluate --arch raymmft-tiny \\
        --id 'builtin:shapes?split=test&classes=id' \\
        --ood 'builtin:shapes?split=test&classes=near_ood&name=near' \\
        --ood 'builtin:shapes?split=test&classes=far_ood&name=far' \\
        --scores neglabel,mcm --neg-corpus world --out results.json

Prints a table per score (per OoD set: AUROC, FPR95, AUPR-in, AUPR-out; their mean; ID accuracy)
and writes the same as JSON. With ``--checkpoint``, NegLabel negatives are mined with the starting
model (``--arch``/``--pretrained``) and re-encoded with the checkpoint's weights, as during training.
"""

from __future__ import annotations

import argparse
import os

from raymmft.errors import ConfigError, ModelError

DEFAULT_SCORES = "neglabel,mcm,msp,energy"


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
    data.add_argument("--batch-size", type=int, default=256, help="images per batch")

    ood = p.add_argument_group("scores")
    ood.add_argument("--scores", default=DEFAULT_SCORES, help="comma-separated OoD score names")
    ood.add_argument("--primary-score", help="the score listed first (default: first of --scores)")
    ood.add_argument(
        "--template",
        action="append",
        dest="templates",
        metavar="TEMPLATE",
        help="class prompt template with one {} (repeat to average; default 'a photo of a {}.')",
    )
    ood.add_argument("--temperature", type=float, default=0.01, help="t in f.T/t (default 0.01)")

    neg = p.add_argument_group("NegLabel")
    neg.add_argument("--neg-corpus", default="wordnet", help="wordnet, world, or a word file")
    neg.add_argument("--neg-eta", type=float, default=0.95, help="similarity quantile")
    neg.add_argument("--neg-keep-fraction", type=float, default=0.15, help="fraction kept per kind")
    neg.add_argument("--neg-max", type=int, help="at most this many negative labels")
    neg.add_argument("--neg-ngroups", type=int, default=1, help="groups (the paper uses 100)")
    neg.add_argument("--neg-seed", type=int, default=0, help="seed of the grouping shuffle")
    neg.add_argument(
        "--neg-exclude",
        action="append",
        default=[],
        metavar="CATEGORY",
        help="exclude a WordNet category, e.g. noun.animal (repeatable)",
    )
    neg.add_argument(
        "--neg-cache",
        default=_default_cache(),
        help="cache of mined negatives ('none' disables; default %(default)s)",
    )

    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_spec(text: str, option: str):
    from pydantic import ValidationError

    from raymmft.data import DatasetSpec

    try:
        return DatasetSpec.model_validate(text)
    except (ValidationError, ValueError) as exc:
        errors = getattr(exc, "errors", None)
        reason = errors()[0]["msg"] if errors else str(exc)
        raise ConfigError(f"{option} {text!r}: {reason}") from None


def _check_args(args: argparse.Namespace):
    from raymmft.ood.neglabel import NegLabelParams
    from raymmft.ood.scores import get_score

    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    if not scores:
        raise ConfigError("--scores: at least one OoD score is needed")
    for name in scores:
        get_score(name)
    primary = args.primary_score or scores[0]
    get_score(primary)
    if primary not in scores:
        scores.append(primary)
    templates = args.templates or ["a photo of a {}."]
    for template in templates:
        if template.count("{}") != 1:
            raise ConfigError(f"--template must contain exactly one '{{}}', got {template!r}")
    if not args.temperature > 0:
        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    id_spec = _parse_spec(args.id_set, "--id")
    ood_specs = [_parse_spec(text, "--ood") for text in args.ood_sets]
    names = [spec.name or str(spec) for spec in ood_specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"--ood: OoD set '{name}' given twice (name them with name=...)")
    if "neglabel" in scores:
        if not 0 < args.neg_eta <= 1:
            raise ConfigError(f"--neg-eta must be in (0, 1], got {args.neg_eta}")
        if not 0 < args.neg_keep_fraction <= 1:
            raise ConfigError(
                f"--neg-keep-fraction must be in (0, 1], got {args.neg_keep_fraction}"
            )
        if args.neg_ngroups < 1:
            raise ConfigError(f"--neg-ngroups must be at least 1, got {args.neg_ngroups}")
        if args.neg_max is not None and args.neg_max < 1:
            raise ConfigError(f"--neg-max must be at least 1, got {args.neg_max}")
    params = NegLabelParams(
        eta=args.neg_eta,
        keep_fraction=args.neg_keep_fraction,
        max_negatives=args.neg_max,
        exclude_categories=tuple(args.neg_exclude),
        corpus=args.neg_corpus,
        cache_dir=None if args.neg_cache in (None, "", "none") else args.neg_cache,
        ngroups=args.neg_ngroups,
        seed=args.neg_seed,
    )
    if "neglabel" in scores:
        from raymmft.ood.corpus import check_categories

        check_categories(params.exclude_categories)
    return scores, primary, templates, id_spec, dict(zip(names, ood_specs)), params


def run(args: argparse.Namespace) -> int:
    scores, primary, templates, id_spec, ood_specs, params = _check_args(args)
    if args.checkpoint:
        from raymmft.checkpoint import state_file

        checkpoint = state_file(args.checkpoint)
        if not checkpoint.is_file():
            raise ModelError(f"checkpoint file not found: {checkpoint}")

    import torch

    from raymmft.checkpoint import load_weights
    from raymmft.data import build_loader, open_dataset
    from raymmft.evaluate import evaluate, format_table, prepare_negatives, write_json
    from raymmft.model import build_model

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    bundle = build_model(args.arch, args.pretrained, precision=args.precision, device=device)
    progress = not args.no_progress

    id_set = open_dataset(id_spec, bundle.preprocess_eval)
    classnames = list(id_set.classnames)
    id_loader = build_loader(id_set, args.batch_size, shuffle=False, seed=0)
    ood_loaders = {
        name: build_loader(
            open_dataset(spec, bundle.preprocess_eval, id_classnames=classnames),
            args.batch_size,
            shuffle=False,
            seed=0,
        )
        for name, spec in ood_specs.items()
    }

    negatives = None
    if args.checkpoint:
        if "neglabel" in scores:  # mine with the starting model, as the training loop does
            negatives = prepare_negatives(
                bundle.model,
                bundle.tokenizer,
                classnames,
                params,
                device=device,
                autocast_dtype=bundle.autocast_dtype,
                progress=progress,
            )
        load_weights(bundle.model, args.checkpoint, arch=args.arch)

    result = evaluate(
        bundle.model,
        bundle.tokenizer,
        id_loader,
        classnames,
        ood_loaders,
        scores=scores,
        primary_score=primary,
        templates=templates,
        temperature=args.temperature,
        neglabel_params=params,
        negatives=negatives,
        device=device,
        autocast_dtype=bundle.autocast_dtype,
        progress=progress,
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
            "ood_sets": {name: str(spec) for name, spec in ood_specs.items()},
            "templates": list(templates),
            "temperature": args.temperature,
        }
        if "neglabel" in scores:
            extra["neglabel"] = {
                "corpus": args.neg_corpus,
                "eta": params.eta,
                "keep_fraction": params.keep_fraction,
                "max_negatives": params.max_negatives,
                "exclude_categories": list(params.exclude_categories),
                "ngroups": params.ngroups,
                "seed": params.seed,
            }
        path = write_json(result, args.out, extra)
        print(f"\nwrote {path}")
    return 0
