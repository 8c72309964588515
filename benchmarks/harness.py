"""What every benchmark script shares: machine load, medians, tables, the JSON line, Ray etiquette.

Benchmarks run on shared machines, so each records ``os.getloadavg()`` at its start and end, measures
its baseline in the same process as the thing compared, and reports medians of repeats. A script
that starts Ray first waits until no other Ray instance runs on the machine (other engineers' test
suites start their own), and always shuts its own down.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "search_spaces" / "demo.yaml"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def demo_arch() -> str:
    """The demo's model architecture (``search_spaces/demo.yaml``); weights do not change timings."""
    import yaml

    return yaml.safe_load(DEMO_CONFIG.read_text())["model"]["arch"]


def git_state() -> str:
    """The checkout measured: commit, and ``+dirty`` when raymmft/ or search_spaces/ differ from it."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True
        ).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = git("status", "--porcelain", "--", "raymmft", "search_spaces").strip()
    return commit + ("+dirty" if dirty else "")


def machine() -> dict:
    """What a reader needs to judge a figure: cores, load, library versions, thread settings."""
    import torch

    info = {
        "git": git_state(),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    return info


def table(headers: Sequence[str], rows: Iterable[Sequence], title: str | None = None) -> str:
    """A plain-text table; floats get 4 significant digits."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)
    ]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    out = "\n".join(lines)
    print(out, flush=True)
    return out


def emit(name: str, result: dict, *, load_start: list[float]) -> None:
    """The final line of every benchmark: one JSON object (benchmark, figures, load, machine)."""
    payload = {
        "benchmark": name,
        **result,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "machine": machine(),
    }
    print(json.dumps(payload, default=_jsonable), flush=True)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def other_ray_running() -> bool:
    """True while a raylet or GCS server of any Ray instance runs on this machine."""
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def wait_for_ray_free(poll_s: float = 20.0, timeout_s: float | None = None) -> float:
    """Block until no Ray instance runs here (polling every ``poll_s``); return the seconds waited."""
    start = time.monotonic()
    announced = False
    while other_ray_running():
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"another Ray instance still runs after {timeout_s:.0f} s")
        if not announced:
            print(
                f"waiting for another Ray instance to end (polling every {poll_s:.0f} s)",
                flush=True,
            )
            announced = True
        time.sleep(poll_s)
    return time.monotonic() - start


@contextmanager
def ray_instance(*, wait: bool = True, **init_kwargs):
    """A fresh local Ray instance for the block, started only once no other one runs here, and
    shut down (with its processes gone) afterwards."""
    import ray

    from raymmft.cluster import init_ray

    if wait:
        wait_for_ray_free()
    if init_kwargs:
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        ray.init(address="local", **init_kwargs)
    else:
        init_ray(None)
    try:
        yield ray
    finally:
        ray.shutdown()
        # ray.shutdown() returns before the raylet has exited; let it go before anything else starts.
        deadline = time.monotonic() + 30
        while other_ray_running() and time.monotonic() < deadline:
            time.sleep(0.5)


def quiet_ray_logs() -> None:
    """Keep Ray's and open_clip's INFO chatter out of the benchmark tables."""
    import logging

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def time_preparation(search) -> list[tuple[float, float]]:
    """Make ``search.run_preparation`` (``raymmft.search``'s preparation step, which ``run_train`` and
    ``run_search`` call in this process before any trial) record the ``(start, end)`` wall-clock
    times (``time.time()``) of every call in the list returned; patching twice returns the same
    list."""
    original = search.run_preparation
    if hasattr(original, "spans"):
        return original.spans
    spans: list[tuple[float, float]] = []

    def run_preparation(*args, **kwargs):
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            spans.append((start, time.time()))

    run_preparation.spans = spans
    search.run_preparation = run_preparation
    return spans


def span_within(spans: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of the ``(start, end)`` spans that lie inside ``[start, end]``."""
    return sum(e - s for s, e in spans if start <= s and e <= end)


def argv_string() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


class RayCpuSampler:
    """CPU seconds used by Ray's processes (``ray::*`` workers and actors, raylet, GCS, dashboard,
    agents) while the block runs, read from ``/proc`` once a second in a background thread.

    ``totals(start, end)`` sums, over a wall-clock window (``time.time()``; default the whole
    block), the CPU the Train workers (``ray::RayTrainWorker``) and every other Ray process used."""

    def __init__(self, interval_s: float = 1.0):
        import threading

        self.interval_s = interval_s
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _ray_processes() -> dict[int, tuple[str, float]]:
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if not (cmd.startswith("ray::") or "/ray/" in cmd):
                continue
            # the fields after the command: state is [0], utime [11], stime [12]
            out[int(entry)] = (cmd.split(" ")[0], (int(fields[11]) + int(fields[12])) / tick)
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.time(), self._ray_processes()))

    def __enter__(self):
        self.samples.append((time.time(), self._ray_processes()))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), self._ray_processes()))

    def totals(self, start: float | None = None, end: float | None = None) -> dict[str, float]:
        inside = [
            (t, procs)
            for t, procs in self.samples
            if (start is None or t >= start) and (end is None or t <= end)
        ]
        if len(inside) < 2:
            return {
                "train_workers_cpu_s": float("nan"),
                "other_ray_cpu_s": float("nan"),
                "wall_s": 0.0,
            }
        t0, first = inside[0]
        last: dict[int, tuple[str, float]] = {}
        for _, procs in inside:
            last.update(procs)  # a process that exits keeps its last reading
        workers = other = 0.0
        for pid, (name, cpu) in last.items():
            used = cpu - first.get(pid, (name, 0.0))[1]
            if name.startswith("ray::RayTrainWorker"):
                workers += used
            else:
                other += used
        return {
            "train_workers_cpu_s": workers,
            "other_ray_cpu_s": other,
            "wall_s": inside[-1][0] - t0,
        }


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``, ...) of this process in bytes."""
    import re
    from pathlib import Path

    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024


def run_child(script: str, mode: str, *args) -> dict:
    """``python SCRIPT --child MODE ARGS...`` in a fresh process (its own peak memory); the JSON
    object it prints last."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, script, "--child", mode, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])
