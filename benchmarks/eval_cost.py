"""What one OoD evaluation costs: encode N images, encode the texts once (class prompts and 10,000
NegLabel negatives), and score (NegLabel with grouping, MCM, and the metrics); scoring's share of
the total, and each phase's peak memory.

The images are the built-in shapes world (half ID validation images, half far-OoD), generated before
timing and encoded through the model's eval transform and a DataLoader (``eval.batch_size`` a batch,
no shuffling), as ``raymmft.evaluation.Evaluator`` does. The negatives are 10,000 words drawn
(seeded) from the shipped WordNet corpus with NegLabel's noun and adjective prompts
(``NegLabelConfig.noun_template`` / ``adj_template``): mining, which picks them once per search (the
preparation step) and is cached, is not part of an evaluation (``--mine`` times it too). Texts go
through ``raymmft.ood.embed.TextEncoder``, as in the evaluator: tokenised once per encoder, sorted
by length and encoded at their real length. ``encode_texts`` is a trial's first evaluation (a fresh
encoder: every prompt tokenised); the evaluator keeps the prompts' token ids after it
(``CachedTokenizer``), so ``encode_texts_cached_ids`` is the text encoding from then on. Scoring is
``raymmft.evaluation.evaluate_embeddings`` with ``EvalConfig.score_params``. Each phase runs
``--repeats`` times; medians.

Memory: ``peak_rss_mib`` is the process's resident-set high-water mark during the phase (Linux
``/proc/self/clear_refs`` resets it before each phase; where that is not allowed, the figure is
``getrusage``'s peak so far, flagged ``rss_reset: false``), also given over the RSS at the phase's
start; ``python_peak_mib`` is tracemalloc's peak in one extra, untimed pass (tracemalloc slows the
pure-Python tokenizer several times over); it sees numpy and Python allocations but not torch's CPU
allocator.

    .venv/bin/python benchmarks/eval_cost.py                 # N = 2000, 10,000 negatives
    .venv/bin/python benchmarks/eval_cost.py --images 10000 --arch raymmft-small
    .venv/bin/python benchmarks/eval_cost.py --quick
"""

from __future__ import annotations

import argparse
import random
import resource
import time
import tracemalloc
from contextlib import contextmanager

import harness
import torch
from torch.utils.data import DataLoader

from raymmft.config import EvalConfig, NegLabelConfig
from raymmft.data import open_dataset
from raymmft.evaluation import evaluate_embeddings
from raymmft.model import build_model
from raymmft.ood.corpus import load_wordnet_corpus
from raymmft.ood.embed import CachedTokenizer, TextEncoder, class_text_features, encode_images
from raymmft.ood.scores import mcm_score, neglabel_score
from raymmft.text import class_prompts


