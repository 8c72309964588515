"""The contract of what a trial reports and what a search optimises (raymmft.objectives): the
names a run reports are the names the config says it reports; the score, the front and the choice
follow the search's objectives; the zero-shot starting model is a candidate like any trial."""

import math

import pytest

from raymmft.config import validate_config
from raymmft.loop import WorkerContext, run_training
from raymmft.objectives import Goal, Objectives, pareto_front
from raymmft.results.rows import (
    best_trial_row,
    choice_statement,
    chosen_row,
    format_trials,
    mark_choice,
)

RAW = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": {"uri": "builtin:shapes", "split": "train", "classes": "id", "per_class": 4},
        "id_val": {"uri": "builtin:shapes", "split": "val", "classes": "id", "per_class": 1},
        "ood_val": [
            {"uri": "builtin:shapes", "split": "val", "classes": "far_ood", "per_class": 4},
            {"uri": "builtin:shapes", "split": "val", "classes": "near_ood", "per_class": 1},
        ],
    },
    "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 1, "augment": False},
    "eval": {"scores": ["mcm", "energy"], "ood_score": "mcm"},
}


def test_what_run_training_reports_is_what_the_config_says_it_reports():
    reports = []
    cfg = validate_config(RAW)
    run_training(cfg, WorkerContext(report=lambda metrics, state: reports.append(metrics)))
    assert len(reports) == 2
    promised = cfg.reported_metrics()
    assert set(reports[0]) == promised  # the first report also has time/startup_s
    assert set(reports[1]) == promised - {"time/startup_s"}
    # the score is the objectives' formula of the same report
    for report in reports:
        assert report["score"] == pytest.approx(report["ood_auroc"] + 0.5 * report["id_acc"])


def test_the_reported_names_of_two_sets_and_two_scores():
    names = validate_config(RAW).reported_metrics()
    sets = ("shapes-far_ood", "shapes-near_ood")
    for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
        assert f"ood_{metric}" in names
        for score in ("mcm", "energy"):
            assert f"{score}/ood_{metric}" in names
            assert {f"{score}/ood_{metric}/{s}" for s in sets} <= names
    assert not any(n.startswith("neglabel/") for n in names)


def test_score_is_the_weighted_signed_sum_of_the_objectives():
    goals = Objectives([Goal("id_acc", "max", 0.5), Goal("ood_fpr95", "min", 2.0)])
    assert goals.score({"id_acc": 0.8, "ood_fpr95": 0.25}) == pytest.approx(0.4 - 0.5)
    assert math.isnan(goals.score({"id_acc": 0.8}))
    assert goals.formula() == "-2 * ood_fpr95 + 0.5 * id_acc"
    default = validate_config(RAW).search.goals
    assert default.formula() == "ood_auroc + 0.5 * id_acc"


def test_front_and_choice_follow_min_objectives():
    goals = Objectives([Goal("id_acc"), Goal("ood_fpr95", "min")])
    rows = [
        {"id_acc": 0.9, "ood_fpr95": 0.5},  # best accuracy
        {"id_acc": 0.7, "ood_fpr95": 0.1},  # best FPR95
        {"id_acc": 0.7, "ood_fpr95": 0.6},  # dominated by both
        {"id_acc": 0.8, "ood_fpr95": math.nan},  # missing an objective: never on the front
    ]
    assert goals.front(rows) == [0, 1]
    # score = id_acc - ood_fpr95: 0.4 against 0.6
    assert goals.choose(rows) == 1
    # the same rows read as the default (both maximised) objectives would choose otherwise
    flipped = Objectives([Goal("id_acc"), Goal("ood_fpr95", "max")])
    assert flipped.front(rows) == [0, 2]


def test_front_agrees_with_a_brute_force_reference():
    import random

    rng = random.Random(0)
    for _ in range(50):
        points = [[rng.choice([0.1, 0.2, 0.3]) for _ in range(3)] for _ in range(8)]
        reference = [
            i
            for i, p in enumerate(points)
            if not any(
                all(a >= b for a, b in zip(q, p)) and any(a > b for a, b in zip(q, p))
                for q in points
            )
        ]
        assert pareto_front(points) == reference


def _rows(baseline, trials):
    rows = [{"trial_id": "zero-shot", "baseline": True, **baseline}]
    rows += [{"trial_id": f"t{i}", "baseline": False, **m} for i, m in enumerate(trials)]
    goals = Objectives([Goal("id_acc", "max", 0.5), Goal("ood_auroc")])
    for r in rows:
        r["score"] = goals.score(r)
    mark_choice(rows, goals)
    return rows, goals


