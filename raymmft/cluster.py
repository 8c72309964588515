"""What a search needs from the cluster it runs on, checked before the first trial starts, and
joining or starting it (``init_ray``).

- **Storage.** Every trial writes checkpoints and results from the node it runs on and Tune reads
  them back on the head, so on a cluster of more than one node the storage must be shared: an
  ``s3://`` / ``gs://`` URI, or an NFS mount at the same path on every node (``storage.shared``).
  It is also written to once, up front, so a typo or a missing permission fails in seconds instead
  of after the first epoch.
- **Size.** An autoscaling cluster starts with its head only; what it can grow to (the autoscaler's
  node types × their maximum counts) is what decides whether a trial fits and how many run at once.

Pure functions of the paths and of a ``ray`` module passed in (imported lazily when omitted), so
the checks are tested without a cluster.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from raymmft.errors import ConfigError, StorageError, first_line
from raymmft.storage import Location

MARKER_PREFIX = ".raymmft-write-check-"
# Where Ray unpacks a job's --working-dir; gone when the Ray session ends.
JOB_WORKING_DIR_MARK = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"


# ---------------------------------------------------------------- storage


def check_storage(location: str | Location, *, num_nodes: int, shared: bool = False) -> None:
    """Raise ``ConfigError`` unless every node of the cluster can write results to ``location``.

    ``location`` is a URI (``s3://``, ``gs://``, any filesystem pyarrow resolves, as Ray Train
    does) or a local path (plain or ``file://``). ``num_nodes`` counts the nodes the cluster has or
    can grow to; ``shared`` says a local path is the same shared filesystem on every node.
    """
    location = Location.parse(location)
    path = str(location)
    if not location.is_local:
        _check_uri_writable(location)
        return
    if JOB_WORKING_DIR_MARK in location.path:
        raise ConfigError(
            f"storage '{path}' is inside this job's temporary working directory, which Ray "
            f"deletes after the job; give an absolute path or an s3:// / gs:// URI "
            f"(--storage s3://bucket/raymmft)"
        )
    if num_nodes > 1 and not shared:
        raise ConfigError(
            f"storage '{path}' is a local path but this cluster has up to {num_nodes} nodes: each "
            f"node would keep its trials' checkpoints and results on its own disk. Use shared storage: "
            f"an s3:// or gs:// URI (--storage s3://bucket/raymmft), or an NFS mount present at "
            f"the same path on every node, declared with --set storage.shared=true"
        )
    check_local_writable(location)


def check_local_writable(location: Location) -> None:
    path = location.local_path
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=MARKER_PREFIX):
            pass  # created and deleted on close
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"storage '{location}' is not writable ({reason}); give a directory you can write to "
            f"with --storage or storage.path"
        ) from None


def _check_uri_writable(location: Location) -> None:
    """Create the directory and a marker object in it, then delete the marker."""
    try:
        location.mkdir()
        marker = location.join(f"{MARKER_PREFIX}{uuid.uuid4().hex}")
        marker.write_bytes(b"raymmft")
        marker.delete_file()
    except StorageError as exc:
        raise ConfigError(
            f"storage '{location}' is not writable ({str(exc).split(': ', 1)[-1]}); check the URI "
            f"and this node's credentials for it"
        ) from None


# ---------------------------------------------------------------- cluster size


@dataclass(frozen=True)
class ClusterSummary:
    """The cluster now (alive nodes, CPUs, GPUs) and, when it autoscales, at its largest."""

    nodes: int
    cpus: float
    gpus: float
    max_nodes: int | None = None  # None: not an autoscaling cluster
    max_resources: dict[str, float] | None = None

    @property
    def reachable_nodes(self) -> int:
        return max(self.nodes, self.max_nodes or 0)

    def reachable_resources(self, current: dict[str, float]) -> dict[str, float]:
        """Per resource, the larger of what the cluster has now and what it can grow to."""
        out = dict(current)
        for res, amount in (self.max_resources or {}).items():
            out[res] = max(out.get(res, 0.0), float(amount))
        return out

    def __str__(self) -> str:
        now = f"{self.nodes} node{'s' if self.nodes != 1 else ''}, {self.cpus:g} CPUs, {self.gpus:g} GPUs"
        if self.max_nodes is None:
            return now
        grow = self.max_resources or {}
        return (
            f"{now} (autoscaling to {self.max_nodes} nodes, {grow.get('CPU', 0):g} CPUs, "
            f"{grow.get('GPU', 0):g} GPUs)"
        )


def cluster_summary(ray: Any = None, *, autoscaler_config: Any = None) -> ClusterSummary:
    """Nodes, CPUs and GPUs of the connected cluster (``ray.init`` already called).

    ``autoscaler_config`` is the autoscaler's ``ClusterConfig`` (node groups with resources and
    ``max_count``); by default it is read from the GCS the way Ray Train reads it to reject a
    worker group that can never fit. ``None`` there means a fixed-size cluster.
    """
    if ray is None:
        import ray
    alive = [n for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
    total = ray.cluster_resources()
    if autoscaler_config is None:
        autoscaler_config = _autoscaler_config()
    max_nodes, max_resources = _autoscaling_limits(autoscaler_config)
    return ClusterSummary(
        nodes=len(alive),
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        max_nodes=max_nodes,
        max_resources=max_resources,
    )


def _autoscaler_config() -> Any:
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception:  # a private API: a cluster without it is treated as fixed-size
        return None


def _autoscaling_limits(config: Any) -> tuple[int | None, dict[str, float] | None]:
    """Largest node count and resources of an autoscaler ``ClusterConfig`` (``max_count`` -1: unbounded)."""
    groups = list(getattr(config, "node_group_configs", None) or [])
    if not groups:
        return None, None
    unbounded = float("inf")
    nodes = 0.0
    resources: dict[str, float] = {}
    for group in groups:
        count = unbounded if group.max_count == -1 else float(group.max_count)
        nodes += count
        for res, amount in dict(group.resources).items():
            if amount:  # inf x 0 would be nan
                resources[res] = resources.get(res, 0.0) + count * float(amount)
    cap = dict(getattr(config, "max_resources", None) or {})
    for res, limit in cap.items():
        if res in resources:
            resources[res] = min(resources[res], float(limit))
    big = 1_000_000  # "unbounded", kept finite so floor division stays meaningful
    return int(min(nodes, big)), {r: min(v, big) for r, v in resources.items()}


# ---------------------------------------------------------------- Ray


def local_resources() -> dict[str, float]:
    """What a Ray instance started on this machine will offer (checked before starting it)."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def joins_cluster(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


