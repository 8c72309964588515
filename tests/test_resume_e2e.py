"""Issue 25, causes 1-4, through the CLI and real Ray, with a config written in the test's own
folder: a search interrupted at the points a user meets (Ctrl-C after an epoch's checkpoint
and before Tune's record of it, at the last epoch; SIGTERM mid-training; Ctrl-C during the
chosen candidate's test evaluation) and resumed reports every epoch exactly once, equal to an
uninterrupted run with the same seed, in ``result.json``, ``progress.csv``, TensorBoard and
``trials.parquet``. Two drivers on one experiment: the second is refused in one line and the
first's result is complete; ``--resume`` of a running search is refused. A start interrupted
in its preparation step leaves nothing behind.

Pauses at exact points come from ``RAYMMFT_PAUSE`` (``raymmft.faults``)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

EPOCHS = 4
CONFIG = f"""\
model: {{arch: raymmft-tiny}}
data:
  id_train: {{uri: "builtin:shapes", split: train, classes: [pink square, pink circle, blue star, blue triangle], per_class: 30}}
  id_val: {{uri: "builtin:shapes", split: val, classes: [pink square, pink circle, blue star, blue triangle], per_class: 10}}
  ood_val: [{{uri: "builtin:shapes", split: val, classes: far_ood, per_class: 10}}]
  ood_test: [{{uri: "builtin:shapes", split: test, classes: far_ood, per_class: 10}}]
train: {{epochs: {EPOCHS}, batch_size: 20}}
eval: {{scores: [mcm, energy], ood_score: mcm}}
search:
  space:
    train.lam: {{uniform: [0.0, 1.0]}}
  scheduler: fifo
  num_samples: 1