def _status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``); None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def phase(record: dict, name: str, *, trace: bool):
    """Run a block under ``record[name]``: without ``trace``, its seconds and peak RSS; with
    ``trace``, tracemalloc's peak only (tracemalloc slows Python code such as the tokenizer several
    times over, so a traced pass is never timed)."""
    entry = record.setdefault(
        name, {"seconds": [], "peak_rss_mib": 0.0, "rss_before_mib": None, "python_peak_mib": 0.0}
    )
    if trace:
        tracemalloc.start()
        try:
            yield
        finally:
            entry["python_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        return
    reset = _reset_hwm()
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        hwm = _status_kib("VmHWM") if reset else None
        peak_kib = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        entry["seconds"].append(seconds)
        entry["peak_rss_mib"] = max(entry["peak_rss_mib"], peak_kib / 1024)
        if before is not None and entry["rss_before_mib"] is None:
            entry["rss_before_mib"] = before / 1024
        entry["rss_reset"] = reset and hwm is not None


def negative_prompts(settings: NegLabelConfig, count: int, seed: int = 0) -> list[str]:
    """``count`` WordNet words with NegLabel's prompts (``settings``' noun and adjective templates),
    nouns and adjectives in corpus proportion."""
    corpus = load_wordnet_corpus(())
    words = [(w, settings.noun_template) for w in corpus.nouns] + [
        (w, settings.adj_template) for w in corpus.adjectives
    ]
    random.Random(seed).shuffle(words)
    if count > len(words):
        raise SystemExit(f"the WordNet corpus has {len(words)} words, fewer than {count}")
    return [template.format(w) for w, template in words[:count]]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="N = 500, 1 repeat")
    p.add_argument("--images", type=int, default=2000, help="N: half ID, half far-OoD")
    p.add_argument("--negatives", type=int, default=10_000)
    p.add_argument("--ngroups", type=int, default=100, help="NegLabel groups (the paper's 100)")
    p.add_argument("--arch", default=harness.demo_arch(), help="default: the demo's model")
    p.add_argument("--eval-batch", type=int, default=256, help="the config's eval.batch_size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mine", action="store_true", help="also time NegLabel mining over WordNet")
    args = p.parse_args()
    if args.quick:
        args.images, args.repeats = 500, 1
    torch.set_num_threads(args.threads)
    load_start = harness.loadavg()

    torch.manual_seed(0)
    bundle = build_model(args.arch, None, temperature=0.07)
    model, tokenizer = bundle.model, bundle.tokenizer
    n_id = args.images // 2
    id_set = open_dataset(
        {"uri": "builtin:shapes", "split": "val", "classes": "id", "num_samples": n_id},
        bundle.preprocess_eval,
    )
    classnames = id_set.classnames
    ood_set = open_dataset(
        {
            "uri": "builtin:shapes",
            "split": "val",
            "classes": "far_ood",
            "num_samples": args.images - n_id,
        },
        bundle.preprocess_eval,
        id_classnames=classnames,
    )
    settings = EvalConfig(
        scores=["neglabel", "mcm"],
        ood_score="neglabel",
        temperature=0.01,
        templates=["a photo of a {}."],
        batch_size=args.eval_batch,
        neglabel=NegLabelConfig(ngroups=args.ngroups),
    )
    neg_prompts = negative_prompts(settings.neglabel, args.negatives)
    id_loader = DataLoader(id_set, batch_size=settings.batch_size, shuffle=False)
    ood_loader = DataLoader(ood_set, batch_size=settings.batch_size, shuffle=False)

    def text_encoder(tok) -> TextEncoder:
        # as Evaluator.text_encoder: the default text batch size, the model's autocast dtype
        return TextEncoder(model, tok, "cpu", autocast_dtype=bundle.autocast_dtype)

    # what a trial's evaluator does from its second evaluation on: the prompts' ids are kept
    cached_ids = CachedTokenizer(tokenizer)
    cached_encoder = text_encoder(cached_ids)
    class_text_features(cached_encoder, classnames, settings.templates)
    cached_encoder(neg_prompts)

    record: dict = {}
    # timed repeats, then one traced pass for Python-side peaks
    for r in range(args.repeats + 1):
        trace = r == args.repeats
        with phase(record, "encode_images", trace=trace):
            id_feats, id_labels, _ = encode_images(
                model, id_loader, autocast_dtype=bundle.autocast_dtype
            )
            ood_feats, _, _ = encode_images(model, ood_loader, autocast_dtype=bundle.autocast_dtype)
        with phase(record, "encode_texts", trace=trace):
            # a fresh encoder (no ids kept): a trial's first evaluation
            encoder = text_encoder(tokenizer)
            class_feats = class_text_features(encoder, classnames, settings.templates)
            neg_feats = encoder(neg_prompts)
        with phase(record, "encode_texts_cached_ids", trace=trace):
            class_text_features(cached_encoder, classnames, settings.templates)
            cached_encoder(neg_prompts)
        with phase(record, "of_which_tokenize", trace=trace):
            # what encode_texts spends in open_clip's (pure-Python) tokenizer: one call over the new
            # prompts of each encoder call, as CachedTokenizer makes it
            tokenizer(class_prompts(classnames, settings.templates))
            tokenizer(neg_prompts)
        all_feats = torch.cat([id_feats, ood_feats])
        with phase(record, "score_neglabel", trace=trace):
            neglabel_score(all_feats, class_feats, neg_feats, ngroups=args.ngroups)
        with phase(record, "score_mcm", trace=trace):
            mcm_score(all_feats, class_feats)
        with phase(record, "score_and_metrics", trace=trace):
            evaluate_embeddings(
                id_feats,
                id_labels,
                class_feats,
                {"far": ood_feats},
                scores=settings.scores,
                primary_score=settings.ood_score,
                params=settings.score_params,
                inputs={"neglabel": {"neg_text_features": neg_feats}},
            )
        if not trace:
            print(f"repeat {r + 1}/{args.repeats} done, load {harness.loadavg()}", flush=True)
    if args.mine:
        from raymmft.neglabel_corpus import resolve_corpus
        from raymmft.ood.neglabel import mine_negative_labels

        mining = NegLabelConfig(corpus="wordnet")  # NegLabel's defaults over the WordNet corpus
        with phase(record, "neglabel_mining_once", trace=False):
            # as the Evaluator's NegLabel setup: a fresh encoder of the starting model, no cache
            mined = mine_negative_labels(
                text_encoder(tokenizer),
                classnames,
                resolve_corpus(mining),
                mining,
                id_templates=settings.templates,
            )
        record["neglabel_mining_once"]["negatives"] = len(mined)

    med = {name: harness.median(entry["seconds"]) for name, entry in record.items()}
    total = med["encode_images"] + med["encode_texts"] + med["score_and_metrics"]
    share = med["score_and_metrics"] / total
    total_cached = med["encode_images"] + med["encode_texts_cached_ids"] + med["score_and_metrics"]
    share_cached = med["score_and_metrics"] / total_cached
    rows = []
    for name in (
        "encode_images",
        "encode_texts",
        "of_which_tokenize",
        "encode_texts_cached_ids",
        "score_neglabel",
        "score_mcm",
        "score_and_metrics",
        "neglabel_mining_once",
    ):
        if name not in record:
            continue
        e = record[name]
        part = 100 * med[name] / total if name != "neglabel_mining_once" else float("nan")
        if name == "encode_texts_cached_ids":  # an alternative to encode_texts, not a part of it
            part = 100 * med[name] / total_cached
        rows.append(
            (
                name,
                med[name],
                part,
                e["peak_rss_mib"],
                e["peak_rss_mib"] - (e["rss_before_mib"] or 0.0),
                e["python_peak_mib"],
            )
        )
    harness.table(
        [
            "phase",
            "seconds (median)",
            "% of evaluation",
            "peak RSS MiB",
            "peak over start MiB",
            "python peak MiB",
        ],
        rows,
        title=(
            f"evaluation cost: {args.arch}, {args.images} images, {args.negatives} negatives "
            f"({args.ngroups} groups), {len(classnames)} classes, {args.threads} thread(s)"
        ),
    )
    print(
        f"scoring (NegLabel + MCM + metrics) share of evaluation: {100 * share:.2f} % (target <= 10 %)"
    )
    print(
        f"from a trial's second evaluation on (token ids kept): text encoding "
        f"{med['encode_texts_cached_ids']:.3f} s vs {med['encode_texts']:.3f} s, "
        f"scoring share {100 * share_cached:.2f} %"
    )
    harness.emit(
        "eval_cost",
        {
            "seconds": med,
            "evaluation_total_s": total,
            "scoring_share": share,
            "evaluation_total_cached_ids_s": total_cached,
            "scoring_share_cached_ids": share_cached,
            "target_scoring_share": 0.10,
            "target_met": share <= 0.10,
            "phases": record,
            "num_classes": len(classnames),
            "settings": vars(args),
        },
        load_start=load_start,
    )


if __name__ == "__main__":
    main()
