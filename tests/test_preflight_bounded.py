"""The preflight's image check in bounded memory (issue 26, item 5): a bounded queue of work (the
futures in flight never exceed the threads' share, whatever the file count), threads scaled to the
cores, memory per file that does not grow with the files (the former one-future-per-file check
took ~2 KB a file; measured here against it), progress lines, results in order, and each folder
walked once by ``preflight``."""

from __future__ import annotations

import gc
import os
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import raymmft.data.imagefolder as imagefolder
from raymmft.data import open_dataset
from raymmft.data.dataset import image_problem
from raymmft.data.imagefolder import (
    CHECK_CHUNK,
    CHUNKS_PER_THREAD,
    MAX_CHECK_THREADS,
    check_threads,
    find_unreadable,
    unreadable_images,
)
from raymmft.progress import Progress


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("one") / "tiny.png"
    Image.new("RGB", (2, 2), (1, 2, 3)).save(path)
    return str(path)


def test_the_work_in_flight_is_bounded_by_the_threads(png, monkeypatch):
    """One path repeated: the check reads it n times; at most threads x CHUNKS_PER_THREAD chunks are
    ever submitted and not yet collected."""
    state = {"open": 0, "most": 0, "submitted": 0}
    lock = threading.Lock()
    real_submit = ThreadPoolExecutor.submit

    def submit(self, fn, *args):
        future = real_submit(self, fn, *args)
        with lock:
            state["open"] += 1
            state["submitted"] += 1
            state["most"] = max(state["most"], state["open"])
        real_result = future.result

        def result(*a):
            with lock:
                state["open"] -= 1
            return real_result(*a)

        future.result = result
        return future

    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    for n in (3_000, 12_000):
        state.update(open=0, most=0, submitted=0)
        assert unreadable_images([png] * n, full_decode=False, threads=3) == []
        assert state["submitted"] == -(-n // CHECK_CHUNK) and state["open"] == 0
        assert state["most"] == 3 * CHUNKS_PER_THREAD


def _peak_growth(check, n: int, path: str) -> int:
    paths = [path] * n
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        check(paths)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _former_check(paths):
    """The check before issue 26: one future per file (ThreadPoolExecutor.map ignores chunksize),
    a result per file, and the kept indices as a list."""
    with ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(lambda p: image_problem(p, full_decode=False), paths))
    bad = {p for p, why in zip(paths, problems) if why is not None}
    return [k for k, p in enumerate(paths) if p not in bad]


def test_the_memory_of_the_check_does_not_grow_with_the_files(png):
    new = [_peak_growth(lambda p: unreadable_images(p, full_decode=False), n, png)
           for n in (1_000, 5_000)]  # fmt: skip
    old = [_peak_growth(_former_check, n, png) for n in (1_000, 5_000)]
    new_per_file = (new[1] - new[0]) / 4_000
    old_per_file = (old[1] - old[0]) / 4_000
    assert new_per_file < 16, f"{new_per_file:.0f} B a file"
    assert old_per_file > 500, f"the former check: {old_per_file:.0f} B a file"


def test_threads_follow_the_cores_within_a_cap(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(3)), raising=False)
    assert check_threads() == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert check_threads() == MAX_CHECK_THREADS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert check_threads() == 2


def test_unreadable_images_are_found_in_order(png, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    paths = [png] * 500
    for k in (0, 63, 64, 301, 499):
        paths[k] = str(bad)
    expected = [(k, "not a recognised image format") for k in (0, 63, 64, 301, 499)]
    assert unreadable_images(paths, full_decode=False, threads=4) == expected
    assert unreadable_images(paths, full_decode=False, threads=1) == expected
    assert find_unreadable(paths, full_decode=True) == [(str(bad), w) for _, w in expected]


def test_progress_counts_every_image(png):
    lines: list[str] = []
    ticks = iter(range(10_000))
    progress = Progress("checking images", 300, "images", every=1, out=lines.append,
                        clock=lambda: next(ticks))  # fmt: skip
    unreadable_images([png] * 300, full_decode=False, threads=2, progress=progress)
    assert progress.done == 300
    counts = [int(line.split(": ")[1].split("/")[0].replace(",", "")) for line in lines]
    assert counts == [64, 128, 192, 256, 300]
    assert lines[-1].startswith("checking images: 300/300 images, ")


def test_the_preflight_check_says_how_far_it_got(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(100):
            Image.new("RGB", (2, 2), (i, 0, 0)).save(root / name / f"{i}.png")
    monkeypatch.setattr(imagefolder, "Progress", _every_update)
    capsys.readouterr()
    open_dataset(f"imagefolder:{root}", None, check=True)
    lines = capsys.readouterr().out.splitlines()
    checking = [line for line in lines if line.startswith("checking images")]
    assert checking[0].startswith(f"checking images of imagefolder:{root}: 64/200 images, ")
    assert checking[-2].startswith(f"checking images of imagefolder:{root}: 200/200 images, ")
    assert checking[-1].startswith(f"checking images of imagefolder:{root}: 200 images in ")
    listing = [line for line in lines if line.startswith("listing")]
    assert listing[-1].startswith(f"listing {root}: 2 class folders in ")


def _every_update(*args, **kwargs):
    """A Progress that speaks at every update (a clock that moves 10 s a call)."""
    ticks = iter(range(0, 10**9, 10))
    return Progress(*args, **{**kwargs, "every": 10, "clock": lambda: next(ticks)})


def test_preflight_walks_each_folder_once(tmp_path, monkeypatch):
    import yaml
    from bad_input import SMALL

    import raymmft.data.listing as listing_module
    from raymmft.config import Config
    from raymmft.preflight import preflight

    for folder, classes in (("data", ("cat", "dog", "cow")), ("ood", ("car",))):
        for name in classes:
            (tmp_path / folder / name).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / folder / name / f"{i}.png")
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    data, ood = tmp_path / "data", tmp_path / "ood"
    raw["data"] = {
        "id_train": f"imagefolder:{data}?split=train&classes=cat,dog",
        "id_val": f"imagefolder:{data}?split=val&classes=cat,dog",
        "ood_val": [f"imagefolder:{data}?classes=near_ood&split=val"],
        "ood_test": [f"imagefolder:{ood}"],
    }
    raw["train"]["batch_size"] = 2
    raw["storage"] = {"path": str(tmp_path / "results")}
    cfg = Config.model_validate(raw)
    calls: list[str] = []
    real = listing_module.list_image_folder
    monkeypatch.setattr(
        listing_module, "list_image_folder", lambda root: calls.append(root) or real(root)
    )
    listings = preflight(cfg)
    assert calls == [str(data), str(ood)]
    assert sorted(listings) == sorted(calls)
    assert [len(listings[str(p)].files) for p in (data, ood)] == [18, 6]


def test_a_missing_file_is_named_by_the_bounded_check(tmp_path, png):
    paths = [png] * 200 + [str(tmp_path / "gone.png")] + [png] * 10
    assert unreadable_images(paths, full_decode=False, threads=4) == [
        (200, f"[Errno 2] No such file or directory: '{Path(tmp_path / 'gone.png')}'")
    ]