resources: {{num_workers: 2, cpus_per_worker: 1}}
"""
# compared between the interrupted and the uninterrupted run, epoch by epoch
COMPARED = ("train_loss", "id_acc", "ood_auroc", "score", "lr", "step")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYMMFT_PAUSE")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _start(home: Path, args: list[str], log: str, **env) -> subprocess.Popen:
    out = open(home / log, "w")  # noqa: SIM115 (closed when the process ends)
    return subprocess.Popen(
        [sys.executable, "-m", "raymmft.cli", *args],
        cwd=home,
        env=_env(**env),
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, home: Path, log: str, timeout: float = 600) -> tuple[int, str]:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # never leave a driver (and its Ray) behind for the next test
        raise
    return code, (home / log).read_text()


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the search ended (exit {proc.returncode}) before {what}")
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _search(home: Path, name: str, log: str, **env) -> subprocess.Popen:
    return _start(home, ["search", "mine.yaml", "--name", name], log, **env)


def _resume(home: Path, name: str, log: str) -> tuple[int, str]:
    exp = home / "raymmft_results" / name
    return _finish(_start(home, ["search", "--resume", str(exp)], log), home, log)


def _result_lines(exp: Path) -> list[dict]:
    (trial,) = exp.glob("trial_driver_*/result.json")
    return [json.loads(line) for line in trial.read_text().splitlines() if line.strip()]


def _progress_rows(exp: Path) -> list[dict]:
    (trial,) = exp.glob("trial_driver_*/progress.csv")
    with trial.open() as f:
        return list(csv.DictReader(f))


def _tensorboard(exp: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in (exp / "tensorboard").iterdir() if p.name != "zero-shot"]
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in ("eval/id_acc", "train/loss")
    }


def _trial_row(exp: Path) -> dict:
    import pyarrow.parquet as pq

    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    (row,) = [r for r in rows if not r["baseline"]]
    return row


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("user")
    (home / "mine.yaml").write_text(CONFIG)
    return home


@pytest.fixture(scope="module")
def reference(home):
    """The uninterrupted run, started twice at once: one driver is refused, the other's result
    is the reference. Before that, a start interrupted during its preparation step."""
    paused = _search(home, "ref", "prep.log", RAYMMFT_PAUSE=f"prepare:{home / 'prep.marker'}")
    _wait_for(lambda: (home / "prep.marker").exists(), "the preparation step", paused)
    paused.send_signal(signal.SIGINT)
    prep_code, prep_log = _finish(paused, home, "prep.log", timeout=120)
    left = (home / "raymmft_results" / "ref").exists()
    first = _search(home, "ref", "ref-a.log")
    second = _search(home, "ref", "ref-b.log")
    runs = [_finish(first, home, "ref-a.log"), _finish(second, home, "ref-b.log")]
    return {
        "prep": (prep_code, prep_log, left),
        "runs": runs,
        "exp": home / "raymmft_results" / "ref",
    }


def test_an_interrupted_start_leaves_nothing_behind(reference):
    code, log, left = reference["prep"]
    assert code == 130, log[-2000:]
    assert not left, "the interrupted start left its experiment directory"


def test_two_drivers_on_one_experiment_one_is_refused_the_other_completes(reference):
    (code_a, log_a), (code_b, log_b) = reference["runs"]
    assert sorted([code_a, code_b]) == [0, 1], log_a[-2000:] + log_b[-2000:]
    refused = log_a if code_a == 1 else log_b
    last = refused.strip().splitlines()[-1]
    exp = reference["exp"]
    # the lease is read first; only a start in the few ms between the other's mkdir and its
    # lease sees the directory without one
    in_use = f"error: experiment {exp} is in use by another driver (host "
    exists = f"error: experiment 'ref' already exists in {exp.parent}; use --resume"
    assert last.startswith((in_use, exists)), last
    if last.startswith(in_use):
        assert last.endswith("(a lease whose heartbeat is older than 120 s is taken over)")
    assert "Traceback" not in refused
    lines = _result_lines(exp)
    assert [r["epoch"] for r in lines] == list(range(1, EPOCHS + 1))
    assert not (exp / ".raymmft-lease.json").exists()  # given back at the end


def test_the_final_evaluation_on_every_worker_equals_one_process(home, reference):
    """The search's test evaluation of the chosen trial runs on both of a trial's workers
    (``evaluate_remote``, each encoding its share); ``raymmft evaluate`` of the same
    checkpoint in one process (no Ray) gives the same metrics."""
    exp = reference["exp"]
    saved = json.loads((exp / "test_evaluation.json").read_text())
    assert saved["checkpoint"] is not None  # the fine-tuned trial is chosen here
    assert list(exp.glob("group_runs/evaluation-*"))  # a Ray Train run of its own
    ids = "pink square,pink circle,blue star,blue triangle"
    out = home / "one-process.json"
    args = ["evaluate", "--arch", "raymmft-tiny", "--checkpoint", saved["checkpoint"]]
    args += ["--id", f"builtin:shapes?split=val&classes={ids}&per_class=10"]
    args += ["--ood", "builtin:shapes?split=test&classes=far_ood&per_class=10"]
    args += ["--scores", "mcm,energy", "--primary-score", "mcm", "--out", str(out), "--no-progress"]
    code, log = _finish(_start(home, args, "evaluate.log"), home, "evaluate.log")
    assert code == 0, log[-3000:]
    one = json.loads(out.read_text())
    assert one["num_id"] == saved["num_id"] == 40
    assert one["id_accuracy"] == pytest.approx(saved["id_accuracy"], abs=1e-6)
    for score in ("mcm", "energy"):
        for metric in ("auroc", "fpr95", "aupr_in"):
            assert one["mean"][score][metric] == pytest.approx(
                saved["mean"][score][metric], abs=1e-6
            ), (score, metric)


def _assert_same_history(exp: Path, ref: Path) -> None:
    got, want = _result_lines(exp), _result_lines(ref)
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))
    assert [r["training_iteration"] for r in got] == list(range(1, EPOCHS + 1))
    for g, w in zip(got, want):
        for key in COMPARED:
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-6), (g["epoch"], key)
    rows = _progress_rows(exp)
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    for r, w in zip(rows, want):
        assert float(r["id_acc"]) == pytest.approx(w["id_acc"], abs=1e-6)
    board, ref_board = _tensorboard(exp), _tensorboard(ref)
    for tag, points in board.items():
        steps = [s for s, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: a step twice: {steps}"
        assert steps == [s for s, _ in ref_board[tag]], tag
        for (_, v), (_, rv) in zip(points, ref_board[tag]):
            assert v == pytest.approx(rv, rel=1e-5, abs=1e-6), tag
    row, ref_row = _trial_row(exp), _trial_row(ref)
    assert row["epochs"] == EPOCHS and row["stop_reason"] == "completed"
    for key in ("id_acc", "ood_auroc", "score", "best_id_acc", "best_ood_auroc"):
        if key in ref_row:
            assert row[key] == pytest.approx(ref_row[key], abs=1e-6), key


def test_ctrl_c_after_the_last_checkpoint_before_tunes_record_loses_and_repeats_nothing(
    home, reference
):
    """The Train checkpoint of the last epoch is written, Tune has not recorded the epoch: the
    resumed run's loop runs zero epochs and reports the last one from its checkpoint."""
    marker = home / "record.marker"
    proc = _search(home, "record", "record-1.log", RAYMMFT_PAUSE=f"record:{EPOCHS}:{marker}")
    _wait_for(marker.exists, f"the record of epoch {EPOCHS}", proc)
    proc.send_signal(signal.SIGINT)
    code, log = _finish(proc, home, "record-1.log")
    assert code == 130, log[-3000:]
    exp = home / "raymmft_results" / "record"
    # Tune recorded every epoch but the last, whose checkpoint is written
    assert [r["epoch"] for r in _result_lines(exp)] == list(range(1, EPOCHS))
    assert len([p for p in exp.glob("train_runs/*/checkpoint_*") if p.is_dir()]) == 2
    assert (
        log.strip()
        .splitlines()[-1]
        .startswith(
            "search interrupted with 1 unfinished trial(s); nothing is lost. Resume with: "
            "raymmft search --resume "
        )
    )
    code, log = _resume(home, "record", "record-2.log")
    assert code == 0, log[-3000:]
    _assert_same_history(exp, reference["exp"])


