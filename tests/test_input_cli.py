"""Bad command-line input: flags the parser refuses, options out of range and output paths
(--out, --neg-cache, convert-parquet's OUT) checked before the work; a training run that fails is
one line with exit status 1, not a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from bad_input import EVALUATE, ROOT, _config, _error

from raymmft.cli import main


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    from test_report import make_experiment

    exp = make_experiment(tmp_path / "e")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _error(capsys, ["report", str(exp), "--out", str(blocker)]) == (
        f"--out {blocker}: is a file, not a directory"
    )
    assert _error(capsys, ["report", str(exp), "--out", str(blocker / "sub")]) == (
        f"--out {blocker / 'sub'}: cannot create it ({blocker} is a file)"
    )
    started = time.time()
    assert _error(capsys, ["evaluate", *EVALUATE, "--out", str(tmp_path)]) == (
        f"--out {tmp_path}: is a directory, not a file"
    )
    assert _error(capsys, ["evaluate", *EVALUATE, "--out", str(blocker / "r.json")]) == (
        f"--out {blocker / 'r.json'}: cannot create it ({blocker} is a file)"
    )
    assert time.time() - started < 10, "refused before the evaluation ran"
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")
    assert _error(capsys, ["convert-parquet", str(folder), str(blocker)]) == (
        f"OUT {blocker}: is a file, not a directory"
    )


def test_more_outputs_and_options_checked_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _error(capsys, ["compare-world", "--out", str(tmp_path), "--lams", "0"]) == (
        f"--out {tmp_path}: is a directory, not a file"
    )
    assert _error(capsys, ["compare-world", "--threads", "0"]) == "--threads must be >= 1, got 0"
    assert _error(capsys, ["evaluate", *EVALUATE, "--neg-cache", str(blocker)]) == (
        f"--neg-cache {blocker}: is a file, not a directory"
    )
    assert _error(capsys, ["evaluate", *EVALUATE, "--device", "tpu"]) == (
        "--device 'tpu': expected auto, cpu, cuda, cuda:N or mps"
    )
    if not torch.cuda.is_available():
        assert _error(capsys, ["evaluate", *EVALUATE, "--device", "cuda:1"]) == (
            "--device cuda:1: no CUDA GPU is visible here; use --device cpu"
        )
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")
    inside = folder / "shards"
    assert _error(capsys, ["convert-parquet", str(folder), str(inside)]) == (
        f"OUT {inside} is inside ROOT {folder}: the shards would become a class folder of the "
        "ImageFolder; write them elsewhere"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["cat"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["evaluate", *EVALUATE, "--batch-size", "abc"],
            "raymmft evaluate: argument --batch-size: invalid int value: 'abc' (see raymmft "
            "evaluate --help)",
        ),
        (
            ["evaluate", "--arch", "raymmft-tiny", "--id", "builtin:shapes"],
            "raymmft evaluate: the following arguments are required: --ood (see raymmft "
            "evaluate --help)",
        ),
        (
            ["search", "--set"],
            "raymmft search: argument --set: expected one argument (see raymmft search --help)",
        ),
    ],
)
def test_a_flag_the_parser_refuses_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_convert_parquet_refuses_a_folder_that_holds_other_files(tmp_path, capsys):
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _error(capsys, ["convert-parquet", str(folder), str(out)]) == (
        f"OUT {out}: the directory is not empty (it holds notes.txt); give a new or empty one"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.ray
def test_a_failed_training_run_is_one_line_and_exit_1(tmp_path):
    """A run that starts and fails (lr 1e4 diverges to a NaN loss) is not a traceback."""
    path = _config(tmp_path, train={"epochs": 3, "lr": 1.0e4}, search={"space": {"train.seed": 0}})
    result = subprocess.run(
        [sys.executable, "-m", "raymmft.cli", "train", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    # the weights diverge: a NaN loss, or NaN logits at the first evaluation
    assert errors[0].startswith("error: training failed: worker rank 0: ")
    assert "NaN" in errors[0] or "nan" in errors[0]
