"""ImageNet shape: a whole `raymmft search` on an ImageNet-shaped input, as a folder and as its
Parquet copy, with every process's memory sampled (issue 26).

It builds 1,000 WNID-named class folders of N JPEGs of 400x350 each for training (open_clip's
ImageNet class names come with the WNIDs), N/5 per class for ID validation and two OoD folders
(20 classes of 4N each), for two sizes N; converts each set to Parquet with `raymmft
convert-parquet`; writes a config of its own (ViT-B-16, random init, bf16, 2 workers of one CPU,
one DataLoader process each, 2 training steps, evaluation sets capped) and runs `raymmft search` on
each input and size, after one unmeasured warm-up search that mines NegLabel's negatives into the
cache every measured search reads. A sampler reads the RSS of every process under the command
(/proc; of a DataLoader process and of the fork server it starts from, its private memory) every 0.25 s; the command's own lines,
timed, mark the phases; a `sitecustomize` on PYTHONPATH (`benchmarks/imagenet_shape_hooks/`)
counts the scans of each dataset's class folders. Then the chosen checkpoint's test evaluation (the
search's last step, `evaluate_remote`; its sets' caps x 3, `--final-scale`) runs on 1 and on 2
workers, twice each in alternating order (`--final-repeats`; the medians are compared), and each process kind's data path runs alone in a fresh process per size (the whole
searches' peaks hold ViT-B-16 and vary by tens of MB from run to run, more than 200 B x the files
between the sizes), the driver's storing of a listing at 0.1 M and 1.3 M synthetic names.

Printed: per phase the time and the peak memory of each kind of process, for both inputs at the
larger size; the growth of every peak per image file between the two sizes, and the data path's
alone; a linear extrapolation of both to ImageNet-1k's 1.38 M files; the listings per phase; the
final evaluation on 1 and 2 workers; and the targets, side by side:

- Parquet's peak memory of every raymmft process <= 1.5x the ImageFolder run's;
- growth per image file <= 200 B in every process kind (its data path alone);
- the final evaluation on 2 workers >= 1.6x faster than on 1, with identical metrics;
- no search lists a dataset more than once.

    .venv/bin/python benchmarks/imagenet_shape.py                  # N = 5 and 25, ~45 min here
    .venv/bin/python benchmarks/imagenet_shape.py --sizes 2 5      # smaller
    .venv/bin/python benchmarks/imagenet_shape.py --keep DIR       # keep the data and results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from harness import emit, loadavg, proc_status, run_child, table, wait_for_ray_free

HOOKS = Path(__file__).resolve().parent / "imagenet_shape_hooks"
RAYMMFT = Path(sys.executable).parent / "raymmft"
CLASSES = 1000
OOD_CLASSES = 20
WIDTH, HEIGHT = 400, 350
SETS = ("train", "val", "ood_a", "ood_b")
# what the search evaluates: capped, so that a search takes minutes on 2 CPU cores
CAPS = {"val": 96, "ood_a": 48, "ood_b": 96}
SAMPLE_S = 0.25
# NegLabel's mining cache beside the experiments (raymmft.trial.cache_location): every measured
# search reads the negatives a warm-up search mined, so no phase of one search mines and of
# another reads (mining costs the same at any N; eval_cost.py --mine measures it)
CACHE = ".raymmft_cache"
GIB = 2**30
MIB = 2**20

# The command's lines that start each phase, in order (the first line matching each); a phase
# ends where the next starts, the last at the command's exit.
PHASES = (
    # from the command's start: the input checks, the preflight and listings, the lease, Ray's start
    ("preflight", None),
    ("preparation start", re.compile(r"^cluster: ")),  # the preparation's worker group starts
    ("preparation", re.compile(r"preparing the search")),  # mining, zero-shot evaluation
    ("trials", re.compile(r"zero-shot starting model: ")),  # a worker's line, forwarded
    ("final evaluation", re.compile(r"^  checkpoint: ")),
    ("report", re.compile(r"on the OoD \*test\* sets")),
)
# ImageNet-1k as the paper's search sees it: 1,281,167 training and 50,000 validation images, four
# OoD test sets of about 10,000 (MOS) and an OoD validation set of about 10,000
IMAGENET_FILES = 1_281_167 + 50_000 + 4 * 10_000 + 10_000


# --- the data ------------------------------------------------------------------------------------


def _image(seed: int, path: str) -> int:
    """A 400x350 JPEG of smooth colour fields plus fine noise (about 25-40 KB, like a photo)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.BICUBIC), np.int16)
    fine = rng.normal(0, 12, size=(HEIGHT, WIDTH, 3))
    pixels = np.clip(field + fine, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=85)
    return os.path.getsize(path)


