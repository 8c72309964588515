"""Memory of the preflight's image check: the former check (one future per file: a
``ThreadPoolExecutor(8).map`` over the paths, whose ``chunksize`` threads ignore, a result per file
and the kept indices as a list) against the bounded one (``raymmft.data.imagefolder.
unreadable_images``: chunks of 64, at most 4 chunks a thread in flight, threads from the cores,
progress), each in a fresh process at two file counts.

Each process walks the folder first (the listing, which both keep), then records its RSS, resets
its peak (``/proc/self/clear_refs``) and runs the check. Prints per approach and count the peak RSS
above that baseline, the growth per file between the counts, the old/new ratio and the time.
Target: the bounded check's growth per file ~0 (it must not grow with the file count).

    .venv/bin/python benchmarks/preflight_memory.py                 # 2,000 and 20,000 PNGs, ~1 min
    .venv/bin/python benchmarks/preflight_memory.py --files 5000 50000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import emit, loadavg, proc_status, run_child, table
from PIL import Image

CLASSES = 20


def reset_peak() -> bool:
    """Set VmHWM to the current RSS (Linux >= 4.0), so the peak measured is the check's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def write_folder(root: Path, files: int) -> None:
    """``files`` tiny PNGs (the same bytes: the check's cost per file is what is measured) in
    ``CLASSES`` folders, ImageNet-like names."""
    tiny = root.parent / f"tiny-{files}.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tiny)
    data = tiny.read_bytes()
    for c in range(CLASSES):
        (root / f"n{c:08d}").mkdir(parents=True)
    for k in range(files):
        c = k % CLASSES
        (root / f"n{c:08d}" / f"n{c:08d}_{k:07d}.png").write_bytes(data)


def former_check(paths: list[str]) -> int:
    """The check before issue 26 (``find_unreadable`` and ``open_image_folder`` then)."""
    from raymmft.data.dataset import image_problem

    def check(path):
        return image_problem(path, full_decode=False)

    with ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(check, paths, chunksize=64))
    unreadable = [(p, why) for p, why in zip(paths, problems) if why is not None]
    bad = {p for p, _ in unreadable}
    keep = [k for k, p in enumerate(paths) if p not in bad]
    return len(keep)


def bounded_check(paths: list[str]) -> int:
    """The check ``open_image_folder(..., check=True)`` runs now, with its progress lines."""
    from raymmft.data.imagefolder import unreadable_images
    from raymmft.progress import Progress

    progress = Progress("checking images", len(paths), "images", out=None)
    unreadable = unreadable_images(paths, full_decode=False, progress=progress)
    return len(paths) - len(unreadable)


def child(mode: str, root: str) -> None:
    from raymmft.data.imagefolder import check_threads, list_image_folder

    paths = list_image_folder(root, out=None).paths()  # the listing: kept by both approaches
    baseline = proc_status("VmRSS")
    reset = reset_peak()
    start = time.perf_counter()
    kept = (former_check if mode == "former" else bounded_check)(paths)
    seconds = time.perf_counter() - start
    peak = proc_status("VmHWM") - baseline
    threads = 8 if mode == "former" else check_threads()
    out = {"mode": mode, "files": len(paths), "kept": kept, "seconds": seconds, "peak": peak}
    print(json.dumps({**out, "threads": threads, "peak_reset": reset}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs=2, default=[2000, 20000])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    load_start = loadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for files in args.files:
            root = Path(tmp) / f"folder{files}"
            write_folder(root, files)
            for mode in ("former", "bounded"):
                results[(mode, files)] = run_child(__file__, mode, root)
    small, large = args.files
    rows, figures = [], {}
    for mode in ("former", "bounded"):
        a, b = results[(mode, small)], results[(mode, large)]
        assert a["kept"] == a["files"] and b["kept"] == b["files"]
        growth = (b["peak"] - a["peak"]) / (large - small)
        figures[mode] = {"growth_per_file": growth, "small": a, "large": b}
        for r in (a, b):
            per_file = r["peak"] / r["files"]
            rows.append([mode, r["files"], r["threads"], r["peak"] / 2**20, per_file, growth,
                         r["files"] / r["seconds"]])  # fmt: skip
    table(
        ["check", "files", "threads", "peak RSS MB", "peak B/file", "growth B/file", "files/s"],
        rows,
        title="one process checks every image header of a listed folder (peak above the listing)",
    )
    ratio = {n: results[("former", n)]["peak"] / max(results[("bounded", n)]["peak"], 1)
             for n in args.files}  # fmt: skip
    old, new = figures["former"]["growth_per_file"], figures["bounded"]["growth_per_file"]
    print(
        f"peak RSS old/new: {', '.join(f'{r:.1f}x at {n:,} files' for n, r in ratio.items())}; "
        f"growth per file: {old:,.0f} B old, {new:+,.1f} B new (at 1.38 M files: "
        f"{old * 1.38e6 / 2**30:.1f} GiB old, {max(new, 0.0) * 1.38e6 / 2**20:.0f} MiB new)"
    )
    if not all(r["peak_reset"] for r in results.values()):
        print("note: /proc/self/clear_refs was not writable; peaks include the walk's")
    emit("preflight_memory", {"figures": figures, "peak_ratio": ratio}, load_start=load_start)


if __name__ == "__main__":
    main()