def test_a_dominating_baseline_is_chosen_and_said_so():
    # the demo's numbers: zero-shot 0.737 / 0.906, the best trial 0.780 / 0.848
    rows, goals = _rows(
        {"id_acc": 0.737, "ood_auroc": 0.906},
        [{"id_acc": 0.780, "ood_auroc": 0.848}, {"id_acc": 0.70, "ood_auroc": 0.80}],
    )
    assert chosen_row(rows)["trial_id"] == "zero-shot"
    assert [r["chosen"] for r in rows] == [True, False, False]
    assert rows[0]["pareto"] and rows[1]["pareto"] and not rows[2]["pareto"]
    assert best_trial_row(rows, goals)["trial_id"] == "t0"
    assert choice_statement(rows, goals) == (
        "no trial beat the zero-shot model on score: 1.274 against 1.238 for the best trial t0 "
        "(score = ood_auroc + 0.5 * id_acc); the recommendation is the starting model itself, "
        "and t0 is the best fine-tuned option"
    )
    table = format_trials(rows, goals)
    assert next(ln for ln in table.splitlines() if "zero-shot" in ln).startswith(">")


def test_a_dominating_trial_is_chosen():
    rows, goals = _rows(
        {"id_acc": 0.70, "ood_auroc": 0.80},
        [{"id_acc": 0.75, "ood_auroc": 0.85}, {"id_acc": 0.72, "ood_auroc": 0.90}],
    )
    assert chosen_row(rows)["trial_id"] == "t1"  # 0.90 + 0.36 > 0.85 + 0.375
    assert not rows[0]["pareto"]
    assert choice_statement(rows, goals).startswith("trial t1 is chosen: on the Pareto front")


def test_old_experiments_read_their_score_weight():
    goals = Objectives.of_saved({"score_weight": 2.0})
    assert goals.score({"id_acc": 0.5, "ood_auroc": 0.25}) == pytest.approx(1.25)


def test_with_a_confirmation_the_choice_is_on_the_means_over_seeds():
    from raymmft.results.rows import add_confirmation, format_confirmation

    goals = Objectives([Goal("id_acc", "max", 0.5), Goal("ood_auroc")])
    rows = [
        {"trial_id": "zero-shot", "baseline": True, "id_acc": 0.70, "ood_auroc": 0.80},
        # the luckiest single run: best by one seed, worse on average
        {"trial_id": "lucky", "baseline": False, "id_acc": 0.80, "ood_auroc": 0.90},
        {"trial_id": "steady", "baseline": False, "id_acc": 0.78, "ood_auroc": 0.88},
        {"trial_id": "unconfirmed", "baseline": False, "id_acc": 0.79, "ood_auroc": 0.89},
    ]
    runs = [
        {"candidate": "lucky", "seed": 0, "id_acc": 0.80, "ood_auroc": 0.90},
        {"candidate": "lucky", "seed": 1, "id_acc": 0.72, "ood_auroc": 0.82},
        {"candidate": "lucky", "seed": 2, "id_acc": 0.74, "ood_auroc": 0.83},
        {"candidate": "steady", "seed": 0, "id_acc": 0.78, "ood_auroc": 0.88},
        {"candidate": "steady", "seed": 1, "id_acc": 0.77, "ood_auroc": 0.87},
        {"candidate": "steady", "seed": 2, "id_acc": math.nan, "ood_auroc": math.nan},  # failed
    ]
    for r in rows:
        r["score"] = goals.score(r)
    assert goals.choose(rows) == 1  # one run each: the lucky one
    add_confirmation(rows, runs, goals)
    mark_choice(rows, goals)
    assert chosen_row(rows)["trial_id"] == "steady"
    lucky, steady = rows[1], rows[2]
    assert lucky["confirm_runs"] == 3 and steady["confirm_runs"] == 2
    assert lucky["mean_id_acc"] == pytest.approx((0.80 + 0.72 + 0.74) / 3)
    assert steady["std_ood_auroc"] == pytest.approx(0.01 / math.sqrt(2))
    assert steady["mean_score"] == pytest.approx(goals.score({"id_acc": 0.775, "ood_auroc": 0.875}))
    assert "unconfirmed" not in {r["trial_id"] for r in rows if r["pareto"]}
    assert best_trial_row(rows, goals)["trial_id"] == "steady"
    statement = choice_statement(rows, goals)
    assert statement.startswith("trial steady is chosen: on the Pareto front")
    assert "(mean of 2 runs)" in statement
    table = format_confirmation(rows, goals)
    assert table.splitlines()[3].split()[:2] == ["steady", "2"]
