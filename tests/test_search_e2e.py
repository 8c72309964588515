"""End to end through the CLI and real Ray: a search of 3 trials x 2 Train workers on the shapes
world; every evaluation reports the metrics; Optuna saw every trial; ASHA stops a weak trial; a
diverging (NaN) trial fails with its reason while the others finish."""

import base64
import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from raymmft.cli import main

pytestmark = pytest.mark.ray

CONFIG = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 20},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 4},
        "ood_val": [
            {
                "uri": "builtin:shapes",
                "split": "val",
                "classes": "near_ood",
                "per_class": 1,
                "name": "near",
            },
            {
                "uri": "builtin:shapes",
                "split": "val",
                "classes": "far_ood",
                "per_class": 40,
                "name": "far",
            },
        ],
        "ood_test": [
            {
                "uri": "builtin:shapes",
                "split": "test",
                "classes": "far_ood",
                "per_class": 40,
                "name": "far-test",
            },
        ],
    },
    "train": {"epochs": 3, "batch_size": 24, "augment": False, "warmup_steps": 2},
    "eval": {"scores": ["neglabel", "mcm"], "neglabel": {"corpus": "world"}},
    "search": {
        # lr 3e-3 learns; 1e-9 cannot move the random model, so that trial falls below the first
        # one's score at ASHA's first rung and is stopped; 1e4 diverges to a NaN loss at step 2.
        "space": {
            "train.lr": {"choice": [3.0e-3, 1.0e-9, 1.0e4]},
            "train.lam": {"uniform": [0.0, 1.0]},
        },
        "initial_points": [
            {"train.lr": 3.0e-3, "train.lam": 0.01},
            {"train.lr": 1.0e-9, "train.lam": 0.01},
            {"train.lr": 1.0e4, "train.lam": 0.01},
        ],
        "sampler": "tpe",
        "scheduler": "asha",
        # A frozen random model stays at chance ID accuracy (1/12); the learning one is at ~0.27
        # after its first epoch.
        "asha": {"metric": "id_acc", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 3,
    },
    "resources": {"num_workers": 2, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    cfg_path = root / "e2e.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    import ray

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["search", str(cfg_path), "--storage", str(root / "results")])
    finally:
        ray.shutdown()
    SEARCH_OUTPUT.append(printed.getvalue())
    return code, root / "results" / "e2e"


SEARCH_OUTPUT: list[str] = []


def _by_lr(exp_dir: Path) -> tuple[dict, dict]:
    """Tune's own files per trial, keyed by the trial's learning rate: (results, error text)."""
    import pandas as pd

    frames, errors = {}, {}
    for trial in exp_dir.glob("trial_driver_*"):
        lr = json.loads((trial / "params.json").read_text())["train"]["lr"]
        result = trial / "result.json"
        lines = result.read_text().splitlines() if result.exists() else []
        frames[lr] = pd.DataFrame([json.loads(line) for line in lines])
        error = trial / "error.txt"
        errors[lr] = error.read_text() if error.exists() else None
    return frames, errors


def test_search_completes_and_reports_every_eval(search, capsys):
    code, exp_dir = search
    assert code == 0
    by_lr, _ = _by_lr(exp_dir)
    assert sorted(by_lr) == [1.0e-9, 3.0e-3, 1.0e4]
    finished = [by_lr[3.0e-3], by_lr[1.0e-9]]
    for df in finished:
        assert len(df) >= 1
        for metric in ("id_acc", "ood_auroc", "ood_fpr95", "modality_gap", "score"):
            assert df[metric].notna().all(), metric
            assert ((df[metric] >= 0) & (df[metric] <= 2)).all()
        assert list(df["epoch"]) == list(range(1, len(df) + 1))
    saved = json.loads((exp_dir / "raymmft_config.json").read_text())
    assert saved["search"]["num_samples"] == 3


def test_two_workers_per_trial(search):
    _, exp_dir = search
    by_lr, _ = _by_lr(exp_dir)
    for lr in (3.0e-3, 1.0e-9):
        assert (by_lr[lr]["world_size"] == 2).all()
    runs = sorted(p for p in (exp_dir / "train_runs").iterdir() if not p.name.startswith("."))
    assert len(runs) == 3
    from raymmft.checkpoint import MODEL_FILE, TRAIN_STATE_FILE

    for run in runs:
        ckpts = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
        assert all((c / MODEL_FILE).is_file() for c in ckpts)
        # the newest keeps the training state (AdamW's moments): a run resumes from it
        assert not ckpts or (ckpts[-1] / TRAIN_STATE_FILE).is_file()


def test_nan_trial_failed_with_reason(search):
    _, exp_dir = search
    by_lr, errors = _by_lr(exp_dir)
    assert errors[3.0e-3] is None and errors[1.0e-9] is None
    # the reason is the first and the last line of the message, the workers' tracebacks between
    reason = re.search(r"TrialFailedError: (worker rank 0: NonFiniteLossError: .*)", errors[1.0e4])
    assert reason and "non-finite loss nan at step" in reason.group(1)
    assert errors[1.0e4].strip().splitlines()[-1] == reason.group(1)
    assert 'raymmft/finetune.py", line' in errors[1.0e4]  # the worker's traceback
    # It diverged at step 2, before its first evaluation: no (NaN) metric was ever reported.
    assert "id_acc" not in by_lr[1.0e4]
    import pyarrow.parquet as pq

    rows = pq.read_table(exp_dir / "report" / "trials.parquet").to_pylist()
    reasons = {row["param.train.lr"]: row["stop_reason"] for row in rows if not row["baseline"]}
    assert reasons == {3.0e-3: "completed", 1.0e-9: "early_stopped", 1.0e4: "error"}


def test_asha_stopped_a_trial_and_optuna_saw_all(search):
    _, exp_dir = search
    by_lr, _ = _by_lr(exp_dir)
    assert len(by_lr[3.0e-3]) == 3, "the first trial runs all its epochs"
    assert len(by_lr[1.0e-9]) < 3, "ASHA stopped the weak trial early"
    frames = {lr: by_lr[lr] for lr in (3.0e-3, 1.0e-9)}

    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(exp_dir))
    study = searcher._ot_study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(complete) == 2 and len(failed) == 1
    assert failed[0].params["train/lr"] == 1.0e4
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    finals = sorted(
        (round(df["id_acc"].iloc[-1], 6), round(df["ood_auroc"].iloc[-1], 6))
        for df in frames.values()
    )
    told = sorted((round(t.values[0], 6), round(t.values[1], 6)) for t in complete)
    assert told == finals


