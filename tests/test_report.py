"""``raymmft report``: the experiment directory as Tune writes it → trials.parquet, the Pareto
front, the plots. The experiment fixtures are built by hand in Tune's layout (Ray 2.60): no Ray."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raymmft.commands import report as report_command
from raymmft.errors import RaymmftError
from raymmft.objectives import pareto_front
from raymmft.results.experiment import read_experiment
from raymmft.results.report import write_report
from raymmft.results.rows import trial_rows

RED = np.array([0xD6, 0x27, 0x28])  # the front's colour in pareto.png


# ---------------------------------------------------------------- a hand-made experiment


def _result(trial_id, config, epoch, id_acc, auroc, *, fpr=0.5, ckpt=None, done=False):
    return {
        "epoch": epoch,
        "step": 5 * epoch,
        "world_size": 2,
        "train_loss": 3.0 - 0.1 * epoch,
        "id_acc": id_acc,
        "modality_gap": 0.5 / epoch,
        "ood_auroc": auroc,
        "ood_auroc/near": auroc - 0.05,
        "ood_fpr95": fpr,
        "mcm/ood_auroc": auroc - 0.1,
        "score": auroc + 0.5 * id_acc,
        "checkpoint_path": ckpt,
        "timestamp": 1795786698 + epoch,
        "done": done,
        "training_iteration": epoch,
        "trial_id": trial_id,
        "time_total_s": 10.0 * epoch,
        "config": config,
        "hostname": "vm",
    }


def _state_entry(trial_id, config, status, logdir, *, error=None, failures=0):
    trial = {
        "stub": False,
        "trainable_name": "trial_driver",
        "trial_id": trial_id,
        "config": config,
        "status": status,
        "relative_logdir": logdir,
        "experiment_tag": logdir,
    }
    run = {"num_failures": failures, "error_filename": error, "last_result": {}}
    return [json.dumps(trial), json.dumps(run)]


# trial_id -> (status, config, [(id_acc, ood_auroc, ood_fpr95) per report], error)
TRIALS = {
    # completed, on the front
    "aaaa0001": (
        "TERMINATED",
        {"train": {"lam": 0.01, "lr": 1e-3}},
        [(0.5, 0.7, 0.6), (0.8, 0.85, 0.4), (0.8, 0.9, 0.3)],
        None,
    ),
    # completed, on the front (higher AUROC, lower accuracy)
    "aaaa0002": (
        "TERMINATED",
        {"train": {"lam": 0.1, "lr": 3e-4}},
        [(0.4, 0.92, 0.5), (0.6, 0.95, 0.2), (0.6, 0.95, 0.25)],
        None,
    ),
    # stopped by ASHA after one report, dominated
    "aaaa0003": ("TERMINATED", {"train": {"lam": 0.001, "lr": 1e-4}}, [(0.3, 0.6, 0.9)], None),
    # errored after one report
    "aaaa0004": (
        "ERROR",
        {"train": {"lam": 0.05, "lr": 2e-3}},
        [(0.2, 0.55, 0.95)],
        "RuntimeError: CUDA out of memory",
    ),
    # still running, a tie with aaaa0001 on both objectives: on the front too
    "aaaa0005": (
        "RUNNING",
        {"train": {"lam": 0.02, "lr": 1e-3}},
        [(0.7, 0.8, 0.5), (0.8, 0.9, 0.35)],
        None,
    ),
    # created by the searcher, no directory yet
    "aaaa0006": ("PENDING", {"train": {"lam": 0.3, "lr": 5e-4}}, [], None),
}
EPOCHS = 3


def make_experiment(root, *, with_state=True, truncated_line=True):
    """A search as Tune 2.60 leaves it on local storage; returns the experiment directory."""
    exp = root / "exp"
    exp.mkdir(parents=True)
    base = {
        "train": {"epochs": EPOCHS, "batch_size": 24},
        "search": {"space": {"train.lam": {"loguniform": [1e-4, 1]}}, "score_weight": 0.5},
        "storage": {"path": str(root), "name": "exp"},
    }
    (exp / "raymmft_config.json").write_text(json.dumps(base))
    (exp / "tuner.pkl").write_bytes(b"\x80\x05N.")
    state = []
    for n, (tid, (status, config, reports, error)) in enumerate(TRIALS.items(), 1):
        logdir = f"trial_driver_{tid}_{n}_lam={config['train']['lam']:.4f}_2026-11-27_13-37-50"
        state.append(
            _state_entry(tid, config, status, logdir, error="error.txt" if error else None)
        )
        if not reports:
            continue
        tdir = exp / logdir
        tdir.mkdir()
        (tdir / "params.json").write_text(json.dumps(config))
        lines = []
        for epoch, (acc, auroc, fpr) in enumerate(reports, 1):
            ckpt = exp / "train_runs" / tid / f"checkpoint_2026-11-27_13-38-{epoch:02d}.000000"
            ckpt.mkdir(parents=True)
            (ckpt / "state.pt").write_bytes(b"0")
            done = status == "TERMINATED" and epoch == len(reports)
            lines.append(
                json.dumps(
                    _result(tid, config, epoch, acc, auroc, fpr=fpr, ckpt=str(ckpt), done=done)
                )
            )
        text = "\n".join(lines) + "\n"
        if status == "RUNNING" and truncated_line:
            text += '{"epoch": 3, "step": 15, "id_ac'  # the line being written right now
        (tdir / "result.json").write_text(text)
        if error:
            (tdir / "error.txt").write_text(
                f"Failure # 1 (occurred at 2026-11-27)\nTraceback ...\n{error}\n"
            )
    if with_state:
        stale = {"trial_data": [], "runner_data": "{}", "stats": {}}
        (exp / "experiment_state-2026-11-27_13-30-00.json").write_text(json.dumps(stale))
        data = {"trial_data": state, "runner_data": "{}", "stats": {"start_time": 0}}
        (exp / "experiment_state-2026-11-27_13-37-50.json").write_text(json.dumps(data))
    return exp


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    exp = make_experiment(tmp_path_factory.mktemp("search"))
    paths = write_report(str(exp))
    table = pq.read_table(paths.trials_parquet)
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    return exp, paths, table, rows


# ---------------------------------------------------------------- trials.parquet


def test_parquet_has_one_row_per_trial(report):
    exp, paths, table, rows = report
    assert paths.trials_parquet == str(exp / "report" / "trials.parquet")
    assert table.num_rows == len(TRIALS)
    assert sorted(rows) == sorted(TRIALS)


def test_parquet_values_equal_the_result_files(report):
    _, _, _, rows = report
    for tid, (status, config, reports, _) in TRIALS.items():
        row = rows[tid]
        assert row["status"] == status
        assert row["param.train.lam"] == config["train"]["lam"]
        assert row["param.train.lr"] == config["train"]["lr"]
        assert row["reports"] == len(reports)
        if not reports:
            assert math.isnan(row["id_acc"]) and math.isnan(row["ood_auroc"])
            assert row["epochs"] is None and row["checkpoint_path"] is None
            continue
        acc, auroc, fpr = reports[-1]
        assert (row["id_acc"], row["ood_auroc"], row["ood_fpr95"]) == (acc, auroc, fpr)
        assert row["ood_auroc/near"] == pytest.approx(auroc - 0.05)
        assert row["mcm/ood_auroc"] == pytest.approx(auroc - 0.1)
        assert row["score"] == pytest.approx(auroc + 0.5 * acc)
        assert row["epochs"] == len(reports)
        assert row["max_epochs"] == EPOCHS
        assert row["best_ood_auroc"] == max(r[1] for r in reports)
        assert row["best_id_acc"] == max(r[0] for r in reports)
        assert row["best_ood_fpr95"] == min(r[2] for r in reports)
        assert row["time_total_s"] == 10.0 * len(reports)
        last_ckpt = f"checkpoint_2026-11-27_13-38-{len(reports):02d}.000000"
        assert row["checkpoint_path"].endswith(f"train_runs/{tid}/{last_ckpt}")
    # aaaa0002's best score is at epoch 2 (AUROC 0.95 with acc 0.6 twice: the first one wins)
    assert rows["aaaa0002"]["best_epoch"] == 2
    assert "epoch" not in rows["aaaa0001"]  # the last epoch is the `epochs` column


def test_stop_reasons_and_error(report):
    _, _, _, rows = report
    assert {tid: r["stop_reason"] for tid, r in rows.items()} == {
        "aaaa0001": "completed",
        "aaaa0002": "completed",
        "aaaa0003": "early_stopped",
        "aaaa0004": "error",
        "aaaa0005": "running",
        "aaaa0006": "pending",
    }
    assert rows["aaaa0004"]["error"] == "RuntimeError: CUDA out of memory"
    assert rows["aaaa0001"]["error"] is None


def test_pareto_column_is_the_front_with_ties_kept(report):
    _, paths, _, rows = report
    assert {tid for tid, r in rows.items() if r["pareto"]} == {"aaaa0001", "aaaa0002", "aaaa0005"}
    # the best is the front's highest ood_auroc + 0.5 * id_acc: 0.9 + 0.4 > 0.95 + 0.3; the
    # tie between aaaa0001 and aaaa0005 goes to the first
    assert paths.best_trial == "aaaa0001"


def test_printed_table_is_sorted_and_marks_the_front(report):
    _, paths, _, _ = report
    lines = paths.table.splitlines()
    body = [ln for ln in lines[2:] if ln.strip() and not ln.startswith("(")]
    ids = [ln.split()[1] if ln.startswith(("*", ">")) else ln.split()[0] for ln in body]
    # score descending, trials without a score last
    assert ids[:5] == ["aaaa0001", "aaaa0005", "aaaa0002", "aaaa0003", "aaaa0004"]
    assert ids[5] == "aaaa0006"
    marked = {ln.split()[1] for ln in body if ln.startswith(("*", ">"))}
    assert marked == {"aaaa0001", "aaaa0002", "aaaa0005"}
    assert [ln.split()[1] for ln in body if ln.startswith(">")] == ["aaaa0001"]  # the choice


def test_report_command_prints_table_paths_and_tensorboard(report, capsys, tmp_path):
    exp, _, _, _ = report
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    out = tmp_path / "elsewhere"
    assert report_command.run(parser.parse_args([str(exp), "--out", str(out), "--top", "2"])) == 0
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {exp}" in printed
    assert str(out / "trials.parquet") in printed
    assert "partial: 2 trial(s) not finished (aaaa0005, aaaa0006)" in printed
    assert "trial aaaa0004 errored: RuntimeError: CUDA out of memory" in printed
    assert pq.read_table(out / "trials.parquet").num_rows == len(TRIALS)


def test_note_on_tunes_competing_hparams_entries(tmp_path):
    exp = make_experiment(tmp_path)
    assert not any("HParams" in n for n in write_report(str(exp)).notes)  # no trial writer logs
    (exp / "tensorboard" / "aaaa0001").mkdir(parents=True)
    assert not any("HParams" in n for n in write_report(str(exp)).notes)  # no Tune TBX logs
    next(exp.glob("trial_driver_aaaa0001_*")).joinpath("events.out.tfevents.1.vm").write_bytes(b"")
    (note,) = [n for n in write_report(str(exp)).notes if "HParams" in n]
    assert note.endswith(f"tensorboard --logdir {exp / 'tensorboard'}")


# ---------------------------------------------------------------- partial experiments


def test_statuses_are_inferred_without_experiment_state(tmp_path):
    """A search that has not saved its state yet: status from the result lines and error.txt."""
    exp = make_experiment(tmp_path, with_state=False)
    trials = {t.trial_id: t for t in read_experiment(str(exp)).trials}
    assert {tid: t.status for tid, t in trials.items()} == {
        "aaaa0001": "TERMINATED",
        "aaaa0002": "TERMINATED",
        "aaaa0003": "TERMINATED",
        "aaaa0004": "ERROR",
        "aaaa0005": "RUNNING",
    }  # the pending trial has no trace without the state file
    assert [r["epoch"] for r in trials["aaaa0005"].results] == [1, 2]  # the cut line is skipped
    assert trials["aaaa0001"].config == TRIALS["aaaa0001"][1]


def test_result_lines_newer_than_the_saved_state_win(tmp_path):
    """The state was saved while aaaa0005 ran; it has finished since (its last line says done)."""
    exp = make_experiment(tmp_path, truncated_line=False)
    result = next(exp.glob("trial_driver_aaaa0005_*")) / "result.json"
    config = TRIALS["aaaa0005"][1]
    final = _result("aaaa0005", config, 3, 0.85, 0.91, done=True)
    result.write_text(result.read_text() + json.dumps(final) + "\n")
    row = next(r for r in trial_rows(read_experiment(str(exp))) if r["trial_id"] == "aaaa0005")
    assert (row["status"], row["stop_reason"], row["epochs"]) == ("TERMINATED", "completed", 3)
    assert (row["id_acc"], row["ood_auroc"]) == (0.85, 0.91)


def test_experiment_with_no_results_yet_still_reports(tmp_path):
    exp = tmp_path / "fresh"
    exp.mkdir()
    (exp / "raymmft_config.json").write_text("{}")
    paths = write_report(str(exp))
    assert paths.num_trials == 0
    assert pq.read_table(paths.trials_parquet).num_rows == 0
    assert Image.open(paths.pareto_png).size[0] > 300


def test_not_an_experiment_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(RaymmftError, match="not a Tune experiment directory"):
        write_report(str(tmp_path))
    with pytest.raises(RaymmftError, match="experiment directory not found: .*missing"):
        write_report(str(tmp_path / "missing"))


def test_storage_uri_goes_through_pyarrow(tmp_path):
    exp = make_experiment(tmp_path)
    paths = write_report(f"file://{exp}")
    assert paths.trials_parquet == f"file://{exp}/report/trials.parquet"
    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    assert len(rows) == len(TRIALS)
    ckpt = next(r for r in rows if r["trial_id"] == "aaaa0001")["checkpoint_path"]
    assert ckpt.startswith(f"file://{exp}/train_runs/aaaa0001/")


def test_moved_experiment_points_at_its_own_checkpoints(tmp_path):
    exp = make_experiment(tmp_path / "a")
    moved = tmp_path / "b" / "exp"
    moved.parent.mkdir()
    exp.rename(moved)
    rows = pq.read_table(write_report(str(moved)).trials_parquet).to_pylist()
    for row in rows:
        if row["checkpoint_path"]:
            assert row["checkpoint_path"].startswith(str(moved / "train_runs"))


def test_mixed_type_choice_is_stored_as_strings(tmp_path):
    """``choice: [cosine, 3]`` gives a column of a string and a number: stored as strings."""
    exp = make_experiment(tmp_path)
    (next(exp.glob("experiment_state-*13-37-50.json"))).unlink()  # configs from params.json
    for tdir, value in zip(sorted(exp.glob("trial_driver_*"))[:2], ["cosine", 3]):
        config = json.loads((tdir / "params.json").read_text())
        config["train"]["schedule"] = value
        (tdir / "params.json").write_text(json.dumps(config))
    rows = pq.read_table(write_report(str(exp)).trials_parquet).to_pylist()
    values = {r["trial_id"]: r.get("param.train.schedule") for r in rows}
    assert values["aaaa0001"] == "cosine" and values["aaaa0002"] == "3"


def test_unfinished_trials_from_experiment_state(tmp_path):
    def trial(tid, status):
        return [json.dumps({"trial_id": tid, "status": status}), "{}"]

    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [trial("a", "TERMINATED")]})
    )
    (tmp_path / "experiment_state-2026-01-01_00-00-09.json").write_text(
        json.dumps(
            {
                "trial_data": [
                    trial("a", "TERMINATED"),
                    trial("b", "RUNNING"),
                    trial("c", "ERROR"),
                    trial("d", "PENDING"),
                ]
            }
        )
    )
    assert read_experiment(tmp_path).unfinished() == ["b", "d"]
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "raymmft_config.json").write_text("{}")
    assert read_experiment(tmp_path / "fresh").unfinished() == []


# ---------------------------------------------------------------- the plots


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _red_pixels(img):
    return int((np.abs(img.astype(int) - RED).sum(axis=-1) < 30).sum())


def test_pngs_are_non_trivial_images(report):
    _, paths, _, _ = report
    for path in (paths.pareto_png, paths.curves_png):
        img = _pixels(path)
        assert img.shape[0] >= 400 and img.shape[1] >= 600
        colours = np.unique(img.reshape(-1, 3), axis=0)
        assert len(colours) > 50  # markers, lines, text: not a blank canvas
        assert (img < 250).any(axis=-1).mean() > 0.02  # some of it is drawn on


def test_pareto_plot_highlights_the_front(report, tmp_path):
    _, paths, _, _ = report
    assert _red_pixels(_pixels(paths.pareto_png)) > 200
    # with no trial on a front, no red: the colour is the front's and nothing else's
    exp = make_experiment(tmp_path)
    for tdir in exp.glob("trial_driver_*"):
        (tdir / "result.json").write_text("")
    empty = write_report(str(exp))
    assert _red_pixels(_pixels(empty.pareto_png)) == 0


def test_curves_draw_the_top_trials(report, tmp_path):
    exp, _, _, _ = report
    one = write_report(str(exp), str(tmp_path / "one"), top=1)
    three = write_report(str(exp), str(tmp_path / "three"), top=3)
    drawn = [(_pixels(p.curves_png) < 200).any(axis=-1).sum() for p in (one, three)]
    assert drawn[1] > drawn[0]  # more trials, more ink


# ---------------------------------------------------------------- pareto_front


def _dominates(q, p):
    return all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))


def test_pareto_front_hand_made():
    points = [
        (0.80, 0.90),  # 0 front
        (0.60, 0.95),  # 1 front: best AUROC
        (0.70, 0.85),  # 2 dominated by 0
        (0.80, 0.90),  # 3 tie with 0: kept
        (0.85, 0.50),  # 4 front: best accuracy
        (0.80, 0.89),  # 5 dominated by 0 (equal accuracy, lower AUROC)
        (0.60, 0.90),  # 6 dominated by 0 and 1
        (math.nan, 0.99),  # 7 never on the front
        (0.10, 0.10),  # 8 dominated by everything
    ]
    assert pareto_front(points) == [0, 1, 3, 4]


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 0.5)]) == [0]
    assert pareto_front([(0.5, 0.5)] * 3) == [0, 1, 2]  # all equal: all kept
    assert pareto_front([(math.nan, math.nan), (0.1, 0.2)]) == [1]
    assert pareto_front([(1, 2, 3), (1, 2, 4), (3, 0, 0)]) == [1, 2]  # three objectives


def _front_by_sorting(points):
    """2-D front by another route: sort by x desc then y desc, keep each point whose y is at least
    the best y seen among points with strictly larger x, and not beaten at equal x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y_larger_x = [], -math.inf
    for _, group in itertools.groupby(order, key=lambda i: points[i][0]):
        group = list(group)
        top_y = points[group[0]][1]
        for i in group:
            if points[i][1] == top_y and top_y > best_y_larger_x:
                front.append(i)
        best_y_larger_x = max(best_y_larger_x, top_y)
    return sorted(front)


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_a_sort_based_front(seed):
    rng = random.Random(seed)
    # coarse grid values so ties in one or both objectives are frequent
    points = [(rng.randint(0, 8) / 8, rng.randint(0, 8) / 8) for _ in range(40)]
    front = pareto_front(points)
    assert front == _front_by_sorting(points)
    on = set(front)
    for i, p in enumerate(points):
        if i in on:
            assert not any(_dominates(q, p) for q in points)
        else:
            assert any(_dominates(points[j], p) for j in on)


