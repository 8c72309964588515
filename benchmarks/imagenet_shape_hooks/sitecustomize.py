"""Loaded by every Python process of a ``benchmarks/imagenet_shape.py`` search (its folder is put
first on ``PYTHONPATH``): counts how the benchmark's dataset roots are listed.

Each ``os.scandir`` of a root named in ``RAYMMFT_BENCH_ROOTS`` (``os.pathsep``-separated), or of a
class folder right under one, appends ``time pid root root|class`` to the file
``RAYMMFT_BENCH_WALKS``. A listing of an ImageFolder scans the root and then every class folder;
reading the class names scans the root alone. Nothing else is changed; without the two variables
this does nothing.
"""

import os
import time

_LOG = os.environ.get("RAYMMFT_BENCH_WALKS")
_ROOTS = {
    os.path.realpath(r) for r in os.environ.get("RAYMMFT_BENCH_ROOTS", "").split(os.pathsep) if r
}

if _LOG and _ROOTS:
    _scandir = os.scandir

    def _counting_scandir(path="."):
        try:
            name = os.fspath(path)
            real = os.path.realpath(name) if isinstance(name, str) else None
        except TypeError:  # a file descriptor
            real = None
        parent = os.path.dirname(real) if real else None
        if real in _ROOTS or parent in _ROOTS:
            root, kind = (real, "root") if real in _ROOTS else (parent, "class")
            line = f"{time.time():.3f} {os.getpid()} {root} {kind}\n".encode()
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return _scandir(path)

    os.scandir = _counting_scandir
