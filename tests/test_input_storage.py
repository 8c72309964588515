"""Bad input about where an experiment lives: storage that cannot be written, an experiment that
already exists (never overwritten), experiment names that are empty, too long or hold white space
or control characters, and --resume refusals (resume loads Tune's pickled state: only a started
experiment that only you can write, whose state is not damaged). Each through the real CLI, with
the exact one-line message and exit status 2, and nothing loaded or written before the error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml
from bad_input import DEMO, _config, _error

from raymmft.cli import main


def test_existing_experiment_is_never_overwritten(tmp_path, capsys):
    exp = tmp_path / "results" / "bad"
    exp.mkdir(parents=True)
    (exp / "keep.txt").write_text("results of an earlier search")
    raw = {**DEMO, "storage": {"path": str(tmp_path / "results")}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: experiment 'bad' already exists in {tmp_path / 'results'}; "
        f"use --resume {exp} to continue it or --name to start another\n"
    )
    assert (exp / "keep.txt").read_text() == "results of an earlier search"


def test_resume_errors(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot resume {tmp_path / 'nope'}: no raymmft_config.json there "
        "(not a raymmft experiment)\n"
    )
    assert main(["search", "cfg.yaml", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: --resume takes the experiment's saved config: drop CONFIG, --set, --name and --storage\n"
    )
    assert main(["search"]) == 2
    assert capsys.readouterr().err == "error: give a CONFIG file, or --resume EXPERIMENT\n"


def test_unwritable_storage(tmp_path, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results directory should go")
    storage = blocker / "results"
    raw = {**DEMO, "storage": {"path": str(storage)}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: storage '{storage}' is not writable (Not a directory); give a directory you can "
        "write to with --storage or storage.path\n"
    )
    assert blocker.read_text() == "a file where the results directory should go"


class Planted:
    """A pickle that, when loaded, creates a marker file (what a hostile tuner.pkl could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _planted_experiment(tmp_path: Path, *, with_state: bool) -> tuple[Path, Path]:
    exp = tmp_path / "results" / "planted"
    exp.mkdir(parents=True)
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    (exp / "raymmft_config.json").write_text(__import__("json").dumps(cfg))
    marker = tmp_path / "payload-ran"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    if with_state:
        (exp / "experiment_state-2026-12-01_00-00-00.json").write_text('{"trial_data": []}')
    return exp, marker


def test_resume_refuses_a_folder_without_tune_state(tmp_path, capsys):
    exp, marker = _planted_experiment(tmp_path, with_state=False)
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == (
        f"cannot resume {exp}: it holds no Tune experiment state (experiment_state-*.json): "
        "not a search that has started"
    )
    assert not marker.exists()


def test_resume_refuses_an_experiment_others_can_write(tmp_path, capsys):
    exp, marker = _planted_experiment(tmp_path, with_state=True)
    os.chmod(exp / "tuner.pkl", 0o666)
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == (
        f"cannot resume {exp}: {exp / 'tuner.pkl'} can be written by other users (mode 0o666); "
        "resume loads Tune's pickled state, so it resumes only an experiment no one else can "
        "change (chmod -R go-w)"
    )
    os.chmod(exp / "tuner.pkl", 0o644)
    os.chmod(exp, 0o777)
    assert "can be written by other users (mode 0o777)" in _error(
        capsys, ["search", "--resume", str(exp)]
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    "state, reason",
    [
        (
            '{"trial_data": [',
            "cannot be read (Expecting value: line 1 column 17 (char 16)); the file is damaged",
        ),
        ("[1, 2]", "holds no trial list; the file is damaged, or from another Ray version"),
        (
            '{"trial_data": [["only one half"]]}',
            "holds a trial entry Tune did not write (not enough values to unpack (expected 2, "
            "got 1)); the file is damaged, or from another Ray version",
        ),
    ],
)
def test_resume_refuses_a_damaged_tune_state(tmp_path, capsys, state, reason):
    """A state file cut off by a killed driver (or not Tune's) is refused before Ray starts."""
    import ray

    exp, marker = _planted_experiment(tmp_path, with_state=True)
    name = "experiment_state-2026-12-02_00-00-00.json"  # the newest: the one Tune restores
    (exp / name).write_text(state)
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == f"cannot resume {exp}: its Tune state {name} {reason}"
    assert not marker.exists() and not ray.is_initialized()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x80\x05\x95", "not enough data in stream to read uint8"),  # cut off while written
        (b"", "pickle exhausted before seeing STOP"),
    ],
)
def test_resume_of_a_damaged_tuner_pkl_is_one_line_before_ray_starts(
    tmp_path, capsys, data, reason
):
    import ray

    exp, marker = _planted_experiment(tmp_path, with_state=True)
    (exp / "tuner.pkl").write_bytes(data)
    before = sorted(p.name for p in exp.iterdir())
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == (
        f"cannot resume {exp}: Tune's pickled state (tuner.pkl) cannot be read ({reason}); "
        "the file is damaged"
    )
    assert not marker.exists() and not ray.is_initialized()
    assert (exp / "tuner.pkl").read_bytes() == data
    assert sorted(p.name for p in exp.iterdir()) == before  # nothing of it removed or added


def test_resume_refuses_an_experiment_of_another_user(tmp_path, capsys, monkeypatch):
    exp, marker = _planted_experiment(tmp_path, with_state=True)
    if os.geteuid() == 0:  # give the file to another user
        os.chown(exp / "tuner.pkl", 4242, 4242)
        owner = 4242
    else:  # only root can give a file away: be another user instead, for the files made here
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
        owner = real
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg.startswith(f"cannot resume {exp}: ") and not marker.exists()
    if owner == 4242:
        assert msg.startswith(
            f"cannot resume {exp}: {exp / 'tuner.pkl'} belongs to another user (uid 4242)"
        )
    else:  # the folder itself is the first item checked
        assert msg.startswith(f"cannot resume {exp}: {exp} belongs to another user (uid {owner})")


def test_a_name_too_long_for_a_file(tmp_path, capsys):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--name", "x" * 300]) == (
        "--name: experiment name is 300 bytes long; at most 255 are allowed"
    )


def test_an_empty_name(tmp_path, capsys):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--name", ""]) == "--name: experiment name is empty"


@pytest.mark.parametrize(
    "name, message",
    [
        ("   ", "experiment name '   ' starts or ends with white space"),
        (" demo", "experiment name ' demo' starts or ends with white space"),
        ("a\nb", "experiment name 'a\\nb' contains a control character ('\\n')"),
        ("a\x00b", "experiment name 'a\\x00b' contains a control character ('\\x00')"),
    ],
)
def test_a_name_that_is_blank_or_holds_control_characters(tmp_path, capsys, name, message):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--name", name]) == f"--name: {message}"