def test_sigterm_mid_training_then_ctrl_c_in_the_test_evaluation_then_resume(home, reference):
    """SIGTERM to the driver mid-training: one error line with the resume command, exit 1; a
    --resume while it runs is refused; the resumed search, interrupted again during the chosen
    candidate's test evaluation, resumes once more and completes with every epoch once."""
    exp = home / "raymmft_results" / "term"
    # mid-training: the driver waits before Tune records epoch 3 (its checkpoint is written)
    marker = home / "term.marker"
    proc = _search(home, "term", "term-1.log", RAYMMFT_PAUSE=f"record:3:{marker}")
    _wait_for(marker.exists, "epoch 3", proc)
    code, log = _finish(
        _start(home, ["search", "--resume", str(exp)], "busy.log"), home, "busy.log"
    )
    assert code == 1 and log.strip().splitlines()[-1].startswith(
        f"error: experiment {exp} is in use by another driver (host "
    ), log[-2000:]
    proc.send_signal(signal.SIGTERM)
    code, log = _finish(proc, home, "term-1.log")
    assert code == 1, log[-3000:]
    assert log.strip().splitlines()[-1] == (
        "error: the search was stopped by SIGTERM with 1 unfinished trial(s); nothing is lost. "
        f"Resume with: raymmft search --resume {exp}"
    )
    assert "Traceback" not in log
    # resumed, and interrupted while the chosen candidate is evaluated on the test sets
    marker = home / "test-evaluation.marker"
    again = _start(
        home,
        ["search", "--resume", str(exp)],
        "term-2.log",
        RAYMMFT_PAUSE=f"test-evaluation:{marker}",
    )
    _wait_for(marker.exists, "the test evaluation", again)
    again.send_signal(signal.SIGINT)
    code, log = _finish(again, home, "term-2.log")
    assert code == 130, log[-3000:]
    assert log.strip().splitlines()[-1] == (
        "search interrupted after its trials ended; nothing is lost. "
        f"Resume with: raymmft search --resume {exp}"
    )
    code, log = _resume(home, "term", "term-3.log")
    assert code == 0, log[-3000:]
    assert (exp / "test_evaluation.json").is_file()
    _assert_same_history(exp, reference["exp"])