# ---------------------------------------------------------------- importance


def _rows_where_one_field_decides(n: int, seed: int = 0) -> list[dict]:
    """Trials whose ID accuracy is a function of train.lr alone; lam and tau are noise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        lr, lam, tau = 10 ** rng.uniform(-5, -2), rng.uniform(0, 1), rng.uniform(0.01, 0.1)
        rows.append(
            {
                "trial_id": f"t{i}",
                "stop_reason": "completed",
                "baseline": False,
                "param.train.lr": lr,
                "param.train.lam": lam,
                "param.model.temperature": tau,
                "id_acc": 1.0 / (1.0 + abs(math.log10(lr) + 3.5)),  # best at lr = 10^-3.5
                "ood_auroc": 0.5 + 0.4 * lam,  # decided by lam alone
            }
        )
    return rows


BASE = {
    "search": {
        "space": {
            "train.lr": {"loguniform": [1e-5, 1e-2]},
            "train.lam": {"uniform": [0, 1]},
            "model.temperature": {"uniform": [0.01, 0.1]},
        }
    }
}


def test_importance_ranks_the_deciding_field_first():
    from raymmft.results.importance import search_importance

    importance = search_importance(_rows_where_one_field_decides(24), BASE)
    assert importance.note is None and importance.trials == 24
    for objective, decider in (("id_acc", "train.lr"), ("ood_auroc", "train.lam")):
        ranked = list(importance.values[objective])
        assert ranked[0] == decider, importance.values[objective]
        assert importance.values[objective][decider] > 0.5
        assert sum(importance.values[objective].values()) == pytest.approx(1.0)


def test_importance_says_why_not_below_its_minimum():
    from raymmft.results.importance import search_importance

    importance = search_importance(_rows_where_one_field_decides(5), BASE)
    assert importance.values == {}
    assert importance.note == (
        "not computed: 5 finished trial(s), 6 needed for 3 searched field(s) (at least 2 per field)"
    )
    assert importance.lines() == [f"importance: {importance.note}"]


def _test_evaluation(with_intervals: bool) -> dict:
    metrics = {"auroc": 0.9, "fpr95": 0.3, "aupr_in": 0.8, "aupr_out": 0.85}
    out = {
        "trial_id": "aaaa0001",
        "id_accuracy": 0.75,
        "modality_gap": 0.5,
        "primary_score": "mcm",
        "scores": ["mcm"],
        "num_id": 40,
        "num_classes": 4,
        "num_negatives": None,
        "ood": {"far": {"num_samples": 40, "metrics": {"mcm": metrics}}},
        "mean": {"mcm": metrics},
    }
    if with_intervals:
        ci = {m: [v - 0.05, v + 0.05] for m, v in metrics.items()}
        out["id_accuracy_ci95"] = [0.6125, 0.875]
        out["ood"]["far"]["metrics_ci95"] = {"mcm": ci}
        out["mean_ci95"] = {"mcm": ci}
        out["bootstrap"] = {"resamples": 1000, "seed": 0, "interval": "95 %"}
        delta = {m: {"value": 0.02, "ci95": [-0.01, 0.05]} for m in metrics}
        out["delta_vs_reference"] = {
            "reference": "zero-shot",
            "id_accuracy": {"value": 0.05, "ci95": [0.0125, 0.1]},
            "ood": {"far": {"mcm": delta}},
            "mean": {"mcm": delta},
        }
    return out


@pytest.mark.parametrize("with_intervals", [False, True])
def test_the_page_shows_the_test_evaluation_with_or_without_intervals(tmp_path, with_intervals):
    import json

    exp = make_experiment(tmp_path)
    (exp / "test_evaluation.json").write_text(json.dumps(_test_evaluation(with_intervals)))
    page = Path(write_report(exp).index_html).read_text()
    assert "ID accuracy <b>75.00 %</b>" in page
    assert ("[61.25, 87.50]" in page) == with_intervals
    assert ("ID accuracy +5.00 [+1.25, +10.00] points" in page) == with_intervals
    assert ("+2.00 [-1.00, +5.00]" in page) == with_intervals


def test_interpolated_candidates_are_rows_plotted_and_chosen_like_trials(tmp_path):
    """A trial whose last report measured alpha 0.5 (eval.interpolation) gives a row
    <trial>@0.5 in the table, the parquet file, the front and the choice; the curves and the
    counts are of the trials themselves; best.yaml carries the alpha when it is chosen."""
    import yaml

    exp = make_experiment(tmp_path)
    (result,) = exp.glob("trial_driver_aaaa0001_*/result.json")
    lines = result.read_text().splitlines()
    last = json.loads(lines[-1])
    # halfway to the start: better OoD AUROC than any trial, a little ID accuracy lost
    last.update({"interp/0.5/id_acc": 0.78, "interp/0.5/ood_auroc": 0.99, "interp/0.5/score": 0})
    lines[-1] = json.dumps(last)
    result.write_text("\n".join(lines) + "\n")
    paths = write_report(exp)
    rows = pq.read_table(paths.trials_parquet).to_pylist()
    half = next(r for r in rows if r["trial_id"] == "aaaa0001@0.5")
    assert (half["alpha"], half["trial"]) == (0.5, "aaaa0001")
    assert (
        half["param.train.lam"]
        == next(r for r in rows if r["trial_id"] == "aaaa0001")["param.train.lam"]
    )
    assert half["chosen"] and half["pareto"]  # 0.99 + 0.5 * 0.78 beats every trial
    assert paths.num_trials == 6 and "aaaa0001@0.5" in paths.table
    best = yaml.safe_load(Path(paths.best_yaml).read_text())
    assert best["model"]["interpolate"] == 0.5
    assert "(model.interpolate)" in paths.choice
