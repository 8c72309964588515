"""Bad input in the search section: every value a search space can give is checked against its
field up front, as are initial points, ASHA's grace period, the objectives and the Optuna storage;
a space of fixed values only is not a search. Each through the real CLI, with the exact one-line
message and exit status 2, before any trial."""

from __future__ import annotations

import pytest
import yaml
from bad_input import _config, _error


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"train.schedule": {"loguniform": [1, 10]}},
            "search.space: train.schedule: loguniform [1, 10] can give 1, but train.schedule: "
            "Input should be 'cosine' or 'constant', got 1",
        ),
        (
            {"train.epochs": {"loguniform": [1, 10]}},
            "search.space: train.epochs: loguniform gives non-integer values but train.epochs "
            "takes integers; use randint or choice",
        ),
        (
            {"train.lr": {"uniform": [-1, 1]}},
            "search.space: train.lr: uniform [-1, 1] can give -1, but train.lr: must be > 0, got -1.0",
        ),
        (
            {"train": {"choice": [{"lr": 0.1}]}},
            "search.space: 'train' is a section, not a field; search its fields (e.g. train.epochs)",
        ),
        (
            {"eval.templates": {"choice": [["no slot here"]]}},
            "search.space: eval.templates: choice [['no slot here']] can give ['no slot here'], "
            "but eval.templates[0]: must contain exactly one '{}', got 'no slot here'",
        ),
    ],
)
def test_every_value_a_space_can_give_is_checked(tmp_path, capsys, space, message):
    path = _config(tmp_path, search={"space": space})
    assert _error(capsys, ["search", str(path)]) == f"{path}: {message}"


@pytest.mark.parametrize(
    "search, message",
    [
        (
            {"space": {"train.lam": {"uniform": [0, 1]}, "train.lr": -1}},
            "search.space: train.lr: the fixed value -1 is refused: train.lr: must be > 0, got -1.0",
        ),
        (
            {"space": {"train.lam": {"uniform": [0, 1]}, "search.num_samples": {"choice": [1, 2]}}},
            "search.space: 'search.num_samples' cannot be searched: the search section belongs to "
            "the whole search, not to one trial",
        ),
        (
            {"space": {"train.lam": {"uniform": [0, 1]}}, "initial_points": [{"train.lam": 2}]},
            "search.initial_points[0]: train.lam = 2 is outside its distribution {uniform: [0, 1]}",
        ),
        (
            {
                "space": {"train.epochs": {"choice": [1, 2]}},
                "initial_points": [{"train.epochs": 3}],
            },
            "search.initial_points[0]: train.epochs = 3 is outside its distribution "
            "{choice: [1, 2]}",
        ),
    ],
)
def test_space_values_points_and_rungs_are_checked(tmp_path, capsys, search, message):
    path = _config(tmp_path, search=search)
    assert _error(capsys, ["search", str(path)]) == f"{path}: {message}"


def test_a_grace_period_past_the_last_report_is_stated(tmp_path, capsys):
    """A quick run (``--set train.epochs=1``) of a config whose ASHA waits 3 evaluations runs,
    and says that ASHA stops nothing, instead of clamping without a word."""
    from raymmft.config_file import load_config
    from raymmft.search import trial_scheduler

    cfg = load_config(_config(tmp_path, search={"asha": {"grace_period": 3}}))
    scheduler = trial_scheduler(cfg)
    assert scheduler._max_t == 1
    assert capsys.readouterr().out == (
        "note: search.asha.grace_period is 3 evaluations but a trial reports 1 (train.epochs 1, "
        "eval.every_n_epochs 1): ASHA stops no trial in this search\n"
    )


def test_a_space_of_fixed_values_only_is_not_a_search(tmp_path, capsys):
    path = _config(tmp_path, search={"space": {"train.lam": 0.5}})
    assert _error(capsys, ["search", str(path)]) == (
        "search.space gives only fixed values (train.lam): give at least one field a "
        "distribution ({uniform: [low, high]}, {choice: [...]}, ...), or run the fixed values "
        "with raymmft train"
    )


def test_bounds_yaml_reads_as_strings_are_numbers(tmp_path):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; the config takes it as the number it spells,
    as it does for a plain field, and the space keeps numbers."""
    from raymmft.config_file import load_config

    text = (
        _config(tmp_path)
        .read_text()
        .replace("uniform:\n      - 0.0\n      - 1.0", "loguniform: [1e-4, 3e-1]")
    )
    assert "loguniform: [1e-4, 3e-1]" in text
    path = tmp_path / "strings.yaml"
    path.write_text(text + "\n")
    assert yaml.safe_load(text)["search"]["space"]["train.lam"] == {"loguniform": ["1e-4", "3e-1"]}
    cfg = load_config(path)
    assert cfg.search.space["train.lam"] == {"loguniform": [1e-4, 0.3]}
    dist = cfg.search.distributions["train.lam"]
    assert dist.extremes() == [1e-4, 0.3] and dist.contains(0.01) and not dist.contains(0.5)


def test_a_choice_of_architectures_is_checked_before_any_trial(tmp_path, capsys):
    space = {"model.arch": {"choice": ["raymmft-tiny", "not-an-arch"]}}
    path = _config(tmp_path, search={"space": space})
    msg = _error(capsys, ["search", str(path)])
    assert msg.startswith(
        "search.space: model.arch can be 'not-an-arch': unknown architecture 'not-an-arch'"
    )


def test_objectives_must_be_metrics_trials_report(tmp_path, capsys):
    path = _config(
        tmp_path,
        search={"objectives": [{"metric": "no_such_metric"}], "asha": {"metric": "id_acc"}},
    )
    msg = _error(capsys, ["search", str(path)])
    assert msg.startswith(
        f"{path}: search.objectives[0].metric: 'no_such_metric' is not a metric trials report "
        "(e.g. id_acc, ood_auroc, score, ood_fpr95, "
    )
    path = _config(tmp_path, search={"asha": {"metric": "ood_auroc/near"}})
    assert "search.asha.metric: 'ood_auroc/near' is not a metric" in _error(
        capsys, ["search", str(path)]
    )


def test_an_optuna_storage_that_cannot_be_opened(tmp_path, capsys):
    import ray

    path = _config(tmp_path, search={"optuna_storage": "nosuchdb://host/study"})
    assert _error(capsys, ["search", str(path)]) == (
        "search.optuna_storage 'nosuchdb://host/study': cannot open the study storage (Can't "
        "load plugin: sqlalchemy.dialects:nosuchdb)"
    )
    assert not ray.is_initialized() and not (tmp_path / "results").exists()
