"""Confirmation over seeds through the CLI and real Ray (issue 23): a search with
``search.confirm: {top_k: 1, seeds: 2}`` whose driver is killed after the first confirmation run
finished; ``--resume`` trains the other seed only, and the report has one row per (candidate,
seed) with distinct seeds and metrics that are not copies of each other."""

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

pytestmark = pytest.mark.ray

CONFIG = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": "builtin:shapes?split=train&classes=id&per_class=8",
        "id_val": "builtin:shapes?split=val&classes=id&per_class=4",
        "ood_val": ["builtin:shapes?split=val&classes=far_ood&per_class=8"],
        "ood_test": ["builtin:shapes?split=test&classes=far_ood&per_class=8"],
    },
    "train": {"epochs": 1, "batch_size": 24, "augment": True, "lr": 1e-3},
    "eval": {"scores": ["mcm", "neglabel"], "neglabel": {"corpus": "world"}},
    "search": {
        "space": {"train.lam": {"uniform": [0.0, 1.0]}},
        "scheduler": "fifo",
        "num_samples": 2,
        "confirm": {"top_k": 1, "seeds": 2},
    },
    "resources": {"num_workers": 1, "cpus_per_worker": 1},
    "storage": {"name": "confirmed"},
}


def _finished_runs(confirm: Path) -> dict[Path, str]:
    """Confirmation runs that Tune's saved state calls TERMINATED and whose result is on disk:
    result file -> its digest."""
    from raymmft.results.experiment import tune_state
    from raymmft.storage import Location

    if not confirm.is_dir():
        return {}
    try:
        state = tune_state(Location.parse(str(confirm)))
    except Exception:  # not written yet, or being written
        return {}
    out = {}
    for trial_id, trial in state.items():
        if trial["status"] != "TERMINATED":
            continue
        for result in confirm.glob(f"confirm_driver_{trial_id}_*/result.json"):
            if result.read_text().strip():
                out[result] = hashlib.sha256(result.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    root = tmp_path_factory.mktemp("confirm")
    (root / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    cli = [sys.executable, "-m", "raymmft.cli", "search"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [*cli, "c.yaml"],
        cwd=root,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    confirm = root / "raymmft_results" / "confirmed" / "confirm"
    finished: dict[Path, str] = {}
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not finished:
            assert driver.poll() is None, "the search ended before it could be killed"
            time.sleep(1)
            finished = _finished_runs(confirm)
        assert finished, "no confirmation run finished within 10 minutes"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait()
    time.sleep(2)
    resumed = subprocess.run(
        [*cli, "--resume", str(root / "raymmft_results" / "confirmed")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return resumed, root / "raymmft_results" / "confirmed", finished


def test_resume_of_an_interrupted_confirmation_trains_no_finished_seed_again(confirmed):
    resumed, exp, finished = confirmed
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "confirmation: resuming" in resumed.stdout
    for result, digest in finished.items():
        assert hashlib.sha256(result.read_bytes()).hexdigest() == digest, "a finished run re-ran"
    assert len(list((exp / "confirm").glob("confirm_driver_*"))) == 2


def test_confirmation_parquet_has_each_seed_with_its_own_metrics(confirmed):
    resumed, exp, _ = confirmed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    import pyarrow.parquet as pq

    runs = pq.read_table(exp / "report" / "confirmation.parquet").to_pylist()
    assert len(runs) == 3  # the candidate's own run and two further seeds
    assert len({r["candidate"] for r in runs}) == 1
    assert sorted(r["seed"] for r in runs) == [0, 1, 2]
    assert [r["own_run"] for r in runs] == [True, False, False]
    for metric in ("id_acc", "ood_auroc"):
        assert all(0 <= r[metric] <= 1 for r in runs), metric
    losses = [r["train_loss"] for r in runs]
    assert len(set(losses)) == 3, "each seed trained a model of its own"
    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    candidate = next(r for r in rows if r["trial_id"] == runs[0]["candidate"])
    assert candidate["confirm_runs"] == 3
    assert candidate["mean_id_acc"] == pytest.approx(sum(r["id_acc"] for r in runs) / 3)
    assert sum(r["chosen"] for r in rows) == 1
    assert "confirmation over seeds (mean ± std" in resumed.stdout
    assert "Confirmation over seeds" in (exp / "report" / "index.html").read_text()
    evaluation = json.loads((exp / "test_evaluation.json").read_text())
    assert evaluation["id_accuracy_ci95"][0] <= evaluation["id_accuracy"]
    assert evaluation["id_accuracy"] <= evaluation["id_accuracy_ci95"][1]
