"""Resources that can never be granted: a batch the workers cannot split or larger than the train
set, more CPUs than the cluster has (also over a searched range), GPUs without a GPU share, an
--address that is not one and a cluster that cannot be reached. Each through the real CLI, with
the exact one-line message and exit status 2, before any trial."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from bad_input import ROOT, _config, _error, _run


def test_batch_not_divisible_by_workers(tmp_path, capsys):
    def mutate(r):
        r["train"]["batch_size"] = 61
        r["resources"]["num_workers"] = 2

    msg = _run(tmp_path, capsys, mutate)
    assert msg == "global batch size 61 is not divisible by 2 workers; use a positive multiple of 2"


def test_batch_larger_than_train_set(tmp_path, capsys):
    msg = _run(tmp_path, capsys, lambda r: r["train"].update(batch_size=5000))
    assert msg.startswith("train.batch_size 5000 is larger than the ID train set (720 images in ")


def test_more_cpus_than_the_machine_has(tmp_path, capsys):
    cpus = os.cpu_count()
    msg = _run(
        tmp_path, capsys, lambda r: r["resources"].update(num_workers=4, cpus_per_worker=cpus)
    )
    assert msg == (
        f"a trial needs {4 * cpus} CPU (resources.num_workers=4 x cpus_per_worker) but the cluster "
        f"has {cpus}; lower resources.num_workers or resources.cpus_per_worker"
    )


def test_searched_resources_are_checked_over_their_range(tmp_path, capsys):
    cpus = os.cpu_count()
    space = {"train.lam": {"uniform": [0, 1]}, "resources.num_workers": {"choice": [1, 2 * cpus]}}
    path = _config(tmp_path, search={"space": space})
    started = time.time()
    msg = _error(capsys, ["search", str(path)])
    assert time.time() - started < 60
    assert msg == (
        f"a trial needs {2 * cpus} CPU (resources.num_workers={2 * cpus} x cpus_per_worker) but "
        f"the cluster has {cpus}; lower resources.num_workers or resources.cpus_per_worker"
    )


def test_gpus_without_gpus_per_worker(tmp_path, capsys):
    path = _config(tmp_path, resources={"use_gpu": True, "gpus_per_worker": 0})
    assert _error(capsys, ["search", str(path)]) == (
        f"{path}: resources: resources.use_gpu is true but resources.gpus_per_worker is 0.0; "
        "give each worker a GPU share > 0, or set use_gpu: false"
    )


@pytest.mark.parametrize("address", ["not a host", "127.0.0.1:99999", "head-node", ":6379"])
def test_an_address_that_is_not_one(tmp_path, capsys, address):
    import ray

    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--address", address]) == (
        f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT (a port in 1-65535)"
    )
    assert not ray.is_initialized()


@pytest.mark.slow  # a fresh interpreter through the CLI
def test_an_unreachable_cluster_fails_fast(tmp_path):
    path = _config(tmp_path)
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "raymmft.cli", "search", str(path), "--address", "127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.time() - started < 40
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot reach a Ray cluster at 127.0.0.1:1 (connection refused); start one with "
        "`ray start --head`, or leave out --address to start Ray here"
    )
