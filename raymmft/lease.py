"""One driver per experiment: a lease in the experiment directory (``.raymmft-lease.json``).

A search (or a training run) holds its experiment's lease from its start until its command ends;
a second driver on the same experiment (the same search started twice, ``--resume`` of a search
that is running) is refused in one line before it touches anything.

- **Taking it.** On a local or NFS path the lease file is created with ``link(2)`` of a written
  temporary file, which fails if the lease exists (atomic on NFS too). Object storage has no such
  primitive that pyarrow exposes, so the lease object is written, and read back after
  ``SETTLE_S``: of two drivers that wrote it at about the same time, the one whose write is not
  the last sees the other's and gives up (object stores read after write consistently).
- **Keeping it.** A thread rewrites the lease's ``heartbeat`` every ``HEARTBEAT_S``.
- **A stale lease** (its driver was killed with SIGKILL, its node lost) is taken over when its
  heartbeat is older than ``TTL_S``, or at once when its driver ran on this host and its process
  is gone. Clocks of different hosts are compared, so a skew of more than ``TTL_S - HEARTBEAT_S``
  could take a live lease: keep the hosts' clocks synchronised (NTP), or delete the lease by hand
  only after making sure its driver is gone.

Pure Python over ``raymmft.storage``; no Ray.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from raymmft.errors import ExperimentInUseError, StorageError, first_line
from raymmft.storage import Location

LEASE_FILE = ".raymmft-lease.json"
TTL_S = 120.0
HEARTBEAT_S = 20.0
SETTLE_S = 1.0


class ExperimentLease:
    """The lease of ``experiment`` for this process; ``acquire()`` it, ``release()`` it (or use
    it as a context manager). ``created`` says whether taking it created the directory: a start
    that fails before the search has started can remove it again (``discard``)."""

    def __init__(self, experiment: Location, *, command: str = "raymmft", ttl: float = TTL_S):
        self.experiment = experiment
        self.location = experiment.join(LEASE_FILE)
        self.ttl = ttl
        self.record = {
            "owner": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command,
            "started": time.time(),
            "heartbeat": time.time(),
        }
        self.created = False
        self.started = False  # set by the driver once the experiment holds results
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ taking and giving back

    def acquire(self) -> ExperimentLease:
        self.created = not self.experiment.exists()
        held = self.read()
        if held is not None:
            if not self.is_stale(held):
                raise ExperimentInUseError(self.in_use(held))
            print(f"note: taking over the stale lease of {self.experiment} ({describe(held)})")
            self._delete()
        try:
            self.experiment.mkdir()
            if self.experiment.is_local:
                self._create_local()
            else:
                self._write()
                time.sleep(SETTLE_S)
                held = self.read()
                if held is None or held.get("owner") != self.record["owner"]:
                    raise ExperimentInUseError(self.in_use(held or {}))
        except StorageError as exc:
            raise StorageError(f"cannot take the lease of {self.experiment}: {exc}") from None
        self._thread = threading.Thread(target=self._beat, name="raymmft-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Give the lease back (only if it is still this driver's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self.read()
        if held is not None and held.get("owner") == self.record["owner"]:
            self._delete()

    def discard(self) -> None:
        """Give the lease back and remove the experiment directory with what this start wrote
        into it; only for a directory that taking the lease created, before the driver said it
        holds results (``started``)."""
        self.release()
        if not self.created or self.started:
            return
        try:
            self.experiment.filesystem.delete_dir(self.experiment.fs_path)
        except (OSError, ValueError):
            pass  # nothing there, or storage that fails now: the caller's error says why

    def __enter__(self) -> ExperimentLease:
        return self.acquire()

    def __exit__(self, kind, exc, tb) -> None:
        """A start that fails or is interrupted before it holds results leaves nothing behind."""
        if exc is not None:
            self.discard()
        else:
            self.release()

    # ------------------------------------------------------------ reading

    def read(self) -> dict | None:
        """The lease as stored (``None``: there is none; a lease that cannot be parsed is one
        with no heartbeat, so stale)."""
        try:
            if not self.location.is_file():
                return None
            value = json.loads(self.location.read_text())
        except (StorageError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    def is_stale(self, held: dict) -> bool:
        beat = held.get("heartbeat")
        if not isinstance(beat, int | float) or time.time() - beat > self.ttl:
            return True
        pid = held.get("pid")
        if held.get("host") == self.record["host"] and isinstance(pid, int):
            return not _alive(pid)
        return False

    def in_use(self, held: dict) -> str:
        return (
            f"experiment {self.experiment} is in use by another driver ({describe(held)}); "
            "wait for it to end, or stop it first (a lease whose heartbeat is older than "
            f"{self.ttl:.0f} s is taken over)"
        )

    # ------------------------------------------------------------ writing

    def _payload(self) -> bytes:
        return (json.dumps(self.record, indent=1) + "\n").encode()

    def _write(self) -> None:
        self.location.write_bytes(self._payload())

    def _create_local(self) -> None:
        path = self.location.local_path
        tmp = path.with_name(f"{LEASE_FILE}.{self.record['owner'][:8]}.tmp")
        try:
            tmp.write_bytes(self._payload())
            try:
                os.link(tmp, path)  # fails if a lease exists, atomically (NFS included)
            except FileExistsError:
                raise ExperimentInUseError(self.in_use(self.read() or {})) from None
        except OSError as exc:
            raise StorageError(f"{exc.strerror or first_line(exc)}: {path}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            held = self.read()
            if held is not None and held.get("owner") != self.record["owner"]:
                return  # taken over (it was judged stale): never write over another's lease
            self.record["heartbeat"] = time.time()
            try:
                self._write()
            except StorageError:
                pass  # storage trouble is reported by whatever writes next; keep beating

    def _delete(self) -> None:
        try:
            self.location.delete_file()
        except StorageError:
            pass  # already gone


def describe(held: dict) -> str:
    """``host h, pid p, raymmft search ..., heartbeat 3 s ago`` of a stored lease."""
    beat = held.get("heartbeat")
    ago = (
        f"heartbeat {time.time() - beat:.0f} s ago"
        if isinstance(beat, int | float)
        else "no heartbeat"
    )
    command = str(held.get("command", "?"))[:120]
    return f"host {str(held.get('host', '?'))[:80]}, pid {held.get('pid', '?')}, {command}, {ago}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