def _counts(n: int) -> dict[str, tuple[int, int]]:
    """Per set: (class folders, images per folder)."""
    return {
        "train": (CLASSES, n),
        "val": (CLASSES, max(1, n // 5)),
        "ood_a": (OOD_CLASSES, 4 * n),
        "ood_b": (OOD_CLASSES, 4 * n),
    }


def _folder_names(kind: str, classes: int) -> list[str]:
    if kind in ("train", "val"):  # WNID-shaped: raymmft names them with open_clip's ImageNet names
        return [f"n{10_000_000 + 7919 * k:08d}" for k in range(classes)]
    return [f"{kind}_{k:02d}" for k in range(classes)]


def build_folders(root: Path, largest: int) -> int:
    """The sets for N = ``largest`` under ``root/<largest>/``; returns the bytes of images."""
    base = root / str(largest)
    jobs = []
    for kind, (classes, per) in _counts(largest).items():
        for c, folder in enumerate(_folder_names(kind, classes)):
            (base / kind / folder).mkdir(parents=True, exist_ok=True)
            for k in range(per):
                seed = SETS.index(kind) * 10**9 + c * 10**4 + k
                jobs.append((seed, str(base / kind / folder / f"{folder}_{k}.JPEG")))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        seeds, paths = zip(*jobs)
        return sum(pool.map(_image, seeds, paths, chunksize=256))


def link_smaller(root: Path, largest: int, n: int) -> None:
    """The sets for N = ``n`` as hard links to the first images of the largest."""
    for kind, (classes, per) in _counts(n).items():
        for folder in _folder_names(kind, classes):
            (root / str(n) / kind / folder).mkdir(parents=True, exist_ok=True)
            for k in range(per):
                name = f"{folder}_{k}.JPEG"
                os.link(
                    root / str(largest) / kind / folder / name, root / str(n) / kind / folder / name
                )


def convert(root: Path, n: int) -> None:
    """Each set of size ``n`` as Parquet (`raymmft convert-parquet`; training shuffled)."""
    for kind in SETS:
        order = [] if kind == "train" else ["--keep-order"]
        subprocess.run(
            [
                str(RAYMMFT),
                "convert-parquet",
                str(root / str(n) / kind),
                str(root / f"{n}-parquet" / kind),
                *order,
            ],
            check=True,
            capture_output=True,
        )


def files_of(n: int) -> int:
    return sum(c * p for c, p in _counts(n).values())


# --- one search ----------------------------------------------------------------------------------


def write_config(path: Path, data: Path, kind: str, results: Path) -> None:
    def spec(name: str) -> str:
        uri = f"{kind}:{data / name}"
        return {"uri": uri, "num_samples": CAPS[name]} if name in CAPS else uri

    cfg = {
        "model": {"arch": "ViT-B-16"},
        "data": {
            "id_train": spec("train"),
            "id_val": spec("val"),
            "ood_val": [spec("ood_a")],
            "ood_test": [spec("ood_b")],
            "num_workers": 1,
        },
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "max_steps_per_epoch": 2,
            "precision": "bf16",
            "lr": 1e-5,
        },
        "eval": {
            "batch_size": 16,
            "neglabel": {"corpus": "world+wordnet:2000"},
            "bootstrap_resamples": 200,
        },
        "search": {
            "space": {"train.lam": {"uniform": [0.0, 1.0]}},
            "num_samples": 1,
            "scheduler": "fifo",
        },
        "resources": {"num_workers": 2, "cpus_per_worker": 1},
        "storage": {"path": str(results)},
    }
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML


def _children() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return out


def _rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _private(pid: int) -> int | None:
    """The memory only this process maps (Private_Clean + Private_Dirty): what a forked DataLoader
    process adds, where its RSS also counts the pages it shares with its parent."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    return 1024 * sum(
        int(line.split()[1]) for line in text.splitlines() if line.startswith("Private_")
    )


def _title(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


LOADERS = ("loader process", "loader server")  # sampled by their private memory
SERVER = "raymmft.data.loading"  # in the command line of the loaders' fork server and its children

SYSTEM = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env", "agent")


def role(pid: int, root: int, parents: dict[int, int], titles: dict[int, str]) -> str:
    """The kind of process: the command's driver, a training/evaluation worker, its DataLoader
    process, a trial's driver, the Train controller, Ray's own processes, or an idle worker."""
    if pid == root:
        return "driver"
    title = titles[pid]
    if SERVER in title:  # loaders start from a fork server of their worker (its preload names it)
        parent = titles.get(parents.get(pid, 0), "")
        return "loader process" if SERVER in parent else "loader server"
    if "RayTrainWorker" in title:  # a loader forked from its worker (before the fork server)
        parent = titles.get(parents.get(pid, 0), "")
        return "loader process" if "RayTrainWorker" in parent else "train worker"
    if title.startswith("ray::IDLE") or "default_worker.py" in title:  # not yet given a task
        return "ray idle worker"
    if any(s in title for s in SYSTEM):
        return "ray system"
    if "TrainController" in title:
        return "train controller"
    if "_Inner" in title or "ImplicitFunc" in title:  # Tune's trial actor: the trial's driver
        return "trial driver"
    if title.startswith("ray::"):
        return "ray actor"
    return "other"


class Sampler(threading.Thread):
    """Every ``SAMPLE_S``: (time, role, pid, bytes) of every process under ``root``: its RSS, or
    for a DataLoader process its private memory."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.samples, self.stop = root, [], threading.Event()

    def run(self) -> None:
        titles: dict[int, str] = {}
        while not self.stop.is_set():
            now = time.time()
            parents = _children()
            below = {self.root}
            changed = True
            while changed:  # the descendants of root
                changed = False
                for pid, ppid in parents.items():
                    if ppid in below and pid not in below:
                        below.add(pid)
                        changed = True
            for pid in below:
                titles[pid] = _title(pid)  # Ray workers change their title as they change role
            for pid in below:
                kind = role(pid, self.root, parents, titles)
                # its RSS would count the pages it shares with its fork server (the imports)
                rss = _private(pid) if kind in LOADERS else _rss(pid)
                if rss is not None:
                    self.samples.append((now, kind, pid, rss))
            self.stop.wait(SAMPLE_S)


def run_search(config: Path, name: str, walks: Path, roots: list[Path], workdir: Path) -> dict:
    """`raymmft search CONFIG --name NAME` from ``workdir``: its timed lines, its processes'
    samples, its walks of ``roots``."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(HOOKS), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "RAYMMFT_BENCH_WALKS": str(walks),
        "RAYMMFT_BENCH_ROOTS": os.pathsep.join(str(r) for r in roots),
    }
    wait_for_ray_free()
    start = time.time()
    proc = subprocess.Popen(
        [str(RAYMMFT), "search", str(config), "--name", name],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append((time.time(), line.rstrip("\n")))
    rc = proc.wait()
    end = time.time()
    sampler.stop.set()
    sampler.join()
    if rc != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise SystemExit(f"raymmft search {config} exited {rc}:\n{tail}")
    return {
        "start": start,
        "end": end,
        "lines": lines,
        "samples": sampler.samples,
        "walks_log": str(walks),
    }


def phases(run: dict) -> list[tuple[str, float, float]]:
    """(phase, start, end) from the command's lines."""
    starts = [(PHASES[0][0], run["start"])]
    for name, pattern in PHASES[1:]:
        at = next((t for t, text in run["lines"] if pattern.search(text)), None)
        if at is None:
            raise SystemExit(f"no line marks the phase '{name}' ({pattern.pattern})")
        starts.append((name, at))
    ends = [t for _, t in starts[1:]] + [run["end"]]
    return [(name, s, e) for (name, s), e in zip(starts, ends)]


def peaks(run: dict) -> dict[tuple[str, str], int]:
    """(phase, role) -> the largest RSS of one process of that role in that phase."""
    out: dict[tuple[str, str], int] = {}
    spans = phases(run)
    for t, kind, _, rss in run["samples"]:
        for name, s, e in spans:
            if s <= t < e:
                key = (name, kind)
                out[key] = max(out.get(key, 0), rss)
    return out


def walk_counts(run: dict) -> dict[tuple[str, str], float]:
    """(phase, dataset) -> its listings in that phase: the scans of its class folders over its
    number of class folders (a whole walk is 1; the class names alone, a scan of the root, 0)."""
    scans: dict[tuple[str, str], int] = {}
    if not Path(run["walks_log"]).exists():
        return {}
    spans = phases(run)
    for line in Path(run["walks_log"]).read_text().splitlines():
        t, _, root, kind = line.split(" ")
        if kind != "class":
            continue
        for name, s, e in spans:
            if s <= float(t) < e:
                key = (name, Path(root).name)
                scans[key] = scans.get(key, 0) + 1
    classes = {kind: c for kind, (c, _) in _counts(1).items()}
    return {(phase, root): n / classes[root] for (phase, root), n in scans.items()}


# --- the data path alone, per process kind -------------------------------------------------------
#
# A whole search's peaks hold ViT-B-16 (2-5 GB a worker) and vary by tens of MB from run to run,
# more than 200 B x the 27,200 files between the sizes. So each process kind's data path is also
# measured alone, in a fresh process per size: the driver's preflight (the header check and the
# listings) and the listings' storing, and a training worker's datasets (from the stored listings, as a trial opens them)
# with 4 batches of the training loader (rank 0 of 2). Peak (VmHWM) and kept (VmRSS) above the
# process's memory after its imports.


DATA_PATH_REPEATS = 3  # fresh processes per figure; the median (the allocators' pages vary)


STORED_SIZES = (100_000, 1_300_000)  # synthetic listings stored (ImageNet-1k: 1.28 M files)


def store_child(files: int) -> None:
    """Store a listing of ``files`` ImageNet-like names, as the driver stores each ImageFolder's:
    the memory it takes above what the process held (its own peak, reset first)."""
    import numpy as np

    from raymmft.data.dataset import PackedNames
    from raymmft.data.imagefolder import ImageFolderListing
    from raymmft.data.listing import write_listing

    folders = [f"n{10_000_000 + 7919 * c:08d}" for c in range(CLASSES)]
    names = PackedNames.of(
        f"{folders[k % CLASSES]}/{folders[k % CLASSES]}_{k // CLASSES}.JPEG" for k in range(files)
    )
    listing = ImageFolderListing(
        "/data/train", tuple(folders), names, (np.arange(files) % CLASSES).astype(np.int32)
    )
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = proc_status("VmRSS")
    with tempfile.TemporaryDirectory() as out:
        write_listing(listing, f"{out}/train.parquet")
    peak, kept = proc_status("VmHWM") - base, proc_status("VmRSS") - base
    print(json.dumps({"peak": peak, "kept": kept}))


def child(mode: str, config: str, listings: str) -> None:
    if mode == "store":
        return store_child(int(config))
    import open_clip  # noqa: F401  (imported before the baseline, as in every worker)
    import PIL.Image  # noqa: F401

    from raymmft.config_file import load_config
    from raymmft.data import build_loader, open_dataset
    from raymmft.data.listing import data_specs, stored_listings
    from raymmft.model import build_model
    from raymmft.preflight import preflight

    cfg = load_config(config, [])
    transform = build_model("raymmft-tiny").preprocess_train if mode == "worker" else None
    stored = stored_listings(data_specs(cfg.data), listings) if mode == "worker" else None
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the imports' peak not counted
    base = proc_status("VmRSS")
    if mode == "driver":  # the preflight: headers checked, folders listed
        preflight(cfg)
    else:
        train = open_dataset(cfg.data.id_train, transform, listings=stored)
        for spec in [cfg.data.id_val, *cfg.data.ood_val, *cfg.data.ood_test]:
            open_dataset(spec, transform, id_classnames=train.classnames, listings=stored)
        loader = build_loader(
            train, 4, shuffle=True, seed=0, rank=0, world_size=2, num_workers=cfg.data.num_workers
        )
        for k, _ in enumerate(loader):
            if k == 3:
                break
    peak, kept = proc_status("VmHWM") - base, proc_status("VmRSS") - base
    out = {"peak": peak, "kept": kept}
    if mode == "worker":  # its loader process (a child of the fork server, a child of this one)
        parents = _children()
        servers = {pid for pid, parent in parents.items() if parent == os.getpid()}
        loaders = [pid for pid, parent in parents.items() if parent in servers]
        out["loader"] = max(_private(pid) or 0 for pid in loaders)
    print(json.dumps(out))


def data_path(work: Path, data: Path, sizes: tuple[int, int]) -> dict:
    """``{(kind of input, process, N): {"peak": B, "kept": B}}`` from fresh processes, the two
    sizes (and the two stored listings) interleaved, so that a drift of the machine's state
    between repeats falls on both sides of a difference."""
    from raymmft.config_file import load_config
    from raymmft.data.listing import data_specs, write_listings

    runs = {}
    for n in sizes:
        for kind in ("imagefolder", "parquet"):
            folder = data / (str(n) if kind == "imagefolder" else f"{n}-parquet")
            config = work / f"data-{kind}-{n}.yaml"
            write_config(config, folder, kind, work / "results")
            listings = work / f"listings-{kind}-{n}"
            shutil.rmtree(listings, ignore_errors=True)
            write_listings(data_specs(load_config(str(config), []).data), str(listings))
            for mode in ("driver", "worker"):
                runs[(kind, mode, n)] = (mode, config, listings)
    for files in STORED_SIZES:  # the driver stores each listing: measured where it is large
        runs[("imagefolder", "store", files)] = ("store", files, "-")
    repeats = {key: [] for key in runs}
    for _ in range(DATA_PATH_REPEATS):
        for key, args in runs.items():
            repeats[key].append(run_child(__file__, *args))
    return {
        key: {what: statistics.median(r[what] for r in rs) for what in rs[0]}
        for key, rs in repeats.items()
    }


# --- the final evaluation on 1 and 2 workers ------------------------------------------------------


def final_evaluation(experiment: Path, scale: int, repeats: int) -> dict:
    """The chosen checkpoint's test evaluation as the search runs it (with the zero-shot
    comparison and the bootstrap), its sets' caps times ``scale``, on 1 and on 2 workers,
    ``repeats`` times each, the order alternating (1, 2, then 2, 1): ``{workers: {"seconds":
    [...], "metrics": [...]}}``."""
    from harness import quiet_ray_logs, ray_instance

    from raymmft.config import validate_config
    from raymmft.config_file import load_experiment_config
    from raymmft.results.experiment import TEST_EVALUATION_FILE

    quiet_ray_logs()
    record = json.loads((experiment / TEST_EVALUATION_FILE).read_text())
    raw = load_experiment_config(str(experiment)).model_dump(mode="json")
    for spec in [raw["data"]["id_val"], *raw["data"]["ood_test"]]:
        if spec.get("num_samples"):
            spec["num_samples"] *= scale
    cfg = validate_config(raw, "the experiment's config, caps scaled")
    out = {workers: {"seconds": [], "metrics": []} for workers in (1, 2)}
    with ray_instance(num_cpus=2):
        from raymmft.config import apply_trial_params
        from raymmft.search import evaluate_remote

        for repeat in range(repeats):
            for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
                run_cfg = apply_trial_params(
                    cfg, {**record["params"], "resources.num_workers": workers}
                )
                start = time.perf_counter()
                result = evaluate_remote(
                    run_cfg,
                    record["checkpoint"],
                    bootstrap=cfg.eval.bootstrap_resamples,
                    compare_start=True,
                )
                out[workers]["seconds"].append(time.perf_counter() - start)
                out[workers]["metrics"].append(result.flat_metrics())
                print(
                    f"final evaluation on {workers} worker(s): {out[workers]['seconds'][-1]:.1f} s",
                    flush=True,
                )
    return out


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[5, 25], metavar=("SMALL", "LARGE"))
    parser.add_argument(
        "--final-scale",
        type=int,
        default=3,
        help="the 1-vs-2-worker final evaluation on the test sets' caps times this (default 3: "
        "the search's own sets are small enough for the start of a worker group to weigh)",
    )
    parser.add_argument(
        "--final-repeats",
        type=int,
        default=2,
        help="runs of the final evaluation on 1 and on 2 workers each, the order alternating; "
        "the medians are compared (default 2: one run varies by about 5 %% here)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--keep",
        type=Path,
        help="build the data and results here and keep them; a later run with the same folder "
        "reuses the data and every search already recorded there",
    )
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    small, large = sorted(args.sizes)
    load_start = loadavg()
    work = args.keep or Path(tempfile.mkdtemp(prefix="imagenet-shape-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    built_marker = data / f".built-{small}-{large}"
    if not built_marker.exists():
        shutil.rmtree(data, ignore_errors=True)
        t0 = time.perf_counter()
        image_bytes = build_folders(data, large)
        link_smaller(data, large, small)
        built = time.perf_counter() - t0
        for n in (small, large):
            convert(data, n)
        converted = time.perf_counter() - t0 - built
        print(
            f"data: {files_of(large):,} and {files_of(small):,} image files (N = {large}, "
            f"{small}), {image_bytes / MIB:,.0f} MiB of JPEG at N = {large}; built in "
            f"{built:.0f} s, converted to Parquet in {converted:.0f} s",
            flush=True,
        )
        built_marker.touch()
    runs: dict[tuple[str, int], dict] = {}
    for n in (small, large):
        for kind in ("imagefolder", "parquet"):
            record = work / f"run-{kind}-{n}.json"
            if record.exists():
                run = json.loads(record.read_text())
            else:
                folder = data / (str(n) if kind == "imagefolder" else f"{n}-parquet")
                config = work / f"{kind}-{n}.yaml"
                write_config(config, folder, kind, work / "results")
                walks = work / f"walks-{kind}-{n}.log"
                walks.unlink(missing_ok=True)
                shutil.rmtree(work / "results" / f"{kind}-{n}", ignore_errors=True)
                if not (work / "results" / CACHE).exists():  # mine once, into the cache
                    print("warm-up search (not measured): mines the negatives into the cache")
                    run_search(config, "warm-up", walks, [], work)
                    shutil.rmtree(work / "results" / "warm-up", ignore_errors=True)
                    walks.unlink(missing_ok=True)
                run = run_search(config, f"{kind}-{n}", walks, [folder / s for s in SETS], work)
                (work / f"search-{kind}-{n}.log").write_text(
                    "".join(f"{t - run['start']:8.2f}  {text}\n" for t, text in run["lines"])
                )
                record.write_text(json.dumps(run))
                if (kind, n) != ("imagefolder", large):  # its checkpoint is evaluated again below
                    shutil.rmtree(work / "results" / f"{kind}-{n}", ignore_errors=True)
            run["phases"], run["peaks"], run["walks"] = phases(run), peaks(run), walk_counts(run)
            runs[(kind, n)] = run
            spans = ", ".join(f"{p} {e - s:.0f} s" for p, s, e in run["phases"])
            print(
                f"search {kind}, N = {n}: {run['end'] - run['start']:.0f} s ({spans})", flush=True
            )
    record = work / f"final-evaluation-x{args.final_scale}-r{args.final_repeats}.json"
    if record.exists():
        evaluation = {int(k): v for k, v in json.loads(record.read_text()).items()}
    else:
        evaluation = final_evaluation(
            work / "results" / f"imagefolder-{large}", args.final_scale, args.final_repeats
        )
        record.write_text(json.dumps(evaluation))
    evaluation["scale"] = args.final_scale
    alone = data_path(work, data, (small, large))
    report(runs, evaluation, alone, small, large, load_start)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def report(runs, evaluation, alone, small: int, large: int, load_start) -> None:
    names = [p for p, _ in PHASES]
    kinds = sorted({k for run in runs.values() for (_, k) in run["peaks"]})
    folder, parquet = runs[("imagefolder", large)], runs[("parquet", large)]

    def span(run, phase):
        return next(e - s for p, s, e in run["phases"] if p == phase)

    rows = []
    for phase in names:
        for kind in kinds:
            a, b = folder["peaks"].get((phase, kind)), parquet["peaks"].get((phase, kind))
            if a is None and b is None:
                continue
            rows.append(
                [
                    phase,
                    f"{span(folder, phase):.0f} / {span(parquet, phase):.0f}",
                    kind,
                    f"{a / MIB:,.0f}" if a else "-",
                    f"{b / MIB:,.0f}" if b else "-",
                    f"{b / a:.2f}" if a and b else "-",
                ]
            )
    table(
        ["phase", "s (folder / parquet)", "process", "folder MiB", "parquet MiB", "ratio"],
        rows,
        f"per phase, N = {large} ({files_of(large):,} image files): time and the peak RSS of one "
        "process of each kind (of a DataLoader process: its private memory)",
    )
    files = files_of(large) - files_of(small)
    growth_rows, worst = [], {}
    for kind_of_input in ("imagefolder", "parquet"):
        lo, hi = runs[(kind_of_input, small)], runs[(kind_of_input, large)]
        for phase in names:
            for kind in kinds:
                a, b = lo["peaks"].get((phase, kind)), hi["peaks"].get((phase, kind))
                if a is None or b is None:
                    continue
                per_file = (b - a) / files
                worst[(kind_of_input, kind)] = max(worst.get((kind_of_input, kind), -1e9), per_file)
                growth_rows.append([kind_of_input, phase, kind, f"{per_file:+.0f}"])
    table(
        ["input", "phase", "process", "B per file"],
        growth_rows,
        f"growth of each peak per image file, N = {small} -> {large} ({files:,} more files)",
    )
    walk_rows = []
    for (kind_of_input, n), run in sorted(runs.items()):
        for (phase, root), count in sorted(run["walks"].items()):
            walk_rows.append([kind_of_input, n, phase, root, count])
    table(
        ["input", "N", "phase", "dataset", "listings"],
        walk_rows,
        "listings of each ImageFolder (class folders scanned / class folders; Parquet has none)",
    )
    one, two = evaluation[1], evaluation[2]
    reference = one["metrics"][0]
    runs_metrics = one["metrics"] + two["metrics"]
    same = all(m.keys() == reference.keys() for m in runs_metrics) and all(
        abs(m[k] - reference[k]) <= 1e-6 for m in runs_metrics for k in reference
    )
    largest_diff = max(abs(m[k] - reference[k]) for m in runs_metrics for k in reference)
    speedup = statistics.median(one["seconds"]) / statistics.median(two["seconds"])
    table(
        ["workers", "seconds, each run", "median", "metrics"],
        [
            [
                w,
                ", ".join(f"{s:.1f}" for s in evaluation[w]["seconds"]),
                f"{statistics.median(evaluation[w]['seconds']):.1f}",
                len(evaluation[w]["metrics"][0]),
            ]
            for w in (1, 2)
        ],
        f"final evaluation of the chosen checkpoint (N = {large}, ImageFolder; the test sets' "
        f"caps x {evaluation['scale']}): on 1 and 2 workers, the order alternating",
    )
    ours = ("driver", "trial driver", "train worker", *LOADERS)  # Ray's own hold no data
    ratio = max(
        parquet["peaks"][key] / folder["peaks"][key]
        for key in parquet["peaks"]
        if key in folder["peaks"] and key[1] in ours
    )
    ratio_ray = max(
        parquet["peaks"][key] / folder["peaks"][key]
        for key in parquet["peaks"]
        if key in folder["peaks"] and key[1] not in ours
    )
    growth = max(v for (_, kind), v in worst.items() if kind in ours)
    extra_rows = []
    for phase in names:
        lo_t = {k: span(runs[(k, small)], phase) for k in ("imagefolder", "parquet")}
        hi_t = {k: span(runs[(k, large)], phase) for k in ("imagefolder", "parquet")}
        cells = [phase, "time (s)"]
        for k in ("imagefolder", "parquet"):
            slope = (hi_t[k] - lo_t[k]) / files
            cells += [
                f"{1000 * slope:+.2f}/1k",
                f"{hi_t[k] + slope * (IMAGENET_FILES - files_of(large)):,.0f}",
            ]
        extra_rows.append(cells)
        for kind in kinds:
            cells, seen = [phase, kind], False
            for k in ("imagefolder", "parquet"):
                a = runs[(k, small)]["peaks"].get((phase, kind))
                b = runs[(k, large)]["peaks"].get((phase, kind))
                if a is None or b is None:
                    cells += ["-", "-"]
                    continue
                seen = True
                slope = (b - a) / files
                at = b + slope * (IMAGENET_FILES - files_of(large))
                cells += [f"{slope:+.0f} B", f"{at / MIB:,.0f} MiB"]
            if seen:
                extra_rows.append(cells)
    table(
        [
            "phase",
            "figure",
            "folder per file",
            "folder at 1.38 M",
            "parquet per file",
            "parquet at 1.38 M",
        ],
        extra_rows,
        f"linear extrapolation to ImageNet-1k's {IMAGENET_FILES:,} image files from N = {small} "
        f"and {large} (evaluation sets capped and 2 training steps at both sizes, so only what "
        "grows with the number of files is extrapolated; peak RSS of one process of each kind)",
    )
    alone_rows, alone_growth = [], {}
    for kind_of_input in ("imagefolder", "parquet"):
        for mode in ("driver", "worker"):
            lo, hi = alone[(kind_of_input, mode, small)], alone[(kind_of_input, mode, large)]
            for what in lo:
                per_file = (hi[what] - lo[what]) / files
                alone_growth[(kind_of_input, mode, what)] = per_file
                alone_rows.append(
                    [
                        kind_of_input,
                        "driver: preflight"
                        if mode == "driver"
                        else "worker: datasets + 4 batches"
                        if what != "loader"
                        else "its loader process",
                        "private" if what == "loader" else what,
                        f"{lo[what] / MIB:.1f}",
                        f"{hi[what] / MIB:.1f}",
                        f"{per_file:+.0f}",
                        f"{(hi[what] + per_file * (IMAGENET_FILES - files_of(large))) / MIB:,.0f}",
                    ]
                )
    table(
        [
            "input",
            "process",
            "memory",
            f"N={small} MiB",
            f"N={large} MiB",
            "B per file",
            "MiB at 1.38 M",
        ],
        alone_rows,
        "the data path alone, in a fresh process per size (above the memory after its imports; "
        "a loader process: all its private memory; "
        f"median of {DATA_PATH_REPEATS})",
    )
    lo, hi = (alone[("imagefolder", "store", n)] for n in STORED_SIZES)
    more = STORED_SIZES[1] - STORED_SIZES[0]
    store_rows = []
    for what in ("peak", "kept"):
        per_file = (hi[what] - lo[what]) / more
        alone_growth[("imagefolder", "store", what)] = per_file
        store_rows.append(
            [what, f"{lo[what] / MIB:.1f}", f"{hi[what] / MIB:.1f}", f"{per_file:+.0f}"]
        )
    table(
        ["memory", "0.1 M MiB", "1.3 M MiB", "B per file"],
        store_rows,
        "the driver storing one ImageFolder listing of synthetic ImageNet-like names (at the "
        "benchmark's sizes Arrow's first-use allocation, 45-70 MiB, varies by more than the files)",
    )
    data_growth = max(alone_growth.values())
    per_search: dict[str, float] = {}  # "input-N/dataset" -> listings over the whole search
    for (kind_of_input, n), run in runs.items():
        for (_, root), count in run["walks"].items():
            key = f"{kind_of_input}-{n}/{root}"
            per_search[key] = per_search.get(key, 0) + count
    most_walks = round(max(per_search.values(), default=0), 3)
    targets = [
        [
            "Parquet peak RSS / ImageFolder's: worst of raymmft's processes, any phase",
            f"{ratio:.2f}",
            "<= 1.5",
            ratio <= 1.5,
        ],
        ["  the same, Ray's own processes (no data in them)", f"{ratio_ray:.2f}", "-", "-"],
        [
            "growth per image file, data path alone: worst process, peak or kept (B)",
            f"{data_growth:.0f}",
            "<= 200",
            data_growth <= 200,
        ],
        [
            "  the same from whole searches' peaks (raymmft's processes; noise +-4 KB)",
            f"{growth:.0f}",
            "-",
            "-",
        ],
        ["final evaluation, 1 worker / 2 workers", f"{speedup:.2f}", ">= 1.6", speedup >= 1.6],
        ["  its metrics: largest difference", f"{largest_diff:.1e}", "<= 1e-6", same],
        ["most listings of one dataset in one search", most_walks, "<= 1", most_walks <= 1],
    ]
    table(["target", "measured", "wanted", "met"], targets, "targets")
    emit(
        "imagenet_shape",
        {
            "sizes": [small, large],
            "files": {small: files_of(small), large: files_of(large)},
            "phases_s": {
                f"{k}-{n}": {p: round(e - s, 1) for p, s, e in run["phases"]}
                for (k, n), run in runs.items()
            },
            "peak_rss_mib": {
                f"{k}-{n}": {f"{p}/{r}": round(v / MIB, 1) for (p, r), v in run["peaks"].items()}
                for (k, n), run in runs.items()
            },
            "listings": {
                f"{k}-{n}": {f"{p}/{r}": c for (p, r), c in run["walks"].items()}
                for (k, n), run in runs.items()
            },
            "listings_per_search": per_search,
            "extrapolated_files": IMAGENET_FILES,
            "final_eval_scale": evaluation["scale"],
            "final_eval_s": {"1": one["seconds"], "2": two["seconds"]},
            "final_eval_pair_ratios": [a / b for a, b in zip(one["seconds"], two["seconds"])],
            "final_eval_speedup": speedup,
            "final_eval_max_metric_diff": largest_diff,
            "data_path_alone": {f"{k}/{m}/{n}": v for (k, m, n), v in alone.items()},
            "targets_met": {row[0]: row[3] for row in targets if row[3] != "-"},
        },
        load_start=load_start,
    )


if __name__ == "__main__":
    main()
