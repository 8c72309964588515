"""What WiSE-FT interpolation (``eval.interpolation``) adds to an evaluation: a trial's own
evaluation, then its evaluation of three alphas through ``raymmft.loop.Interpolation`` (load the
interpolated weights into the twin model, evaluate it like the trial, sharded the same way), in one
process; the overhead per alpha as a ratio of the trial's own evaluation, measured in the same run.

Two models: the demo's (``search_spaces/demo.yaml``: raymmft-world, its validation sets) and
ViT-B-16 (random init, the demo's data at 224 px, capped at ``--images`` per set, the world corpus).

    .venv/bin/python benchmarks/interpolation_cost.py
    .venv/bin/python benchmarks/interpolation_cost.py --quick        # the demo only
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from raymmft.config import apply_trial_params
from raymmft.config_file import load_config
from raymmft.interpolation import starting_state
from raymmft.loop import Interpolation, evaluator_for, model_of

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
ALPHAS = [0.25, 0.5, 0.75]


def measure(cfg, repeats: int) -> dict:
    torch.manual_seed(0)
    bundle = model_of(cfg)
    start = starting_state(bundle.model)
    with torch.no_grad():  # a "trained" model: the start moved a little
        for p in bundle.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    evaluator = evaluator_for(cfg, bundle, out=None)
    interpolation = Interpolation(start, copy.deepcopy(bundle.model).eval(), ALPHAS)
    evaluator.evaluate(bundle.model)  # warm-up: the text encoder keeps its token ids after it
    own, interp = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        evaluator.evaluate(bundle.model)
        own.append(time.perf_counter() - began)
        began = time.perf_counter()
        interpolation.metrics(cfg, bundle.model, evaluator)
        interp.append(time.perf_counter() - began)
    own_s, interp_s = sorted(own)[len(own) // 2], sorted(interp)[len(interp) // 2]
    return {
        "images": evaluator.num_images,
        "own_eval_s": own_s,
        "per_alpha_s": interp_s / len(ALPHAS),
        "per_alpha_over_own": interp_s / len(ALPHAS) / own_s,
    }


def vit_config(images: int):
    cap = {"num_samples": images}
    cfg = load_config(DEMO)
    data = cfg.data.model_dump(mode="json")
    for key in ("id_val",):
        data[key] = {**data[key], "per_class": None, **cap}
    data["ood_val"] = [{**s, "per_class": None, **cap} for s in data["ood_val"]]
    return apply_trial_params(
        cfg,
        {
            "model.arch": "ViT-B-16",
            "model.pretrained": None,
            "data.id_val": data["id_val"],
            "data.ood_val": data["ood_val"],
            "eval.batch_size": 32,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=64, help="ViT-B-16: images per set")
    parser.add_argument("--quick", action="store_true", help="the demo's model only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    configs = {"demo (raymmft-world)": load_config(DEMO)}
    if not args.quick:
        configs["ViT-B-16 (random init)"] = vit_config(args.images)
    print(f"alphas {ALPHAS}, {args.repeats} repeats (medians), {torch.get_num_threads()} threads")
    print(f"{'model':<24} {'images':>7} {'own eval s':>11} {'per alpha s':>12} {'ratio':>6}")
    for name, cfg in configs.items():
        m = measure(cfg, args.repeats)
        print(
            f"{name:<24} {m['images']:>7} {m['own_eval_s']:>11.3f} {m['per_alpha_s']:>12.3f} "
            f"{m['per_alpha_over_own']:>6.2f}"
        )


if __name__ == "__main__":
    main()
