"""A search submitted as a Ray job to a running head, as on a cluster (docs/cluster.md, section 1).

The test starts its own head (`ray start --head --block` on 127.0.0.1, 2 CPUs, token auth, its own
temp dir and ports, started from this venv so a job's `raymmft` is this venv's console script),
checks that a client without the token is refused, submits the demo search with a small override
through `ray job submit --working-dir <repo> --runtime-env cluster/runtime_env.yaml`, waits for
SUCCEEDED, checks the experiment's results on the storage and the report in the job's log, and
always stops exactly that head: SIGTERM to its `ray start --block` process, then SIGKILL to any
process still naming the head's temp dir. `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"

# The demo search, small: one trial of one epoch of a few steps, one OoD set, the built-in
# world-concept NegLabel corpus instead of mining WordNet.
OVERRIDES = [
    "search.num_samples=1",
    "search.confirm.top_k=0",  # the job and its storage are tested here, not the confirmation
    "eval.interpolation=[]",
    "train.epochs=1",
    "train.max_steps_per_epoch=4",
    "resources.num_workers=1",
    "data.id_train.per_class=8",
    "data.id_val.per_class=4",
    "data.ood_val=[{uri: 'builtin:shapes', split: val, classes: far_ood, per_class: 10, name: far-val}]",
    "data.ood_test=[{uri: 'builtin:shapes', split: test, classes: far_ood, per_class: 10, name: far-test}]",
    "eval.neglabel.corpus=world",
    "eval.neglabel.ngroups=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_naming(marker: str) -> list[int]:
    """Pids whose command line or environment names ``marker`` (this head's temp dir)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            blob = (d / "cmdline").read_bytes() + b"\0" + (d / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(d.name))
    return found


def _get(url: str, token: str | None, timeout: float = 10):
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


class LocalHead:
    """`ray start --head --block` of our own: its ports, temp dir and token; stop() stops only it."""

    def __init__(self):
        # Short: Ray's unix sockets live under it, and socket paths are limited to 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="rmj-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        token_file = self.temp / "auth_token"
        token_file.write_text(self.token)
        self.dashboard_port = _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # The job's `raymmft` / `python` come from the PATH of `ray start`: this venv first.
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)  # not ~/.ray/auth_token: leave it alone
        self.env = env
        self.log = (self.temp / "ray-start.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "2",
                "--num-gpus",
                "0",
                "--object-store-memory",
                str(400 * 1024**2),
                "--port",
                str(_free_port()),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--dashboard-agent-listen-port",
                str(_free_port()),
                "--ray-client-server-port",
                str(_free_port()),
                "--temp-dir",
                str(self.temp / "ray"),
                "--disable-usage-stats",
            ],  # fmt: skip
            env=env,
            cwd=self.temp,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.temp / 'ray-start.log').read_text()}")
            try:
                _get(f"{self.address}/api/version", self.token, timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise TimeoutError(f"the head's dashboard did not answer within {timeout} s")

    def stop(self) -> list[int]:
        """Stop this head; return the pids that had to be killed after ray start exited."""
        marker = str(self.temp)
        if self.proc.poll() is None:
            # ray start --block tears down its processes; it waits ~30 s on some of them, which
            # this test has no use for: what is left after 5 s is killed (the group, then by name)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        stragglers = _processes_naming(marker)
        for pid in stragglers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while _processes_naming(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.log.close()
        return stragglers


@pytest.fixture
def head():
    if not RAY.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    h = LocalHead()
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()
        left = _processes_naming(str(h.temp))
        shutil.rmtree(h.temp, ignore_errors=True)
        assert not left, f"processes of the test's head still running: {left}"


def test_demo_search_submitted_as_a_job_succeeds_and_writes_results(head, tmp_path):
    # Token auth is on: the job API refuses a request without the token ...
    with pytest.raises(urllib.error.HTTPError) as refused:
        _get(f"{head.address}/api/jobs/", token=None)
    assert refused.value.code == 401
    # ... and so does the CLI without RAY_AUTH_MODE=token (and no token file in its HOME).
    bare = {k: v for k, v in head.env.items() if not k.startswith("RAY_")}
    bare["HOME"] = str(tmp_path)
    cli = subprocess.run(
        [str(RAY), "job", "list", "--address", head.address],
        env=bare, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode != 0
    assert "Authentication required: Unauthorized: Missing authentication token" in (
        cli.stdout + cli.stderr
    )

    # A job's `python` is the one on the PATH of `ray start` (this venv): raymmft imports, and
    # sees the cluster it runs on.
    probe = subprocess.run(
        [
            str(RAY), "job", "submit", "--address", head.address, "--",
            "python", "-c",
            "import ray, sys; ray.init(); from raymmft.cluster import cluster_summary; "
            "print('python:', sys.executable); print('cluster:', cluster_summary())",
        ],  # fmt: skip
        env=head.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, (probe.stdout + probe.stderr)[-3000:]
    assert f"python: {VENV_BIN / 'python'}" in probe.stdout
    assert "cluster: 1 node, 2 CPUs, 0 GPUs\n" in probe.stdout

    storage, name = tmp_path / "results", "cluster-job"
    submission = f"raymmft-test-{uuid.uuid4().hex[:8]}"
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    submit = subprocess.run(
        [
            str(RAY),
            "job",
            "submit",
            "--address",
            head.address,
            "--working-dir",
            str(REPO),
            "--runtime-env",
            str(REPO / "cluster" / "runtime_env.yaml"),
            "--submission-id",
            submission,
            "--",
            "raymmft",
            "search",
            "search_spaces/demo.yaml",
            "--storage",
            str(storage),
            "--name",
            name,
            *sets,
        ],  # fmt: skip
        env=head.env,  # RAY_AUTH_MODE=token and the token file
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log[-6000:]

    job = _get(f"{head.address}/api/jobs/{submission}", head.token)
    assert job["status"] == "SUCCEEDED"
    assert job["entrypoint"].startswith("raymmft search search_spaces/demo.yaml")

    exp = storage / name
    saved = json.loads((exp / "raymmft_config.json").read_text())
    assert saved["search"]["num_samples"] == 1 and saved["train"]["epochs"] == 1
    assert list(exp.glob("experiment_state-*.json")), sorted(p.name for p in exp.iterdir())
    results = sorted(exp.glob("*/result.json"))
    assert len(results) == 1, sorted(p.name for p in exp.iterdir())
    reports = [json.loads(line) for line in results[0].read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in reports] == [1]
    for metric in ("id_acc", "ood_auroc", "ood_fpr95"):
        assert 0.0 <= reports[-1][metric] <= 1.0, metric
    trial_id = reports[-1]["trial_id"]
    assert list((exp / "train_runs" / trial_id).glob("checkpoint_*")), "no checkpoint on storage"
    # The report printed at the end of the search, in the job's log.
    logs = _get(f"{head.address}/api/jobs/{submission}/logs", head.token)["logs"]
    assert f"best trial {trial_id}" in logs, logs[-3000:]
