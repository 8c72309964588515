"""Searches on object storage, end to end through the CLI and real Ray, against a local S3 server
(moto_server) over the S3 wire protocol: the demo search (2 trials x 2 epochs) with the endpoint
in the environment and with it in the URI query; the best trial's test evaluation read back from
the bucket; ``raymmft evaluate --checkpoint s3://...``; TensorBoard reading the bucket; ``--resume``
of a finished search; a killed driver resumed; ``raymmft train``."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from s3_server import CREDENTIALS, free_port
from test_reliability import kill_driver_and_resume

from raymmft.storage import Location

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "demo.yaml"
SMALL = ["--set", "search.num_samples=2", "--set", "train.epochs=2"]
# storage is tested here; confirmation (tests/test_confirmation_e2e.py) would add two runs a search
SMALL += ["--set", "search.confirm.top_k=0"]


def _cli(args, env, timeout=900):
    """``raymmft ARGS`` in a fresh process with exactly the AWS settings in ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    return subprocess.run(
        [sys.executable, "-m", "raymmft.cli", *args],
        cwd=ROOT,
        env={**base, **env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module", autouse=True)
def reader_env(s3):
    """This process reads the bucket as a user would: credentials and endpoint from the
    environment (the URIs of the env-form search carry no endpoint)."""
    saved = dict(os.environ)
    os.environ.update(s3.env)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def searches(s3):
    """The demo search twice: endpoint from the environment, endpoint in the URI query."""
    env_run = _cli(
        ["search", str(DEMO), "--storage", s3.uri("e2e"), "--name", "env", *SMALL], s3.env
    )
    query_storage = s3.uri("e2e", query=True)
    query_run = _cli(
        ["search", str(DEMO), "--storage", query_storage, "--name", "query", *SMALL], CREDENTIALS
    )
    return {
        "env": (env_run, Location.parse(s3.uri("e2e/env", query=True))),
        "query": (query_run, Location.parse(s3.uri("e2e/query", query=True))),
    }


@pytest.mark.parametrize("form", ["env", "query"])
def test_search_on_s3_finishes_evaluates_and_reports(searches, s3, form):
    run, exp = searches[form]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "on the OoD *test* sets (never seen by the search):" in run.stdout
    prefix = f"e2e/{form}/"
    keys = s3.keys(prefix)
    for name in ("report/pareto.png", "report/trials.parquet", "report/curves.png"):
        assert prefix + name in keys
    assert prefix + "raymmft_config.json" in keys and prefix + "tuner.pkl" in keys
    rows = pq.read_table(
        exp.join("report", "trials.parquet").fs_path, filesystem=exp.filesystem
    ).to_pylist()
    baseline = [r for r in rows if r["baseline"]]
    candidates = [r for r in rows if not r["baseline"]]
    rows = [r for r in candidates if r["alpha"] == 1.0]  # the trials (the demo interpolates too)
    assert len(candidates) == 2 * 4  # each trial and its 3 interpolations
    assert len(rows) == 2 and {r["stop_reason"] for r in rows} == {"completed"}
    assert [r["trial_id"] for r in baseline] == ["zero-shot"]  # prepared on S3 too
    for row in rows:  # each checkpoint is a location in the bucket, with the run's own form
        assert row["checkpoint_path"].startswith(exp.join("train_runs").uri.split("?")[0])
        assert Location.parse(row["checkpoint_path"]).join("model.pt").is_file()
    # the chosen configuration's test evaluation, read from the checkpoint in the bucket
    chosen = json.loads(exp.join("test_evaluation.json").read_text())
    assert chosen["trial_id"] in run.stdout and chosen["num_id"] == 300
    near = chosen["ood"]["near-test"]["metrics"]["neglabel"]["auroc"]
    low, high = chosen["ood"]["near-test"]["metrics_ci95"]["neglabel"]["auroc"]
    printed = f"{100 * near:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
    cells = [ln.split()[:3] for ln in run.stdout.splitlines()]
    assert ["near-test", "440", f"{100 * near:.2f}"] in cells and printed in run.stdout
    run_name = chosen["trial_id"].split("@")[0]  # an interpolated candidate's trial
    assert any(k.startswith(f"{prefix}tensorboard/{run_name}/events") for k in keys)


def test_both_endpoint_forms_give_the_same_search(searches):
    """Same config and seeds: the two searches found the same trials with the same metrics."""
    tables = [searches[f][1].join("test_evaluation.json").read_text() for f in ("env", "query")]
    env, query = (json.loads(t) for t in tables)
    assert env["params"] == query["params"] and env["mean"] == query["mean"]


def test_evaluate_checkpoint_from_the_bucket_equals_the_search(searches, s3, tmp_path):
    _, exp = searches["query"]
    chosen = json.loads(exp.join("test_evaluation.json").read_text())
    # the chosen candidate: a trial's checkpoint, or the zero-shot starting model itself
    weights = [f"--checkpoint={chosen['checkpoint']}"] if chosen["checkpoint"] else []
    alpha = chosen["params"].get("model.interpolate")
    weights += [f"--interpolate={alpha}"] if alpha is not None else []
    demo = yaml.safe_load(DEMO.read_text())
    classes = ",".join(demo["data"]["id_val"]["classes"])
    out = tmp_path / "eval.json"
    run = _cli(
        [
            "evaluate",
            "--arch=raymmft-world",
            "--pretrained=raymmft-world",
            *weights,
            f"--id=builtin:shapes?split=val&classes={classes}&per_class=25",
            "--ood=builtin:shapes?split=test&classes=near_ood&per_class=5&name=near-test",
            "--ood=builtin:shapes?split=test&classes=far_ood&per_class=50&name=far-test",
            "--scores=neglabel,mcm,msp,energy",
            "--neg-corpus=world",
            "--neg-cache=none",
            f"--out={out}",
        ],
        CREDENTIALS,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    evaluated = json.loads(out.read_text())
    assert evaluated["id_accuracy"] == pytest.approx(chosen["id_accuracy"], abs=1e-6)
    assert evaluated["modality_gap"] == pytest.approx(chosen["modality_gap"], abs=1e-6)
    for score, metrics in chosen["mean"].items():
        for metric, value in metrics.items():
            assert evaluated["mean"][score][metric] == pytest.approx(value, abs=1e-6), (
                score,
                metric,
            )


def test_tensorboard_reads_the_events_in_the_bucket(searches, s3):
    """The command the report prints (S3_ENDPOINT, no query) serves every trial's scalars."""
    run, exp = searches["query"]
    command = next(ln for ln in run.stdout.splitlines() if ln.startswith("TensorBoard: "))
    assert (
        command
        == f"TensorBoard: S3_ENDPOINT={s3.endpoint} tensorboard --logdir s3://raymmft/e2e/query"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("tensorboard")),
            "--logdir=s3://raymmft/e2e/query",
            f"--port={port}",
            "--load_fast=false",
        ],
        env={**env, **CREDENTIALS, "S3_ENDPOINT": s3.endpoint},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows = pq.read_table(
            exp.join("report", "trials.parquet").fs_path, filesystem=exp.filesystem
        ).to_pylist()
        expected = {
            f"tensorboard/{r['trial_id']}": r["id_acc"]
            for r in rows
            if not r["baseline"] and r["alpha"] == 1.0
        }
        seen: dict = {}
        deadline = time.time() + 90
        while time.time() < deadline and set(seen) != set(expected):
            time.sleep(2)
            for run_name in expected:
                url = (
                    f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?"
                    f"run={run_name}&tag=eval/id_acc"
                )
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        points = json.loads(response.read())
                except OSError:
                    continue
                if len(points) == 2:  # both epochs' evaluations
                    seen[run_name] = points[-1][2]
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert set(seen) == set(expected), "TensorBoard did not serve every trial from the bucket"
    for run_name, value in seen.items():
        assert value == pytest.approx(expected[run_name], rel=1e-6)


def test_resume_of_a_finished_search_reruns_nothing(searches, s3):
    _, exp = searches["query"]
    results = {k: v for k, v in s3.keys("e2e/query/").items() if k.endswith("result.json")}
    checkpoints = {k for k in s3.keys("e2e/query/train_runs/")}
    run = _cli(["search", "--resume", exp.uri], CREDENTIALS)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "best trial" in run.stdout
    after = s3.keys("e2e/query/")
    assert {k: v for k, v in after.items() if k.endswith("result.json")} == results
    assert {k for k in after if k.startswith("e2e/query/train_runs/")} == checkpoints


def test_killed_driver_resumes_on_s3(s3, tmp_path):
    kill_driver_and_resume(tmp_path, s3.uri("killed", query=True), CREDENTIALS)


def test_train_on_s3(s3, tmp_path):
    storage = s3.uri("train", query=True)
    run = _cli(
        ["train", str(DEMO), "--storage", storage, "--name", "one", "--set", "train.epochs=1"],
        CREDENTIALS,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    printed = next(ln for ln in run.stdout.splitlines() if ln.startswith("checkpoint: "))
    checkpoint = Location.parse(printed.removeprefix("checkpoint: "))
    assert checkpoint.uri.startswith(s3.uri("train/one/checkpoint_"))
    assert checkpoint.join("model.pt").is_file()
    assert "OoD *test* sets:" in run.stdout
    assert any(k.startswith("train/one/tensorboard/run/events") for k in s3.keys("train/one/"))