def test_the_printed_table_is_the_reports_rows(search):
    """search prints the rows trials.parquet holds: same trials, order, stop reasons, values."""
    _, exp_dir = search
    import pyarrow.parquet as pq

    from raymmft.objectives import Objectives
    from raymmft.results.rows import format_trials, sorted_rows

    rows = pq.read_table(exp_dir / "report" / "trials.parquet").to_pylist()
    printed = SEARCH_OUTPUT[0]
    table = format_trials(rows, Objectives.of_saved(CONFIG["search"]))
    assert table in printed
    body = [ln for ln in table.splitlines()[2:] if ln.strip() and not ln.startswith("(")]
    ids = [ln.split()[1] if ln.startswith(("*", ">")) else ln.split()[0] for ln in body]
    assert len(body) == 4 and ids[0] == "zero-shot"  # the baseline, then the trials
    assert ids == [r["trial_id"] for r in sorted_rows(rows)]
    assert sum(r["chosen"] for r in rows) == 1
    for row in rows:
        line = next(ln for ln in body if row["trial_id"] in ln)
        assert row["stop_reason"] in line.split()
        if row["stop_reason"] != "error":
            assert f"{row['id_acc']:.4f}" in line.split()


# ---------------------------------------------------------------- result review (the report)


def test_the_search_mined_once_in_its_preparation_step(search):
    """The preparation step mined; no trial did (each would print its own 'mined' line)."""
    printed = SEARCH_OUTPUT[0]
    assert printed.count("mined ") == 1 and "negative labels from 88 words" in printed
    assert "preparing the search" in printed


