"""Bad input from an experiment's own files, read by ``raymmft report`` (issue 25, causes 5-7):
names that matplotlib would read as mathtext, values of the wrong type or not finite, a missing
or cut-off config, and symbolic links out of the experiment. The experiments are made by hand in
Tune's layout (``test_report.make_experiment``), then broken; each case through the CLI with its
exact one-line message and exit status."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bad_input import ROOT, _error
from PIL import Image
from test_report import make_experiment

from raymmft.cli import main
from raymmft.errors import StorageError
from raymmft.results.experiment import inside, read_experiment
from raymmft.storage import Location, check_name


def _cli(exp: Path) -> subprocess.CompletedProcess:
    """``raymmft report EXP`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "raymmft.cli", "report", str(exp)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _trial_dir(exp: Path, trial_id: str) -> Path:
    (found,) = exp.glob(f"trial_driver_{trial_id}_*")
    return found


def _set_last_report(exp: Path, trial_id: str, **values) -> Path:
    result = _trial_dir(exp, trial_id) / "result.json"
    lines = result.read_text().splitlines()
    last = json.loads(lines[-1])
    last.update(values)
    lines[-1] = json.dumps(last)  # json writes nan and inf as NaN and Infinity, as Tune's does
    result.write_text("\n".join(lines) + "\n")
    return result


# ---------------------------------------------------------------- 5: text reaches matplotlib


@pytest.mark.parametrize("name", ["x$^$y", "r$_{$", "a$\\frac{b}$"])
def test_a_name_matplotlib_would_parse_as_mathtext_is_drawn_as_it_is(tmp_path, name):
    """Before: ``ParseSyntaxException: Expected {phantom | llap | ...`` (exit 1) once the whole
    report had been read, and no pareto.png."""
    exp = make_experiment(tmp_path)
    named = exp.rename(tmp_path / name.replace("\\", "_"))
    if "\\" not in name:
        check_name(named.name)  # a name a search may be given (storage.name)
    result = _cli(named)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""
    for png in ("pareto.png", "curves.png", "time.png", "importance.png"):
        assert Image.open(named / "report" / png).size[0] > 300
    page = (named / "report" / "index.html").read_text()
    assert f"<h1>{named.name}</h1>" in page


def test_plots_take_mathtext_and_latex_specials_literally_whatever_the_rc(tmp_path):
    """Trial ids, metric names and titles with $, ^, _ and { render, also under a user's
    ``text.usetex: True`` (no LaTeX is run)."""
    import matplotlib

    from raymmft.results.plots import plot_pareto, plot_time, png

    rows = [
        {
            "trial_id": f"t$^{i}$_{{",
            "stop_reason": "completed",
            "pareto": i == 0,
            "m$^$": 0.5 + 0.1 * i,
            "n_{x": 0.7 - 0.1 * i,
            "param.train.la$m": 0.1,
            "time_train_s": 5.0,
            "time_total_s": 9.0,
            "score": 0.1 * i,
            **{f"time_{p}_s": 1.0 for p in ("startup", "eval", "checkpoint")},
        }
        for i in range(3)
    ]
    with matplotlib.rc_context({"text.usetex": True}):
        for fig in (plot_pareto(rows, rows[0], "exp $^$", ("m$^$", "n_{x")), plot_time(rows)):
            data = png(fig)
            assert data.startswith(b"\x89PNG")
            (tmp_path / "f.png").write_bytes(data)
            assert Image.open(tmp_path / "f.png").size[0] > 300


# ---------------------------------------------------------------- 6: types and values


def _bad_metric(exp):
    return _set_last_report(exp, "aaaa0001", ood_auroc="abc"), (
        "line 3: ood_auroc: expected a number, got text 'abc'"
    )


def _bad_score(exp):
    return _set_last_report(exp, "aaaa0002", score="0.9"), (
        "line 3: score: expected a number, got text '0.9'"
    )


def _bad_epoch(exp):
    return _set_last_report(
        exp, "aaaa0002", epoch=[3]
    ), "line 3: epoch: expected a number, got a list"


def _report_not_an_object(exp):
    result = _trial_dir(exp, "aaaa0003") / "result.json"
    result.write_text(result.read_text() + "[1, 2]\n")
    return result, "line 2: expected a JSON object (one report), got a list"


def _params_a_list(exp):
    params = _trial_dir(exp, "aaaa0001") / "params.json"
    params.write_text("[0.01, 0.001]")
    return params, "expected a mapping of the trial's searched fields, got a list"


def _state(exp, trial=None, run=None):
    (state,) = [p for p in exp.glob("experiment_state-*.json") if "13-37-50" in p.name]
    data = json.loads(state.read_text())
    t, r = (json.loads(x) for x in data["trial_data"][0])
    t.update(trial or {})
    r.update(run or {})
    data["trial_data"][0] = [json.dumps(t), json.dumps(r)]
    state.write_text(json.dumps(data))
    return state


def _state_config_a_list(exp):
    return _state(exp, trial={"config": [1, 2]}), (
        "holds a trial entry Tune did not write (trial_data[0]: config: expected a mapping, "
        "got a list); the file is damaged"
    )


def _state_failures_text(exp):
    return _state(exp, run={"num_failures": "x"}), (
        "holds a trial entry Tune did not write (trial_data[0]: num_failures: expected a count, "
        "got text 'x'); the file is damaged"
    )


def _state_error_file_elsewhere(exp):
    return _state(exp, run={"error_filename": "../../etc/passwd"}), (
        "holds a trial entry Tune did not write (trial_data[0]: error_filename: expected a file "
        "name, got text '../../etc/passwd'); the file is damaged"
    )


def _config_missing(exp):
    config = exp / "raymmft_config.json"
    config.unlink()
    return config, (
        "not found; the report needs the search's config (its objectives, search space and "
        "epochs), written when the search started"
    )


def _config_cut_off(exp):
    config = exp / "raymmft_config.json"
    config.write_text('{"train": {"epo')  # cut off while written
    return (
        config,
        "not valid JSON (Unterminated string starting at, line 1); the file is cut off or damaged",
    )


def _config_a_list(exp):
    config = exp / "raymmft_config.json"
    config.write_text("[1]")
    return config, "expected a JSON object, got a list"


def _config_field(section, values, message):
    def mutate(exp):
        config = exp / "raymmft_config.json"
        raw = json.loads(config.read_text())
        raw[section] = values if not isinstance(values, dict) else {**raw[section], **values}
        config.write_text(json.dumps(raw))
        return config, message

    return mutate


def _zero_shot_text(exp):
    zero_shot = exp / "prepared" / "zero_shot.json"
    zero_shot.parent.mkdir()
    zero_shot.write_text(json.dumps({"metrics": {"id_acc": "x", "ood_auroc": 0.8}}))
    return zero_shot, "metrics.id_acc: expected a number, got text 'x'"


def _test_evaluation_without_trial(exp):
    test = exp / "test_evaluation.json"
    test.write_text(json.dumps({"id_accuracy": 0.5, "ood": [1]}))
    return test, "trial_id: required field missing"


@pytest.mark.parametrize(
    "mutate",
    [
        _bad_metric,
        _bad_score,
        _bad_epoch,
        _report_not_an_object,
        _params_a_list,
        _state_config_a_list,
        _state_failures_text,
        _state_error_file_elsewhere,
        _config_missing,
        _config_cut_off,
        _config_a_list,
        _config_field(
            "train", {"epochs": "abc"}, "train.epochs: expected an integer, got text 'abc'"
        ),
        _config_field("train", {"epochs": 0}, "train.epochs: expected an integer >= 1, got 0"),
        _config_field("search", [1], "search: expected a mapping, got a list"),
        _config_field(
            "search",
            {"space": {"train.lam": {"loguniform": [1, "x"]}}},
            "search.space: train.lam: loguniform needs [low, high] (finite numbers), got [1, 'x']",
        ),
        _config_field(
            "search",
            {"objectives": [{"metric": "id_acc", "mode": "up"}]},
            "search.objectives[0].mode: Input should be 'max' or 'min', got 'up'",
        ),
        _zero_shot_text,
        _test_evaluation_without_trial,
    ],
    ids=lambda f: f.__name__,
)
def test_a_value_of_the_wrong_type_is_one_line_naming_file_and_field(tmp_path, capsys, mutate):
    exp = make_experiment(tmp_path)
    where, message = mutate(exp)
    assert _error(capsys, ["report", str(exp)]) == f"{where}: {message}"
    assert not (exp / "report").exists(), "nothing written"


def test_a_string_metric_through_the_cli(tmp_path):
    """Before: ``TypeError: '>' not supported between instances of 'str' and 'float'`` (exit 1),
    and a metric "abc" was read as a missing value without a word."""
    exp = make_experiment(tmp_path)
    result_file = _set_last_report(exp, "aaaa0002", score="0.9")
    result = _cli(exp)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {result_file}: line 3: score: expected a number, got text '0.9'\n"
    )


def test_a_missing_config_through_the_cli(tmp_path):
    """Before: exit 0, the objectives and the importance's search space were today's defaults."""
    exp = make_experiment(tmp_path)
    (exp / "raymmft_config.json").unlink()
    result = _cli(exp)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: {exp / 'raymmft_config.json'}: not found; the report needs the search's config "
        "(its objectives, search space and epochs), written when the search started\n"
    )


def test_a_long_value_is_cut_in_the_message(tmp_path, capsys):
    exp = make_experiment(tmp_path)
    result_file = _set_last_report(exp, "aaaa0001", id_acc="x" * 10_000)
    message = _error(capsys, ["report", str(exp)])
    assert message == (f"{result_file}: line 3: id_acc: expected a number, got text '{'x' * 36}...")


def test_a_metric_that_is_not_finite_is_read_as_missing_and_said(tmp_path):
    """An AUROC of Infinity (and a score of NaN) in a trial's last report: that trial is on no
    front and never chosen on them, its columns are NaN, and the report says so in a note. (The
    trial would be the best by far if Infinity were taken as a number.)"""
    exp = make_experiment(tmp_path)
    _set_last_report(exp, "aaaa0003", ood_auroc=math.inf, score=math.nan, id_acc=0.99)
    result = _cli(exp)
    assert result.returncode == 0, result.stderr[-2000:]
    note = (
        "trial aaaa0003: ood_auroc, score not a finite number (NaN or Infinity) in 1 report(s) "
        "of its result.json: read as missing, never chosen on"
    )
    assert note in result.stdout.splitlines()
    assert note in (exp / "report" / "index.html").read_text()
    rows = {r["trial_id"]: r for r in pq.read_table(exp / "report" / "trials.parquet").to_pylist()}
    third = rows["aaaa0003"]
    assert math.isnan(third["ood_auroc"]) and math.isnan(third["score"])
    assert third["id_acc"] == 0.99
    assert not third["pareto"] and not third["chosen"]
    assert [tid for tid, r in rows.items() if r["chosen"]] == ["aaaa0001"]


def test_a_zero_shot_metric_that_is_not_finite_is_noted(tmp_path):
    exp = make_experiment(tmp_path)
    (exp / "prepared").mkdir()
    metrics = {"id_acc": 0.5, "ood_auroc": math.inf}
    (exp / "prepared" / "zero_shot.json").write_text(json.dumps({"metrics": metrics}))
    result = _cli(exp)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (
        "the zero-shot model: ood_auroc not a finite number (NaN or Infinity) in 1 report(s) of "
        "its zero_shot.json: read as missing, never chosen on"
    ) in result.stdout.splitlines()
    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    base = next(r for r in rows if r["trial_id"] == "zero-shot")
    assert math.isnan(base["ood_auroc"]) and not base["chosen"]


def test_the_saved_space_not_the_default_one_is_the_importance_s(tmp_path):
    """A config without search.space: importance says so instead of using today's default."""
    from raymmft.results.importance import search_importance

    importance = search_importance([], {"search": {}})
    assert importance.note == "not computed: the search's config holds no search.space"


# ---------------------------------------------------------------- 7: links out of it


def test_an_error_file_linked_out_of_the_experiment_is_not_read(tmp_path):
    """Before: the page and the output printed the last line of the file it linked to."""
    exp = make_experiment(tmp_path / "search")
    secret = tmp_path / "secret.txt"
    secret.write_text("first line\nTOP SECRET last line\n")
    error = _trial_dir(exp, "aaaa0004") / "error.txt"
    error.unlink()
    error.symlink_to(secret)
    result = _cli(exp)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trial aaaa0004 errored: error.txt is a link outside the experiment" in result.stdout
    page = (exp / "report" / "index.html").read_text()
    assert "TOP SECRET" not in result.stdout + page
    assert "error.txt is a link outside the experiment" in page


def test_a_report_directory_linked_out_is_refused(tmp_path):
    """Before: exit 0, and the report's seven files were written into the linked directory."""
    exp = make_experiment(tmp_path / "search")
    outside = tmp_path / "outside"
    outside.mkdir()
    (exp / "report").symlink_to(outside)
    result = _cli(exp)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {exp / 'report'} is a link out of the experiment {exp}: raymmft reads and "
        "writes nothing outside it\n"
    )
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("what", ["result.json", "params.json", "trial directory", "config"])
def test_a_file_read_through_a_link_out_is_refused(tmp_path, capsys, what):
    exp = make_experiment(tmp_path / "search")
    trial = _trial_dir(exp, "aaaa0001")
    link = {
        "result.json": trial / "result.json",
        "params.json": trial / "params.json",
        "trial directory": trial,
        "config": exp / "raymmft_config.json",
    }[what]
    target = tmp_path / "elsewhere"
    link.rename(target)
    link.symlink_to(target)
    assert _error(capsys, ["report", str(exp)]) == (
        f"{link} is a link out of the experiment {exp}: raymmft reads and writes nothing outside it"
    )


def test_a_link_inside_the_experiment_is_followed(tmp_path):
    exp = make_experiment(tmp_path)
    error = _trial_dir(exp, "aaaa0004") / "error.txt"
    kept = exp / "errors" / "aaaa0004.txt"
    kept.parent.mkdir()
    error.rename(kept)
    error.symlink_to(kept)
    trial = next(t for t in read_experiment(exp).trials if t.trial_id == "aaaa0004")
    assert trial.error == "RuntimeError: CUDA out of memory"
    root = Location.parse(exp)
    assert inside(root, root.join("errors", "aaaa0004.txt")) == root.join("errors", "aaaa0004.txt")
    with pytest.raises(StorageError, match="is a link out of the experiment"):
        (exp / "up").symlink_to(tmp_path)
        inside(root, root.join("up", "x"))


def test_files_in_the_report_directory_are_replaced_not_written_through(tmp_path):
    """A link planted in report/ in place of one of its files is replaced by the file."""
    exp = make_experiment(tmp_path / "search")
    (exp / "report").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("trials.parquet", "index.html", "pareto.png"):
        (exp / "report" / name).symlink_to(victim)
    assert main(["report", str(exp)]) == 0
    assert victim.read_text() == "keep me"
    assert not any((exp / "report" / n).is_symlink() for n in ("trials.parquet", "index.html"))
