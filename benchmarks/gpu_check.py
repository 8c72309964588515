"""GPU check (one H100/H200, under 10 minutes): the CUDA + NCCL path of a Ray Train worker, bf16
training throughput of ViT-B-16, achieved TFLOP/s and MFU, and the CMA loss on GPU against CPU.

1. ``cma_loss_gpu_vs_cpu``: ``raymmft.losses.cma_loss_parts`` and its gradients on the same random
   features (global batch 256, dim 512, float32 and bf16 inputs) on CUDA and on the CPU; the values
   must agree to 1e-4 of their size, the gradients to 1e-4 (float32) or 1e-2 (bf16, one bf16 step).
2. ``throughput``: one Ray Train worker (``ScalingConfig(num_workers=1, use_gpu=True)``; Ray Train
   sets up torch.distributed with NCCL, checked by an all-reduce) runs ``raymmft.finetune.FineTuner``
   steps (the worker loop's own step: ``raymmft.text_tower.TrainingForward`` wrapped by
   ``prepare_model``, the prompts at their real length, CMA loss, AdamW, bf16 autocast) on ViT-B-16
   from random initialisation, batch 256 of random 224-px images already on the GPU (so data loading is out of
   the figure) and ImageNet-1k class prompts. FLOPs per step are counted once with
   ``torch.utils.flop_counter.FlopCounterMode`` (forward + backward of the step; matmuls, convolutions
   and attention), then ``--steps`` steps are timed after ``--warmup``. MFU = achieved TFLOP/s over the
   card's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s; from ``torch.cuda.get_device_name()``).
3. ``worker_loop``: the real trial path, ``raymmft.trial.make_trainer`` (``train_fn_per_worker``,
   the shapes world through the DataLoader, evaluation with MCM) for a few steps of ViT-B-16 at batch
   256 in bf16: its reported ``images_per_s`` includes data loading and CPU-side transforms.
   ``--skip-loop`` leaves it out.

Without a CUDA device the script exits with status 2 and says so. ``--cpu-smoke`` runs the same code
on the CPU with a tiny model (to test this script itself; its figures mean nothing).

    benchmarks/gpu_check.sh                       # on the GPU machine (see docs/performance.md)
    python benchmarks/gpu_check.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

# Dense bf16 tensor-core peaks, TFLOP/s (NVIDIA data sheets, without sparsity).
BF16_PEAK_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)
REQUIRED_MODULES = ("ray", "open_clip", "pydantic", "yaml")


def bf16_peak_tflops(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def _nccl_version() -> str:
    import torch

    try:
        v = torch.cuda.nccl.version()
    except Exception as exc:  # no NCCL in this build: say so in the figures
        return f"unavailable ({type(exc).__name__})"
    return ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def fail(message: str, code: int = 2) -> None:
    print(f"gpu_check: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def check_environment(cpu_smoke: bool) -> None:
    missing = []
    for name in REQUIRED_MODULES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        fail(
            f"missing Python packages: {', '.join(missing)} (carry them as wheels; "
            "see docs/performance.md, 'GPU check')"
        )
    import torch

    if cpu_smoke:
        return
    if not torch.cuda.is_available():
        fail(
            "no CUDA device: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
            "run this on a GPU machine (--cpu-smoke only tests the script)"
        )


# --- 1. the CMA loss on GPU equals its CPU value ------------------------------------------------


def cma_loss_gpu_vs_cpu(device: str, batch: int = 256, dim: int = 512, lam: float = 0.1) -> dict:
    import torch

    from raymmft.losses import cma_loss_parts

    g = torch.Generator().manual_seed(0)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        img = torch.randn(batch, dim, generator=g).to(dtype)
        txt = torch.randn(batch, dim, generator=g).to(dtype)
        scale = torch.tensor(1 / 0.07)
        values, grads = {}, {}
        for where in ("cpu", device):
            i = img.to(where).requires_grad_(True)
            t = txt.to(where).requires_grad_(True)
            parts = cma_loss_parts(i, t, scale.to(where), lam)
            parts.loss.backward()
            values[where] = (
                torch.stack([parts.loss, parts.contrastive, parts.regularizer]).detach().cpu()
            )
            grads[where] = torch.cat([i.grad.float().flatten(), t.grad.float().flatten()]).cpu()
        dv = ((values[device] - values["cpu"]).abs().max() / values["cpu"].abs().max()).item()
        dg = ((grads[device] - grads["cpu"]).abs().max() / grads["cpu"].abs().max()).item()
        # the loss works in float32 whatever the input dtype; bf16 gradients are rounded back to
        # bf16, so a last-bit difference in float32 can move them by one bf16 step (2^-8)
        ok = dv <= 1e-4 and dg <= (1e-4 if dtype == torch.float32 else 1e-2)
        out[str(dtype).removeprefix("torch.")] = {
            "loss_cpu": values["cpu"][0].item(),
            "loss_device": values[device][0].item(),
            "max_rel_diff_values": dv,
            "max_rel_diff_grads": dg,
            "equal": bool(ok),
        }
    out["equal"] = all(v["equal"] for v in out.values() if isinstance(v, dict))
    return out


# --- 2. throughput in a Ray Train worker ----------------------------------------------------------


def throughput_worker(config: dict) -> None:
    """Ray Train worker: NCCL check, FLOP count of one step, timed steps; reports the figures."""
    import logging

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from torch.utils.flop_counter import FlopCounterMode

    from raymmft.config import TrainConfig
    from raymmft.finetune import FineTuner, seed_everything
    from raymmft.model import build_model
    from raymmft.text import imagenet_classnames, tokenize_class_prompts
    from raymmft.text_tower import TrainingForward

    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    device = ray.train.torch.get_device()
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dist_initialized": dist.is_initialized(),
        "dist_backend": dist.get_backend() if dist.is_initialized() else None,
        "torch_threads": torch.get_num_threads(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if dist.is_initialized():
        x = torch.ones(4, device=device)
        dist.all_reduce(x)
        info["all_reduce_ok"] = bool(torch.all(x == dist.get_world_size()).item())
    seed_everything(0)
    t0 = time.perf_counter()
    bundle = build_model(config["arch"], None, temperature=0.07, precision="bf16", device=device)
    info["build_model_s"] = time.perf_counter() - t0
    # as the worker loop: the training forward (both towers, text at its real length), then DDP
    model = ray.train.torch.prepare_model(TrainingForward(bundle.model))
    info["model_wrapper"] = type(model).__name__
    info["parameters_m"] = sum(p.numel() for p in bundle.model.parameters()) / 1e6
    classnames = imagenet_classnames()
    tokens = tokenize_class_prompts(bundle.tokenizer, classnames)
    batch = config["batch"]
    cfg = TrainConfig(lam=0.001, lr=1e-5, weight_decay=0.1, batch_size=batch, precision="bf16")
    tuner = FineTuner(
        model,
        tokens,
        cfg,
        total_steps=10**6,
        device=device,
        autocast_dtype=bundle.autocast_dtype,
    )
    g = torch.Generator(device=device).manual_seed(0)
    size = bundle.image_size
    images = torch.randn(batch, 3, size, size, device=device, generator=g)
    labels = torch.randint(0, len(classnames), (batch,), device=device, generator=g)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(config["warmup"]):
        tuner.train_step(images, labels)
    sync()
    with FlopCounterMode(display=False) as counter:
        tuner.train_step(images, labels)
    sync()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_times = []
    start = time.perf_counter()
    for _ in range(config["steps"]):
        s = time.perf_counter()
        result = tuner.train_step(images, labels)  # .item() inside: each step ends synchronised
        step_times.append(time.perf_counter() - s)
    sync()
    seconds = time.perf_counter() - start
    step_times.sort()
    info.update(
        steps=config["steps"],
        batch=batch,
        seconds=seconds,
        images_per_s=config["steps"] * batch / seconds,
        step_ms_median=1000 * step_times[len(step_times) // 2],
        flops_per_step=flops,
        tflops_per_s=flops * config["steps"] / seconds / 1e12,
        last_loss=result.loss,
        peak_memory_gib=(
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
    )
    # Train V2 keeps a report's metrics only with a checkpoint: the figures travel in one
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "figures.json"), "w") as f:
            json.dump(info, f)
        ray.train.report(info, checkpoint=ray.train.Checkpoint.from_directory(d))


def run_throughput(args, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        throughput_worker,
        train_loop_config={
            "arch": args.arch,
            "batch": args.batch,
            "steps": args.steps,
            "warmup": args.warmup,
        },
        scaling_config=ScalingConfig(num_workers=1, use_gpu=not args.cpu_smoke),
        run_config=RunConfig(name="gpu-check-throughput", storage_path=storage),
    )
    start = time.time()
    metrics = dict(trainer.fit().metrics)
    metrics["trainer_wall_s"] = time.time() - start
    peak = bf16_peak_tflops(metrics["device_name"])
    metrics["bf16_peak_tflops"] = peak
    metrics["mfu"] = metrics["tflops_per_s"] / peak if peak else None
    return metrics


# --- 3. the real worker loop on the GPU -----------------------------------------------------------


def run_worker_loop(args, storage: str) -> dict:
    from raymmft.config import validate_config
    from raymmft.storage import Location
    from raymmft.trial import make_trainer

    steps = 3 if args.cpu_smoke else args.loop_steps
    per_class = max(1, -(-args.batch * steps // 12))  # the shapes world's 12 ID classes
    small = {"uri": "builtin:shapes", "split": "val"}
    raw = {
        "model": {"arch": args.arch, "temperature": 0.07},
        "data": {
            "id_train": {
                "uri": "builtin:shapes",
                "split": "train",
                "classes": "id",
                "per_class": per_class,
            },
            "id_val": small | {"classes": "id", "per_class": 20},
            "ood_val": [small | {"classes": "far_ood", "per_class": 40, "name": "far"}],
            "num_workers": 0 if args.cpu_smoke else 8,
        },
        "train": {
            "epochs": 1,
            "batch_size": args.batch,
            "max_steps_per_epoch": steps,
            "precision": "bf16",
            "lam": 0.001,
            "lr": 1e-5,
        },
        "eval": {"scores": ["mcm"], "ood_score": "mcm"},
        "resources": {
            "num_workers": 1,
            "use_gpu": not args.cpu_smoke,
            "cpus_per_worker": 1 if args.cpu_smoke else 8,
            "max_failures": 0,
        },
        "storage": {"path": storage, "name": "gpu-check-loop"},
    }
    cfg = validate_config(raw, "gpu_check worker-loop config")
    start = time.time()
    result = make_trainer(
        cfg, storage=Location.parse(storage), name="gpu-check-loop", cache=None
    ).fit()
    m = result.metrics
    return {
        "images_per_s": m["images_per_s"],
        "steps": m["step"],
        "train_loss": m["train_loss"],
        "ood_auroc": m["ood_auroc"],
        "trainer_wall_s": time.time() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="ViT-B-16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loop-steps", type=int, default=6, help="steps of the real worker loop")
    p.add_argument("--skip-loop", action="store_true", help="leave out the real worker loop")
    p.add_argument("--cpu-smoke", action="store_true", help="test this script on CPU (tiny model)")
    args = p.parse_args()
    if args.cpu_smoke:
        args.arch, args.batch, args.steps, args.warmup = "raymmft-tiny", 16, 3, 1
    check_environment(args.cpu_smoke)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harness
    import torch

    load_start = harness.loadavg()
    harness.quiet_ray_logs()
    device = "cpu" if args.cpu_smoke else "cuda"
    result: dict = {"settings": vars(args)}
    if not args.cpu_smoke:
        props = torch.cuda.get_device_properties(0)
        result["cuda"] = {
            "device_name": torch.cuda.get_device_name(0),
            "capability": list(torch.cuda.get_device_capability(0)),
            "memory_gib": props.total_memory / 2**30,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "nccl": _nccl_version(),
        }
        print(json.dumps(result["cuda"]), flush=True)
    result["cma_loss_gpu_vs_cpu"] = cma_loss_gpu_vs_cpu(device)
    print(f"CMA loss {device} vs cpu: {json.dumps(result['cma_loss_gpu_vs_cpu'])}", flush=True)

    import ray

    with tempfile.TemporaryDirectory(prefix="raymmft-gpu-check-") as storage:
        ray.init(address="local")
        try:
            result["throughput"] = run_throughput(args, storage)
            t = result["throughput"]
            print(f"throughput: {json.dumps(t)}", flush=True)
            if not args.skip_loop:
                result["worker_loop"] = run_worker_loop(args, storage)
                print(f"worker loop: {json.dumps(result['worker_loop'])}", flush=True)
        finally:
            ray.shutdown()

    t = result["throughput"]
    rows = [
        ("device", t["device_name"]),
        ("torch.distributed backend", t["dist_backend"]),
        ("all-reduce ok", t.get("all_reduce_ok")),
        ("model / params (M)", f"{args.arch} / {t['parameters_m']:.1f}"),
        ("batch, steps timed", f"{t['batch']}, {t['steps']}"),
        ("images/s (synthetic data, bf16)", t["images_per_s"]),
        ("step ms (median)", t["step_ms_median"]),
        ("TFLOP/s achieved", t["tflops_per_s"]),
        ("bf16 peak TFLOP/s", t["bf16_peak_tflops"]),
        ("MFU", t["mfu"]),
        ("peak memory GiB", t["peak_memory_gib"]),
        ("CMA loss GPU == CPU", result["cma_loss_gpu_vs_cpu"]["equal"]),
    ]
    if "worker_loop" in result:
        rows.append(
            ("worker loop images/s (real data path)", result["worker_loop"]["images_per_s"])
        )
    harness.table(["check", "value"], rows, title="GPU check")
    ok = result["cma_loss_gpu_vs_cpu"]["equal"] and (
        args.cpu_smoke or (t["dist_backend"] == "nccl" and t.get("all_reduce_ok"))
    )
    result["ok"] = bool(ok)
    harness.emit("gpu_check", result, load_start=load_start)
    if not ok:
        fail("a check did not pass (see the JSON line)", code=1)


if __name__ == "__main__":
    main()
