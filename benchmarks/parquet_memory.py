"""Memory of a ``parquet:`` dataset: the former whole read (every image's encoded bytes in a Python
list, then the epoch) against the streaming dataset (a row index, row groups read on demand through
``build_loader``), each opened and iterated for one epoch in a fresh process, at two sizes.

Prints per approach and size the peak RSS above the process's baseline (libraries loaded), the
growth per row between the two sizes, the old/new ratio, the dataset's index bytes per row and the
epoch's time. Target: growth per row <= 200 B for the streaming dataset.

    .venv/bin/python benchmarks/parquet_memory.py            # 2,000 and 6,000 rows of ~45 KB, ~2 min
    .venv/bin/python benchmarks/parquet_memory.py --rows 1000 3000
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import emit, loadavg, proc_status, run_child, table
from PIL import Image

CLASSES = 10


def write_folder(root: Path, rows: int) -> None:
    """``rows`` distinct noise JPEGs (~45 KB, an ImageNet JPEG is ~110 KB) in ``CLASSES`` folders."""
    rng = np.random.default_rng(0)
    bases = []
    for c in range(CLASSES):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (160, 160 + c, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        bases.append(buffer.getvalue())
        (root / f"class_{c:02d}").mkdir(parents=True)
    for k in range(rows):
        c = k % CLASSES  # distinct bytes: a counter after the JPEG's end, which decoders ignore
        (root / f"class_{c:02d}" / f"{k:06d}.jpg").write_bytes(bases[c] + k.to_bytes(8))


def whole_read(location: str, transform) -> int:
    """The former ``open_parquet``: labels, then every selected image's bytes taken into a list
    (here every row), then one epoch decoded from the list."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    dataset = pads.dataset(location, format="parquet")
    labels = dataset.to_table(columns=["label"]).column("label").to_numpy()
    indices = np.arange(len(labels))
    encoded = dataset.take(pa.array(indices), columns=["image"]).column("image").to_pylist()
    for k in np.random.default_rng(0).permutation(len(encoded)):
        transform(Image.open(io.BytesIO(encoded[k])).convert("RGB"))
    return len(encoded)


def streamed(location: str, transform) -> tuple[int, float]:
    from raymmft.data import build_loader, open_dataset

    dataset = open_dataset(f"parquet:{location}", transform)
    loader = build_loader(dataset, 32, shuffle=True, seed=0, num_workers=0)
    loader.sampler.set_epoch(0)
    for _ in loader:
        pass
    index = (dataset.rows.nbytes + dataset.labels.nbytes) / len(dataset)
    return len(dataset), index, dataset.group_reads


def child(mode: str, location: str) -> None:
    import pyarrow.parquet  # noqa: F401  (the libraries both approaches load, in the baseline)
    import torch  # noqa: F401

    import raymmft.data.loading  # noqa: F401
    import raymmft.data.parquet  # noqa: F401

    def transform(image):
        return image.width  # the decode is the work; no tensor kept

    baseline = proc_status("VmRSS")
    start = time.perf_counter()
    out = {"mode": mode}
    if mode == "whole":
        out["rows"] = whole_read(location, transform)
    else:
        out["rows"], out["index_bytes_per_row"], out["group_reads"] = streamed(location, transform)
    out["seconds"] = time.perf_counter() - start
    out["peak_above_baseline"] = proc_status("VmHWM") - baseline
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs=2, default=[2000, 6000])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from raymmft.data.parquet import imagefolder_to_parquet

    load_start = loadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            folder, shards = Path(tmp) / f"folder{rows}", Path(tmp) / f"shards{rows}"
            write_folder(folder, rows)
            imagefolder_to_parquet(folder, str(shards), rows_per_shard=1000, shuffle_seed=0)
            on_disk = sum(p.stat().st_size for p in shards.glob("*.parquet"))
            for mode in ("whole", "stream"):
                results[(mode, rows)] = {**run_child(__file__, mode, shards), "on_disk": on_disk}
    small, large = args.rows
    rows_out, figures = [], {}
    for mode in ("whole", "stream"):
        a, b = results[(mode, small)], results[(mode, large)]
        growth = (b["peak_above_baseline"] - a["peak_above_baseline"]) / (large - small)
        figures[mode] = {"growth_per_row": growth, "small": a, "large": b}
        for r in (a, b):
            rows_out.append(
                [
                    mode,
                    r["rows"],
                    r["on_disk"] / 2**20,
                    r["peak_above_baseline"] / 2**20,
                    r["peak_above_baseline"] / r["on_disk"],
                    growth,
                    r.get("index_bytes_per_row", "-"),
                    r.get("group_reads", "-"),
                    r["seconds"],
                ]
            )
    table(
        [
            "approach",
            "rows",
            "on disk MB",
            "peak RSS MB",
            "peak/disk",
            "growth B/row",
            "index B/row",
            "group reads",
            "epoch s",
        ],
        rows_out,
        title="one process opens a parquet: set and loads one epoch (num_workers=0)",
    )
    ratio = {
        rows: results[("whole", rows)]["peak_above_baseline"]
        / results[("stream", rows)]["peak_above_baseline"]
        for rows in args.rows
    }
    growth_ratio = figures["whole"]["growth_per_row"] / max(figures["stream"]["growth_per_row"], 1)
    print(
        f"peak RSS old/new: {', '.join(f'{r:.1f}x at {n} rows' for n, r in ratio.items())}; "
        f"growth per row old/new: {growth_ratio:.0f}x "
        f"(target: streaming growth <= 200 B/row: {figures['stream']['growth_per_row']:.0f} B)"
    )
    emit("parquet_memory", {"figures": figures, "peak_ratio": ratio}, load_start=load_start)


if __name__ == "__main__":
    main()
