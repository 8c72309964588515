"""What the CMA regulariser costs: a training step with lambda > 0 against lambda = 0, and the loss alone.

Two ``FineTuner``s over identical copies of the model, each wrapped as the worker loop wraps it
(``raymmft.text_tower.TrainingForward``: both towers, the class prompts at their real length),
take steps on the same batches, alternating step by step (ABBA order), so both see the same machine
load; the first steps of each are warm-up. Then the loss function alone is timed (forward +
backward from the features of one batch): the whole ``cma_loss`` at lambda = 0 and > 0, and the
regulariser's own operations (row and column logsumexp of the logit matrix, forward + backward).
Note that ``cma_loss_parts`` computes the regulariser's value at lambda = 0 as well (it is reported
as a training metric), so lambda > 0 adds only its backward.

    .venv/bin/python benchmarks/cma_cost.py                          # demo model, batch 60 and 256
    .venv/bin/python benchmarks/cma_cost.py --arch raymmft-small --batch 512
    .venv/bin/python benchmarks/cma_cost.py --quick
"""

from __future__ import annotations

import argparse
import copy
import time

import harness
import torch
import torch.nn.functional as F

from raymmft.config import TrainConfig
from raymmft.finetune import FineTuner, seed_everything
from raymmft.losses import cma_loss
from raymmft.model import build_model
from raymmft.text import tokenize_class_prompts
from raymmft.text_tower import TrainingForward


def batches(bundle, batch: int, num_classes: int, count: int, seed: int = 0):
    """Random images at the model's input size and random labels: the step's cost does not depend
    on pixel values, and this keeps data loading out of the comparison."""
    g = torch.Generator().manual_seed(seed)
    size = bundle.image_size
    return [
        (
            torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, num_classes, (batch,), generator=g),
        )
        for _ in range(count)
    ]


def step_times(args, batch: int) -> dict:
    """Median seconds per step at lambda = 0 and lambda = args.lam, steps interleaved one by one."""
    seed_everything(0)
    bundle = build_model(args.arch, None, temperature=0.07)
    classnames = [f"class {i}" for i in range(args.classes)]
    tokens = tokenize_class_prompts(bundle.tokenizer, classnames)
    data = batches(bundle, batch, args.classes, 4)
    tuners = {}
    for lam in (0.0, args.lam):
        cfg = TrainConfig(lam=lam, lr=1e-4, warmup_steps=0, batch_size=batch)
        tuners[lam] = FineTuner(
            TrainingForward(copy.deepcopy(bundle.model)),
            tokens,
            cfg,
            total_steps=10**6,
            device=torch.device("cpu"),
            autocast_dtype=None,
        )
    times: dict[float, list[float]] = {lam: [] for lam in tuners}
    order = list(tuners)
    for i in range(args.steps + args.warmup):
        images, labels = data[i % len(data)]
        # ABBA order: neither lambda always runs right after the other
        for lam in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            tuners[lam].train_step(images, labels)
            if i >= args.warmup:
                times[lam].append(time.perf_counter() - start)
    return {lam: harness.median(t) for lam, t in times.items()} | {
        "dim": bundle.model.text_projection.shape[-1]
    }


def loss_times(batch: int, dim: int, lam: float, repeats: int) -> dict:
    """Median seconds of forward + backward of the loss alone and of the regulariser alone."""
    g = torch.Generator().manual_seed(1)
    img = torch.randn(batch, dim, generator=g, requires_grad=True)
    txt = torch.randn(batch, dim, generator=g, requires_grad=True)
    scale = torch.tensor(1 / 0.07)

    def whole(lam_):
        loss = cma_loss(img, txt, scale, lam_)
        loss.backward()

    def regulariser_only():
        # the operations lambda > 0 adds to the graph: both logsumexps on the (shared) logits
        f_i, f_t = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        logits = scale * f_i @ f_t.T
        r = -(torch.logsumexp(logits, 1).mean() + torch.logsumexp(logits.T, 1).mean()) / 2
        r.backward()

    def logits_only():
        f_i, f_t = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        (scale * f_i @ f_t.T).sum().backward()

    out = {}
    for name, fn in (
        ("loss_lam0", lambda: whole(0.0)),
        ("loss_lam", lambda: whole(lam)),
        ("regulariser_with_logits", regulariser_only),
        ("logits", logits_only),
    ):
        samples = []
        for i in range(repeats + 3):
            img.grad = txt.grad = None
            start = time.perf_counter()
            fn()
            if i >= 3:
                samples.append(time.perf_counter() - start)
        out[name] = harness.median(samples)
    # the regulariser's own cost: its ops minus the logit matrix they share with the cross-entropy
    out["regulariser"] = max(0.0, out["regulariser_with_logits"] - out["logits"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--arch", default=harness.demo_arch(), help="default: the demo's model")
    p.add_argument("--batch", type=int, nargs="+", default=[60, 256], help="60 is the demo's")
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--steps", type=int, default=40, help="timed steps per lambda")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per lambda first")
    p.add_argument("--loss-repeats", type=int, default=200)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)"
    )
    args = p.parse_args()
    if args.quick:
        args.steps, args.loss_repeats, args.batch = 10, 50, args.batch[:1]
    torch.set_num_threads(args.threads)
    load_start = harness.loadavg()
    rows, results = [], []
    for batch in args.batch:
        steps = step_times(args, batch)
        losses = loss_times(batch, steps["dim"], args.lam, args.loss_repeats)
        step0, step1 = steps[0.0], steps[args.lam]
        r = {
            "arch": args.arch,
            "batch": batch,
            "step_ms_lam0": 1000 * step0,
            "step_ms_lam": 1000 * step1,
            "step_ratio": step1 / step0,
            "loss_ms_lam0": 1000 * losses["loss_lam0"],
            "loss_ms_lam": 1000 * losses["loss_lam"],
            "regulariser_ms": 1000 * losses["regulariser"],
            "loss_share_of_step": losses["loss_lam"] / step1,
            "regulariser_share_of_step": losses["regulariser"] / step1,
            "added_by_lam_share_of_step": max(0.0, losses["loss_lam"] - losses["loss_lam0"])
            / step1,
        }
        results.append(r)
        rows.append(
            (
                batch,
                r["step_ms_lam0"],
                r["step_ms_lam"],
                r["step_ratio"],
                r["loss_ms_lam"],
                100 * r["loss_share_of_step"],
                r["regulariser_ms"],
                100 * r["regulariser_share_of_step"],
            )
        )
        print(f"batch {batch} done, load {harness.loadavg()}", flush=True)
    harness.table(
        [
            "batch",
            "step ms (lam=0)",
            f"step ms (lam={args.lam:g})",
            "ratio",
            "loss ms",
            "loss % step",
            "CMA term ms",
            "CMA term % step",
        ],
        rows,
        title=f"CMA cost, {args.arch}, {args.threads} torch thread(s), medians",
    )
    worst = max(r["regulariser_share_of_step"] for r in results)
    harness.emit(
        "cma_cost",
        {
            "results": results,
            "cma_term_share_max": worst,
            "target_cma_term_share": 0.03,
            "target_met": worst <= 0.03,
            "settings": vars(args),
        },
        load_start=load_start,
    )


if __name__ == "__main__":
    main()
