"""Evaluation on every worker of a trial vs on rank 0 alone: the same model and sets, one worker
against two gloo workers (one thread each, as a trial's workers with one CPU each), both measured in
this run. Each worker encodes its own run of every set's batches and the features are gathered, so
the metrics must be identical. Target: >= 1.6x on this 2-core machine.

It also times the NegLabel negatives' encoding (2,000 WordNet prompts) on the two workers: each its
share of the batches, gathered (what an evaluation does), against every worker encoding all of them.

    .venv/bin/python benchmarks/eval_sharding.py           # ViT-B-16, ~3 min here
    .venv/bin/python benchmarks/eval_sharding.py --quick   # raymmft-small, ~1 min
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from harness import emit, loadavg, median, table

ID_CLASSES = ["red circle", "blue square", "green star", "pink triangle"]
NEGATIVES = 2000  # NegLabel negatives encoded per evaluation (ImageNet: about 10,000)


def _negatives(bundle, evaluator, count: int, repeats: int, world_size: int) -> dict:
    """Encoding ``count`` NegLabel negatives (WordNet nouns in the noun template) once per
    evaluation: each worker its share of the batches, gathered (what ``Evaluator`` does), against
    every worker encoding all of them (all workers at once, as they would)."""
    from raymmft.ood.corpus import load_wordnet_corpus
    from raymmft.ood.embed import CachedTokenizer, TextEncoder

    prompts = [f"a photo of a {w}." for w in load_wordnet_corpus().nouns[:count]]
    shared = evaluator.text_encoder(bundle.model)
    alone = TextEncoder(bundle.model, CachedTokenizer(bundle.tokenizer), rank=0, world_size=1)
    out = {}
    for name, encode in (("shared", shared), ("alone", alone)):
        seconds = []
        for _ in range(repeats + 1):  # the first tokenises (kept after), not counted
            if world_size > 1:
                dist.barrier()
            start = time.perf_counter()
            features = encode(prompts)
            seconds.append(time.perf_counter() - start)
        out[name] = {"seconds": seconds[1:], "features": features}
    return {
        "shared_s": out["shared"]["seconds"],
        "alone_s": out["alone"]["seconds"],
        "max_feature_diff": float(
            (out["shared"]["features"] - out["alone"]["features"]).abs().max()
        ),
    }


def _evaluate(arch: str, images: int, repeats: int, rank: int, world_size: int) -> dict:
    from raymmft.config import EvalConfig
    from raymmft.data import open_dataset
    from raymmft.evaluation import Evaluator
    from raymmft.model import build_model
    from raymmft.world.corpus import world_corpus

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bundle = build_model(arch)
    spec = {"uri": "builtin:shapes", "split": "test"}
    transform = bundle.preprocess_eval
    id_set = open_dataset({**spec, "classes": ID_CLASSES, "num_samples": images}, transform)
    ood = {
        "far": open_dataset({**spec, "classes": "far_ood", "num_samples": images // 2}, transform)
    }
    settings = EvalConfig(scores=["neglabel", "mcm"], batch_size=16, neglabel={"corpus": "world"})
    evaluator = Evaluator(
        settings,
        bundle,
        ID_CLASSES,
        id_set,
        ood,
        rank=rank,
        world_size=world_size,
        corpus=world_corpus("world"),
        out=None,
    )
    seconds = []
    for _ in range(repeats + 1):  # the first is a warm-up, not counted
        if world_size > 1:
            dist.barrier()
        start = time.perf_counter()
        result = evaluator.evaluate(bundle.model)
        seconds.append(time.perf_counter() - start)
    return {
        "seconds": seconds[1:],
        "metrics": result.flat_metrics(),
        "images": evaluator.num_images,
        "negatives": (
            _negatives(bundle, evaluator, NEGATIVES, repeats, world_size)
            if world_size > 1
            else None
        ),
    }


def _worker(rank: int, port: int, out: str, arch: str, images: int, repeats: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(_evaluate(arch, images, repeats, rank, 2), os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=96, help="ID images (OoD: half as many)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="raymmft-small, 400 ID images")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.images = "raymmft-small", 400
    load_start = loadavg()
    one = _evaluate(args.arch, args.images, args.repeats, 0, 1)
    with tempfile.TemporaryDirectory() as out:  # two fresh processes: their first run warms up too
        mp.start_processes(
            _worker,
            args=(_port(), out, args.arch, args.images, args.repeats),
            nprocs=2,
            start_method="spawn",
        )
        two = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]
    one_s = median(one["seconds"])
    two_s = median(max(a, b) for a, b in zip(two[0]["seconds"], two[1]["seconds"]))
    diffs = [abs(two[r]["metrics"][k] - v) for r in (0, 1) for k, v in one["metrics"].items()]
    identical = max(diffs) <= 1e-6
    table(
        ["arch", "images", "1 worker s", "2 workers s", "speedup", "max metric diff"],
        [[args.arch, one["images"], one_s, two_s, one_s / two_s, max(diffs)]],
        title="one evaluation: rank 0 alone vs every worker (target >= 1.6x, identical metrics)",
    )
    negatives = [r["negatives"] for r in two]
    shared_s = median(max(a, b) for a, b in zip(*(n["shared_s"] for n in negatives)))
    alone_s = median(max(a, b) for a, b in zip(*(n["alone_s"] for n in negatives)))
    feature_diff = max(n["max_feature_diff"] for n in negatives)
    table(
        ["negatives", "every worker all s", "each its share s", "ratio", "max feature diff"],
        [[NEGATIVES, alone_s, shared_s, alone_s / shared_s, feature_diff]],
        title="NegLabel negatives on 2 workers: every worker encodes all vs each its share, "
        "gathered",
    )
    emit(
        "eval_sharding",
        {
            "arch": args.arch,
            "images": one["images"],
            "one_worker_s": one_s,
            "two_workers_s": two_s,
            "speedup": one_s / two_s,
            "max_metric_diff": max(diffs),
            "identical_metrics": identical,
            "target_met": one_s / two_s >= 1.6 and identical,
            "negatives": NEGATIVES,
            "negatives_every_worker_all_s": alone_s,
            "negatives_each_its_share_s": shared_s,
            "negatives_max_feature_diff": feature_diff,
        },
        load_start=load_start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
