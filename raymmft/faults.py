"""Test-only pauses at points a user can interrupt a search: ``RAYMMFT_PAUSE="POINT:MARKER"``
makes the process that reaches ``POINT`` create the file ``MARKER`` and wait there until it is
killed, so a test can send a signal at that exact point (e.g. ``record:4``: the trial driver
before Tune records epoch 4, its Train checkpoint already written; ``prepare``: the search's
preparation step; ``test-evaluation``: the driver before it evaluates the chosen candidate on
the test sets). An existing marker disarms it (the resumed run goes on). Unset: nothing."""

from __future__ import annotations

import os
import time

PAUSE_ENV = "RAYMMFT_PAUSE"


def pause_if_asked(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    where, _, marker = spec.rpartition(":")
    if where != point or not marker:
        return
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return
    while True:
        time.sleep(1)
