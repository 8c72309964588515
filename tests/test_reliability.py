"""Breaking things on purpose: a training worker killed mid-trial, and the search driver killed
after a finished trial. Nothing may be lost and the results must not change.

The driver's kill (``kill_driver_and_resume``) runs on object storage, through the S3 protocol
(``tests/test_object_storage_e2e.py``): the same scenario on a local path was a second search of
100 s testing the same code (storage goes through ``raymmft.storage.Location`` either way), and
local resumes after a stop are tested by ``tests/test_resume_e2e.py``."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raymmft.config import validate_config
from raymmft.errors import StorageError
from raymmft.storage import Location

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]

RAW = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 10},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 4},
        "ood_val": [
            {
                "uri": "builtin:shapes",
                "split": "val",
                "classes": "far_ood",
                "per_class": 30,
                "name": "far",
            }
        ],
    },
    # 120 images / global batch 24 = 5 steps per epoch; the fault hits step 7 (epoch 2).
    "train": {"epochs": 3, "batch_size": 24, "lr": 2e-3, "lam": 0.2, "augment": False, "seed": 4},
    "eval": {"scores": ["mcm"], "ood_score": "mcm"},
    "resources": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 1},
}


def test_killed_worker_resumes_to_the_same_result(tmp_path, monkeypatch):
    import ray

    from raymmft.search import hold_experiment, run_train
    from raymmft.worker import FAULT_ENV, FAULT_MARKER_ENV

    def train(cfg):
        with hold_experiment(cfg, resume=False, command="test") as lease:
            return run_train(cfg, lease)

    marker = tmp_path / "fault-fired"
    # Workers inherit the driver's environment when this process starts Ray.
    monkeypatch.setenv(FAULT_ENV, "1:7:exit")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    marker.write_text("disarmed for the baseline")
    try:
        cfg = validate_config({**RAW, "storage": {"path": str(tmp_path), "name": "baseline"}})
        baseline = train(cfg)
        marker.unlink()
        cfg = validate_config({**RAW, "storage": {"path": str(tmp_path), "name": "faulty"}})
        faulty = train(cfg)
    finally:
        ray.shutdown()
    assert marker.exists(), "rank 1 really was killed at step 7"
    assert faulty.metrics["epoch"] == baseline.metrics["epoch"] == 3
    assert faulty.metrics["step"] == baseline.metrics["step"] == 15
    for key in ("train_loss", "id_acc", "ood_auroc", "modality_gap", "logit_scale"):
        assert faulty.metrics[key] == pytest.approx(baseline.metrics[key], rel=1e-5, abs=1e-6), key
    ckpts = [p for p in (tmp_path / "faulty").glob("checkpoint_*") if p.is_dir()]
    assert ckpts, "the resumed run kept checkpointing"


def _states(exp: Location) -> dict[str, str]:
    """trial_id -> status from Tune's newest saved experiment state (local or in a bucket)."""
    names = sorted(n for n in exp.children() if n.startswith("experiment_state-"))
    if not names:
        return {}
    try:
        data = json.loads(exp.join(names[-1]).read_text())
    except json.JSONDecodeError:  # being written
        return {}
    out = {}
    for trial_json, _ in data["trial_data"]:
        trial = json.loads(trial_json)
        out[trial["trial_id"]] = trial["status"]
    return out


def _result_file(exp: Location, trial_id: str) -> Location:
    (name,) = [n for n in exp.children() if n.startswith(f"trial_driver_{trial_id}_")]
    return exp.join(name, "result.json")


def _last_epoch(exp: Location, trial_id: str) -> int | None:
    """The epoch of the trial's last complete result line on storage (None before there is one)."""
    try:
        lines = _result_file(exp, trial_id).read_text().splitlines()
        return json.loads(lines[-1])["epoch"] if lines else None
    except (StorageError, ValueError, KeyError):  # not there yet, or its last line being written
        return None


def _digest(location: Location) -> str:
    return hashlib.sha256(location.read_bytes()).hexdigest()


def kill_driver_and_resume(tmp_path: Path, storage: str, env: dict[str, str]) -> None:
    """Kill a search's driver (and the Ray it started) after its first finished trial, resume it:
    the finished trials are not re-run, every trial ends, the searcher keeps its history."""
    raw = {
        **RAW,
        "train": {**RAW["train"], "epochs": 2},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
        "search": {
            "space": {"train.lam": {"uniform": [0.0, 1.0]}},
            "sampler": "tpe",
            "scheduler": "fifo",
            "num_samples": 3,
            "max_concurrent_trials": 1,
            "objectives": [{"metric": "id_acc"}, {"metric": "ood_auroc"}],
        },
    }
    cfg_path = tmp_path / "resume.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    exp = Location.parse(storage).join("resume")
    cli = [sys.executable, "-m", "raymmft.cli", "search"]
    env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [*cli, str(cfg_path), "--storage", storage],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Killed as soon as a trial has finished on storage: Tune says so and its last result is
    # there. (Tune uploads the state, the searcher's state and the trial files in parallel, so
    # the state alone can land first; the searcher's state lagging is what the resume must mend,
    # a result file lagging leaves nothing this test could compare.)
    before, finished = {}, []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not finished:
            assert driver.poll() is None, "the search ended before it could be killed"
            time.sleep(1)
            before = _states(exp)
            finished = [
                t for t, s in before.items() if s == "TERMINATED" and _last_epoch(exp, t) == 2
            ]
        assert finished, "no trial finished within 5 minutes"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
    result_files = {t: _result_file(exp, t) for t in finished}
    digests = {t: _digest(p) for t, p in result_files.items()}
    time.sleep(2)

    resumed = subprocess.run(
        [*cli, "--resume", exp.uri],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = _states(exp)
    assert len(after) == 3 and set(after.values()) == {"TERMINATED"}, after
    assert set(before) <= set(after)
    for t, path in result_files.items():
        assert _digest(path) == digests[t], f"finished trial {t} was re-run"
    for t in after:
        lines = _result_file(exp, t).read_text().splitlines()
        epochs = [json.loads(line)["epoch"] for line in lines]
        assert epochs[-1] == 2 and epochs == sorted(epochs), (t, epochs)

    from ray.tune.search.optuna import OptunaSearch

    local = tmp_path / "restored"
    exp.download_dir(local)  # the searcher's state, wherever the experiment lives
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(local))
    states = [t.state.name for t in searcher._ot_study.trials]
    assert states.count("COMPLETE") == 3, "the restored searcher kept its history"
    assert "best trial" in resumed.stdout and "trials.parquet" in resumed.stdout
