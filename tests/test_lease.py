"""The experiment lease (``raymmft.lease``, issue 25 cause 2) without Ray: one holder at a time on
a local path and on S3 (a real ``moto_server``), a stale lease taken over (old heartbeat; a dead
process on this host), a live one never, and a start that fails leaving nothing behind."""

import json
import subprocess
import sys
import time

import pytest

from raymmft import lease as lease_module
from raymmft.errors import ExperimentInUseError
from raymmft.lease import LEASE_FILE, ExperimentLease
from raymmft.storage import Location


def test_a_second_holder_is_refused_in_one_line_until_the_first_gives_it_back(tmp_path):
    exp = Location.parse(str(tmp_path / "exp"))
    first = ExperimentLease(exp, command="raymmft search a.yaml").acquire()
    assert first.created and (tmp_path / "exp" / LEASE_FILE).is_file()
    with pytest.raises(ExperimentInUseError) as refused:
        ExperimentLease(exp, command="raymmft search --resume exp").acquire()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"experiment {exp} is in use by another driver (host ")
    assert "raymmft search a.yaml, heartbeat 0 s ago)" in message
    first.release()
    assert not (tmp_path / "exp" / LEASE_FILE).exists()
    second = ExperimentLease(exp).acquire()
    assert not second.created  # the directory was there
    second.release()


def test_a_stale_lease_is_taken_over_and_a_live_one_of_another_host_is_not(tmp_path, capsys):
    exp = Location.parse(str(tmp_path / "exp"))
    (tmp_path / "exp").mkdir()
    path = tmp_path / "exp" / LEASE_FILE
    other = {"owner": "x", "host": "elsewhere", "pid": 1, "command": "c"}
    path.write_text(json.dumps({**other, "heartbeat": time.time() - 121}))
    taken = ExperimentLease(exp).acquire()
    assert "taking over the stale lease" in capsys.readouterr().out
    assert json.loads(path.read_text())["owner"] == taken.record["owner"]
    taken.release()
    path.write_text(json.dumps({**other, "heartbeat": time.time() - 5}))
    with pytest.raises(ExperimentInUseError):
        ExperimentLease(exp).acquire()


def test_the_lease_of_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path):
    exp = Location.parse(str(tmp_path / "exp"))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from raymmft.lease import ExperimentLease; "
            "from raymmft.storage import Location; "
            f"ExperimentLease(Location.parse({str(exp)!r})).acquire(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ExperimentInUseError):
        ExperimentLease(exp).acquire()
    holder.kill()
    holder.wait()
    ExperimentLease(exp).acquire().release()


def test_the_heartbeat_keeps_the_lease_fresh_and_never_writes_over_a_new_holder(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(lease_module, "HEARTBEAT_S", 0.05)
    exp = Location.parse(str(tmp_path / "exp"))
    held = ExperimentLease(exp).acquire()
    first_beat = held.record["heartbeat"]
    time.sleep(0.3)
    stored = json.loads((tmp_path / "exp" / LEASE_FILE).read_text())
    assert stored["heartbeat"] > first_beat
    (tmp_path / "exp" / LEASE_FILE).write_text(json.dumps({**stored, "owner": "someone else"}))
    time.sleep(0.3)
    assert json.loads((tmp_path / "exp" / LEASE_FILE).read_text())["owner"] == "someone else"
    held.release()  # not its lease any more: left alone
    assert (tmp_path / "exp" / LEASE_FILE).exists()


def test_a_start_that_fails_before_it_holds_results_leaves_nothing_behind(tmp_path):
    exp = Location.parse(str(tmp_path / "exp"))
    with pytest.raises(KeyboardInterrupt), ExperimentLease(exp):
        (tmp_path / "exp" / "raymmft_config.json").write_text("{}")
        raise KeyboardInterrupt
    assert not (tmp_path / "exp").exists()
    # a directory that was there, or a start that holds results, is kept
    with pytest.raises(RuntimeError), ExperimentLease(exp) as started:
        started.started = True
        raise RuntimeError
    assert (tmp_path / "exp").is_dir() and not (tmp_path / "exp" / LEASE_FILE).exists()


def test_on_s3_one_of_two_holders_wins_over_the_real_wire_protocol(s3, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(lease_module, "SETTLE_S", 0.2)
    # the endpoint in the URI: a URI without one would leave this process's cached filesystem
    # for the bucket pointing at this module's server
    exp = Location.parse(s3.uri("leases/exp", query=True))
    first = ExperimentLease(exp).acquire()
    stored = s3.client().get_object(Bucket="raymmft", Key=f"leases/exp/{LEASE_FILE}")
    assert json.loads(stored["Body"].read())["owner"] == first.record["owner"]
    with pytest.raises(ExperimentInUseError):
        ExperimentLease(exp).acquire()
    first.release()
    assert f"leases/exp/{LEASE_FILE}" not in s3.keys("leases/exp")
    ExperimentLease(exp).acquire().release()