@pytest.fixture
def small_disk(home):
    """A 300 MiB tmpfs of the test's own for the storage (mounting needs CAP_SYS_ADMIN, which
    the test machines have; elsewhere the test is skipped, saying why)."""
    mount = home / "small-disk"
    mount.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(
            "the storage-fault test fills a disk of its own and remounts it read-only, which "
            "needs a tmpfs mount (root with CAP_SYS_ADMIN, as on the CI machines); here mount "
            f"said: {done.stderr.strip()[:200]}"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _keep_full(mount: Path, proc: subprocess.Popen, leave_mib: int = 2) -> Path:
    """Fill the disk, and keep it full while ``proc`` runs (its old checkpoints are deleted as
    new ones are written), as another process writing there would."""
    import shutil
    import threading

    filler = mount / "filler"

    def fill():
        with filler.open("ab") as f:
            while proc.poll() is None:
                free = shutil.disk_usage(mount).free // 2**20
                for _ in range(max(0, free - leave_mib)):
                    try:
                        f.write(b"\0" * 2**20)
                        f.flush()
                    except OSError:
                        break
                time.sleep(0.1)

    threading.Thread(target=fill, daemon=True).start()
    return filler


def _remount(mount: Path, mode: str) -> None:
    """Remount read-only (or back); the kernel refuses while a file there is open for writing
    (a checkpoint being uploaded), so try again for a few seconds."""
    for _ in range(100):
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"cannot remount {mount} {mode}: {done.stderr.decode().strip()}")


def test_a_full_then_read_only_storage_stops_the_search_in_one_line_and_it_resumes(
    home, reference, small_disk
):
    """The storage fills up after the first checkpoint (and stays full): one error line naming
    the fault and the resume command, exit 1; a resume while it is still full is refused before
    it writes anything; freed, the search resumes, and the storage turned read-only after the
    resumed run's first checkpoint stops it the same way; writable again, it resumes and
    completes with every epoch once, as the reference."""
    exp = small_disk / "faults"
    resume = f"Once the storage is fixed, resume with: raymmft search --resume {exp}"

    def checkpoints() -> set[Path]:
        return {p for p in exp.glob("train_runs/*/checkpoint_*") if p.is_dir()}

    def new_checkpoints(n: int, since: set[Path] = frozenset()):
        # checkpoints reach the storage as they are made (Tune copies its result files later)
        return lambda: len(checkpoints() - since) >= n

    proc = _start(
        home,
        ["search", "mine.yaml", "--storage", str(small_disk), "--name", "faults"],
        "full-1.log",
    )
    _wait_for(new_checkpoints(1), "the first checkpoint", proc)
    filler = _keep_full(small_disk, proc)
    code, log = _finish(proc, home, "full-1.log")
    last = log.strip().splitlines()[-1]
    assert code == 1, log[-3000:]
    assert last.startswith("error: the search stopped: trial "), last
    assert "No space left on device" in last and last.endswith(resume), last
    assert "Traceback" not in log
    # still full: refused, nothing rewritten
    before = {p: p.read_bytes() for p in exp.rglob("*.json") if p.is_file()}
    code, log = _finish(
        _start(home, ["search", "--resume", str(exp)], "full-2.log"), home, "full-2.log"
    )
    assert code == 1
    assert log.strip().splitlines()[-1].startswith(f"error: storage {small_disk} has ")
    assert log.strip().splitlines()[-1].endswith("; free space, then resume")
    assert {p: p.read_bytes() for p in exp.rglob("*.json") if p.is_file()} == before
    filler.unlink()
    # freed: resumed, and the storage turns read-only after the resumed run's first checkpoint
    before = checkpoints()
    proc = _start(home, ["search", "--resume", str(exp)], "full-3.log")
    _wait_for(new_checkpoints(1, before), "a checkpoint of the resumed run", proc)
    _remount(small_disk, "ro")
    try:
        code, log = _finish(proc, home, "full-3.log")
    finally:
        _remount(small_disk, "rw")
    last = log.strip().splitlines()[-1]
    assert code == 1, log[-3000:]
    assert "Read-only file system" in last and last.endswith(resume), last
    code, log = _finish(
        _start(home, ["search", "--resume", str(exp)], "full-4.log"), home, "full-4.log"
    )
    assert code == 0, log[-3000:]
    _assert_same_history(exp, reference["exp"])