def init_ray(address: str | None) -> None:
    """Join ``address`` (or ``$RAY_ADDRESS``, as set inside ``ray job submit``), else start Ray here."""
    # Only the loggers passed to tune.RunConfig (JSON, CSV); see run_search.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    if ray.is_initialized():
        return
    given = address
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address, given=given is not None)
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise unreachable(address, first_line(exc, 160)) from None
    else:
        # A fresh local instance, never a `ray start` cluster that happens to run on this machine.
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
        ray.init(address="local")
    stop_on_sigterm()


# Set when the driver got SIGTERM (a scheduler's stop, `kill`): the search stops as on Ctrl-C.
TERMINATED = threading.Event()


def stop_on_sigterm() -> None:
    """SIGTERM stops the driver the way Ctrl-C does (Tune saves its state and the trials stop;
    ``--resume`` continues), instead of ``ray.init``'s handler, which exits at once mid-search.
    Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum, frame):
        TERMINATED.set()
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, terminate)


REACH_TIMEOUT_S = 5.0


def check_reachable(address: str, *, given: bool = True) -> None:
    """A ``host:port`` (or ``ray://host:port``) address answers a TCP connection within a few
    seconds; ray.init would otherwise retry for minutes. ``auto`` is left to Ray; a ``given``
    (``--address``) value that is not an address is an error, ``$RAY_ADDRESS`` is left to Ray."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or any(
        c.isspace() or c in "/?#" for c in host
    ):
        if not given:
            return
        raise ConfigError(
            f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT (a port in "
            "1-65535)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = (
            "connection refused"
            if isinstance(exc, ConnectionRefusedError)
            else (
                f"no answer in {REACH_TIMEOUT_S:g} s"
                if isinstance(exc, TimeoutError)
                else exc.strerror or str(exc)
            )
        )
        raise unreachable(address, reason) from None


def unreachable(address: str, reason: str) -> ConfigError:
    return ConfigError(
        f"cannot reach a Ray cluster at {address} ({reason}); start one with "
        f"`ray start --head`, or leave out --address to start Ray here"
    )
