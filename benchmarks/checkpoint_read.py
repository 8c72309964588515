"""Loading a checkpoint's weights for evaluation: the file memory-mapped (what
``raymmft.checkpoint.load_weights`` does for a local file) against its bytes read and then loaded
from memory (what it did before, and still does for object storage).

It saves a ViT-B-16 (random init) checkpoint with ``raymmft.checkpoint.save_state`` and loads its
weights into a freshly built ViT-B-16, each way in fresh processes (median of 3, the file in the
page cache), timing the load and its peak memory above the built model:

    .venv/bin/python benchmarks/checkpoint_read.py            # ~1 min
    .venv/bin/python benchmarks/checkpoint_read.py --arch raymmft-small
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import emit, loadavg, median, proc_status, run_child, table

REPEATS = 3
MIB = 1024 * 1024


def child(mode: str, directory: str, arch: str) -> None:
    import io

    import torch

    from raymmft.checkpoint import load_weights, state_file
    from raymmft.model import build_model

    torch.set_num_threads(1)
    bundle = build_model(arch)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the build's peak not counted
    base = proc_status("VmRSS")
    start = time.perf_counter()
    if mode == "mapped":
        load_weights(bundle.model, directory, arch=arch)
    else:  # the bytes first, then the tensors from them
        data = state_file(directory).read_bytes()
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        bundle.model.load_state_dict(payload["model"])
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak": proc_status("VmHWM") - base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from raymmft.checkpoint import save_state
    from raymmft.model import build_model

    load_start = loadavg()
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(args.arch).model
        save_state({"model": model.state_dict(), "arch": args.arch, "step": 0}, directory)
        size = (Path(directory) / "model.pt").stat().st_size
        del model
        runs = {mode: [] for mode in ("read whole", "mapped")}
        for _ in range(REPEATS):  # alternating, so that neither runs on a cooler cache
            for mode in runs:
                runs[mode].append(run_child(__file__, mode, directory, args.arch))
    result = {
        mode: {
            "seconds": median(r["seconds"] for r in rs),
            "peak_mib": median(r["peak"] for r in rs) / MIB,
        }
        for mode, rs in runs.items()
    }
    before, after = result["read whole"], result["mapped"]
    table(
        ["weights loaded", "seconds", "peak above the model (MiB)"],
        [[mode, f"{r['seconds']:.3f}", f"{r['peak_mib']:.0f}"] for mode, r in result.items()],
        f"{args.arch}: model.pt of {size / MIB:.0f} MiB, median of {REPEATS} fresh processes",
    )
    speedup = before["seconds"] / after["seconds"]
    print(
        f"mapped: {speedup:.1f}x faster, {before['peak_mib'] - after['peak_mib']:.0f} MiB less "
        "peak memory"
    )
    emit(
        "checkpoint_read",
        {"arch": args.arch, "model_pt_mib": size / MIB, **result, "speedup": speedup},
        load_start=load_start,
    )


if __name__ == "__main__":
    main()