def test_zero_shot_row_equals_the_stored_evaluation_and_deltas_follow(search):
    _, exp_dir = search
    import pyarrow.parquet as pq

    stored = json.loads((exp_dir / "prepared" / "zero_shot.json").read_text())["metrics"]
    rows = pq.read_table(exp_dir / "report" / "trials.parquet").to_pylist()
    (base,) = [r for r in rows if r["baseline"]]
    assert base["trial_id"] == "zero-shot" and base["stop_reason"] == "baseline"
    for key in ("id_acc", "ood_auroc", "ood_fpr95", "score", "ood_auroc/far", "mcm/ood_auroc"):
        assert base[key] == stored[key], key
    for row in rows:
        if row["baseline"] or row["stop_reason"] == "error":
            continue
        for metric in ("id_acc", "ood_auroc", "ood_fpr95"):
            assert row[f"delta_{metric}"] == pytest.approx(row[metric] - stored[metric], abs=1e-12)
        # the printed table carries the same deltas
        line = next(ln for ln in SEARCH_OUTPUT[0].splitlines() if row["trial_id"] in ln.split())
        assert f"{row['delta_id_acc']:.4f}" in line.split()


def test_the_optuna_journal_holds_the_trials_and_their_last_reports(search):
    _, exp_dir = search
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(exp_dir / "optuna.journal")))
    study = optuna.load_study(study_name="e2e", storage=storage)
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    frames, _ = _by_lr(exp_dir)
    assert len(study.trials) == 3 and len(by_id) == 3
    for trial in study.trials:
        if trial.state.name != "COMPLETE":
            assert trial.params["train/lr"] == 1.0e4 and trial.state.name == "FAIL"
            continue
        last = frames[trial.params["train/lr"]].iloc[-1]
        assert trial.values == [pytest.approx(last["id_acc"]), pytest.approx(last["ood_auroc"])]


@pytest.fixture(scope="module")
def resumed(search):
    """``--resume`` of the finished search: (exit code, what it printed, Optuna trials after)."""
    import optuna
    import ray
    from optuna.storages.journal import JournalFileBackend

    _, exp_dir = search
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            code = main(["search", "--resume", str(exp_dir)])
    finally:
        ray.shutdown()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(exp_dir / "optuna.journal")))
    return (
        code,
        printed.getvalue(),
        len(optuna.load_study(study_name="e2e", storage=storage).trials),
    )


def test_a_resumed_search_mines_nothing_and_adds_no_optuna_trial(resumed):
    code, printed, optuna_trials = resumed
    assert code == 0 and "best trial" in printed
    assert "mined " not in printed and "prepared already" in printed
    assert optuna_trials == 3


def test_best_yaml_is_a_config_with_the_best_trials_values(search):
    _, exp_dir = search
    from raymmft.config_file import load_config
    from raymmft.results.experiment import read_experiment
    from raymmft.results.rows import chosen_row, trial_rows

    cfg = load_config(exp_dir / "report" / "best.yaml")
    best = chosen_row(trial_rows(read_experiment(exp_dir)))
    assert cfg.train.lr == best["param.train.lr"] and cfg.train.lam == best["param.train.lam"]
    assert cfg.storage.name == "e2e-best" and cfg.model.arch == "raymmft-tiny"
    assert cfg.train.epochs == CONFIG["train"]["epochs"]


def test_index_html_holds_the_table_the_images_and_the_best_configuration(search):
    _, exp_dir = search
    from html.parser import HTMLParser

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.images, self.text, self._cells = {}, [], [], None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "table":
                self._cells = self.tables.setdefault(attrs.get("id") or f"t{len(self.tables)}", [])
            elif tag == "img":
                self.images.append(attrs["src"])

        def handle_endtag(self, tag):
            if tag == "table":
                self._cells = None

        def handle_data(self, data):
            self.text.append(data)
            if self._cells is not None and data.strip():
                self._cells.append(data.strip())

    page = Page()
    page.feed((exp_dir / "report" / "index.html").read_text())
    import pyarrow.parquet as pq

    rows = pq.read_table(exp_dir / "report" / "trials.parquet").to_pylist()
    table = page.tables["trial-table"]
    assert all(r["trial_id"] in table for r in rows)  # every trial and the zero-shot row
    assert f"{rows[0]['id_acc']:.4f}" in table
    assert len(page.images) == 4
    for src in page.images:  # embedded: the page is one file
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    best_yaml = (exp_dir / "report" / "best.yaml").read_text()
    assert best_yaml.strip() in "".join(page.text)
    chosen = json.loads((exp_dir / "test_evaluation.json").read_text())
    assert f"{100 * chosen['id_accuracy']:.2f}" in "".join(page.text)
