"""Text at its real length vs the full 77-token context, on ViT-B-16's text tower (random init).

Two measurements, side by side in one process, interleaved (full, cut, full, cut ...):

1. **Encoding WordNet prompts** ("a photo of a {}." over N nouns drawn with a fixed seed): the
   full context (``model.encode_text`` in batches) against ``raymmft.ood.embed.TextEncoder``
   (batches sorted by length, each cut after its longest prompt). Target: >= 5x, with features
   equal to 1e-5 relative.
2. **A training step** (``FineTuner.train_step``, batch 32, CPU): open_clip's own forward (full
   context) against ``text_encoder.TrainingForward`` (the prompts at their real length), the ratio
   as measured.

    .venv/bin/python benchmarks/text_length.py            # ~4 min here
    .venv/bin/python benchmarks/text_length.py --quick    # ~1 min
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from harness import emit, loadavg, median, table


def _wordnet_prompts(n: int, seed: int) -> list[str]:
    from raymmft.ood.corpus import load_wordnet_corpus

    nouns = list(load_wordnet_corpus().nouns)
    return [f"a photo of a {w}." for w in random.Random(seed).sample(nouns, n)]


def encoding(model, tokenizer, prompts: list[str], repeats: int, batch: int) -> dict:
    from raymmft.ood.embed import TextEncoder
    from raymmft.text_tower import token_lengths

    tokens = tokenizer(prompts)
    lengths = token_lengths(model, tokens).float()

    def full() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [F.normalize(model.encode_text(t), dim=-1) for t in tokens.split(batch)]
            )

    def cut() -> torch.Tensor:
        return TextEncoder(model, tokenizer, batch_size=batch)(prompts)

    times = {"full": [], "cut": []}
    for _ in range(repeats):
        for name, fn in (("full", full), ("cut", cut)):
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if name == "full":
                reference = out
            else:
                features = out
    rel = float((features - reference).abs().max() / reference.abs().max())
    full_s, cut_s = median(times["full"]), median(times["cut"])
    return {
        "prompts": len(prompts),
        "context": tokens.shape[1],
        "mean_tokens": float(lengths.mean()),
        "max_tokens": int(lengths.max()),
        "full_s": full_s,
        "cut_s": cut_s,
        "full_prompts_per_s": len(prompts) / full_s,
        "cut_prompts_per_s": len(prompts) / cut_s,
        "speedup": full_s / cut_s,
        "max_rel_diff": rel,
    }


def training_step(bundle, steps: int, batch: int) -> dict:
    from raymmft.config import TrainConfig
    from raymmft.finetune import FineTuner
    from raymmft.text import imagenet_classnames, tokenize_class_prompts
    from raymmft.text_tower import TrainingForward

    classes = imagenet_classnames()
    tokens = tokenize_class_prompts(bundle.tokenizer, classes)
    cfg = TrainConfig(batch_size=batch, lr=1e-5, lam=0.001)
    size = bundle.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=generator)
    labels = torch.randint(0, len(classes), (batch,), generator=generator)
    tuners = {
        "full": FineTuner(
            bundle.model,
            tokens,
            cfg,
            total_steps=10**6,
            device=torch.device("cpu"),
            autocast_dtype=None,
        ),
        "cut": FineTuner(
            TrainingForward(bundle.model),
            tokens,
            cfg,
            total_steps=10**6,
            device=torch.device("cpu"),
            autocast_dtype=None,
        ),
    }
    times = {"full": [], "cut": []}
    for i in range(steps + 1):  # the first pair warms up
        order = ("full", "cut") if i % 2 == 0 else ("cut", "full")
        for name in order:
            start = time.perf_counter()
            tuners[name].train_step(images, labels)
            if i:
                times[name].append(time.perf_counter() - start)
    full_s, cut_s = median(times["full"]), median(times["cut"])
    return {
        "batch": batch,
        "steps": steps,
        "full_step_s": full_s,
        "cut_step_s": cut_s,
        "speedup": full_s / cut_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--prompts", type=int, default=2048, help="WordNet prompts encoded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="training steps timed per side")
    parser.add_argument("--batch", type=int, default=32, help="training batch")
    parser.add_argument("--quick", action="store_true", help="512 prompts, 2 repeats, 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.repeats, args.steps = 512, 2, 2
    load_start = loadavg()
    from raymmft.model import build_model

    torch.manual_seed(0)
    bundle = build_model(args.arch)
    bundle.model.eval()
    enc = encoding(
        bundle.model,
        bundle.tokenizer,
        _wordnet_prompts(args.prompts, 0),
        args.repeats,
        args.text_batch,
    )
    table(
        ["prompts", "mean tokens", "context", "full s", "real length s", "speedup", "max rel diff"],
        [
            [
                enc["prompts"],
                enc["mean_tokens"],
                enc["context"],
                enc["full_s"],
                enc["cut_s"],
                enc["speedup"],
                enc["max_rel_diff"],
            ]
        ],
        title=f"{args.arch} text tower, WordNet prompts (target: >= 5x, diff <= 1e-5)",
    )
    step = training_step(bundle, args.steps, args.batch)
    table(
        ["batch", "full context s/step", "real length s/step", "speedup"],
        [[step["batch"], step["full_step_s"], step["cut_step_s"], step["speedup"]]],
        title=f"{args.arch} training step (CPU, {torch.get_num_threads()} threads)",
    )
    emit(
        "text_length",
        {
            "arch": args.arch,
            "encoding": enc,
            "training_step": step,
            "encoding_target_met": enc["speedup"] >= 5 and enc["max_rel_diff"] <= 1e-5,
        },
        load_start=load_start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
