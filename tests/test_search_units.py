"""The search layer's pure pieces, without starting Ray: search space → Tune/Optuna, resources →
concurrent trials, failure reasons, a resumed searcher agreeing with the restored trials."""

import json
from pathlib import Path

import pytest
from ray import tune
from ray.train import WorkerGroupError

from raymmft import searcher as search
from raymmft.config_file import load_config
from raymmft.errors import ConfigError
from raymmft.search import concurrent_trials, num_reports, trial_scheduler
from raymmft.search_space import flatten_fields as flatten_params
from raymmft.search_space import tune_param_space
from raymmft.searcher import make_searcher, optuna_search, study_storage
from raymmft.trial import failure_reason

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"


def test_param_space_nests_dotted_keys_and_flattens_back():
    cfg = load_config(DEMO, ["search.space={train.lam: {loguniform: [0.001, 1.0]}, train.seed: 3}"])
    space = tune_param_space(cfg.search.space)
    assert isinstance(space["train"]["lam"], tune.search.sample.Float)
    assert space["train"]["lam"].lower == 0.001 and space["train"]["lam"].upper == 1.0
    assert space["train"]["seed"] == 3, "a fixed value stays fixed"
    assert flatten_params({"train": {"lam": 0.5, "seed": 3}, "model": {"temperature": 0.02}}) == {
        "train.lam": 0.5,
        "train.seed": 3,
        "model.temperature": 0.02,
    }


def test_searcher_is_seeded_and_multi_objective():
    cfg = load_config(DEMO, ["search.sampler=random", "search.seed=7"])
    draws = []
    for _ in range(2):
        searcher = optuna_search(cfg)
        searcher.set_search_properties(None, None, tune_param_space(cfg.search.space))
        draws.append([searcher.suggest(f"t{i}")["train"]["lam"] for i in range(3)])
    assert draws[0] == draws[1], "same seed, same trials"
    assert len(set(draws[0])) == 3
    assert searcher.metric == ["id_acc", "ood_auroc"] and searcher.mode == ["max", "max"]


def test_initial_points_come_first():
    cfg = load_config(
        DEMO,
        [
            "search.space={train.lam: {loguniform: [0.001, 1.0]}, train.lr: {choice: [0.1, 0.2]}}",
            "search.initial_points=[{train.lam: 0.5, train.lr: 0.2}, {train.lam: 0.01, train.lr: 0.1}]",
        ],
    )
    searcher = optuna_search(cfg)
    searcher.set_search_properties(None, None, tune_param_space(cfg.search.space))
    first = [searcher.suggest(f"t{i}")["train"] for i in range(3)]
    assert first[:2] == [{"lam": 0.5, "lr": 0.2}, {"lam": 0.01, "lr": 0.1}]
    assert first[2]["lr"] in (0.1, 0.2)


def test_asha_rungs_follow_the_eval_period():
    cfg = load_config(DEMO, ["train.epochs=7", "eval.every_n_epochs=2"])
    assert num_reports(cfg) == 4  # epochs 2, 4, 6 and the last one, 7
    asha = trial_scheduler(cfg)
    assert asha._max_t == 4 and asha._metric == "score" and asha._mode == "max"


@pytest.mark.parametrize(
    ("workers", "cpus", "gpu", "cluster", "samples", "expected"),
    [
        (1, 1, False, {"CPU": 2}, 6, 2),
        (2, 1, False, {"CPU": 2}, 6, 1),
        (2, 1, False, {"CPU": 16}, 3, 3),  # never more than num_samples
        (2, 2, True, {"CPU": 64, "GPU": 8}, 16, 4),  # 8 GPUs / 2 per trial
        (8, 8, True, {"CPU": 64, "GPU": 8}, 16, 1),
    ],
)
def test_concurrent_trials(workers, cpus, gpu, cluster, samples, expected):
    cfg = load_config(
        DEMO,
        [
            f"resources.num_workers={workers}",
            f"resources.cpus_per_worker={cpus}",
            f"resources.use_gpu={str(gpu).lower()}",
            f"search.num_samples={samples}",
            "train.batch_size=64",
        ],
    )
    assert concurrent_trials(cfg, cluster) == expected


def test_trial_that_never_fits_is_an_error():
    cfg = load_config(DEMO, ["resources.num_workers=4", "resources.use_gpu=true"])
    with pytest.raises(ConfigError) as err:
        concurrent_trials(cfg, {"CPU": 32, "GPU": 2})
    assert str(err.value) == (
        "a trial needs 4 GPU (resources.num_workers=4 x gpus_per_worker) but the cluster has 2; "
        "lower resources.num_workers or resources.gpus_per_worker"
    )


def test_failure_reason_names_rank_and_exception():
    err = WorkerGroupError(
        "x", {1: FloatingPointError("non-finite loss nan at step 2 (contrastive nan)")}
    )
    assert failure_reason(err) == (
        "worker rank 1: FloatingPointError: non-finite loss nan at step 2 (contrastive nan)"
    )
    remote = WorkerGroupError("x", {0: RuntimeError("Traceback ...\n  File x\nKeyError: 'lr'")})
    assert failure_reason(remote) == "worker rank 0: KeyError: 'lr'"


def _state_file(directory: Path, trials: dict[str, tuple[str, dict, dict]]) -> None:
    """An experiment state as Tune writes it: trial_id -> (status, config, last_result)."""
    data = [
        [
            json.dumps({"trial_id": tid, "status": status, "config": config}),
            json.dumps({"num_failures": 0, "last_result": result}),
        ]
        for tid, (status, config, result) in trials.items()
    ]
    path = directory / "experiment_state-2026-12-01_00-00-00.json"
    path.write_text(json.dumps({"trial_data": data}))


def _resumable(cfg, total):
    alg = make_searcher(cfg, max_concurrent=2)
    alg.set_search_properties(None, None, tune_param_space(cfg.search.space))
    alg._total_samples = total  # what add_configurations sets from num_samples
    return alg


def _resume_config(tmp_path, storage, monkeypatch):
    """The demo with one objective; the study in <experiment>/optuna.journal (``journal``) or,
    as on object storage, only in Tune's pickled state (``memory``)."""
    if storage == "memory":
        monkeypatch.setattr(search, "study_storage", lambda cfg: None)
    return load_config(
        DEMO,
        ["search.sampler=random", "search.objectives=[{metric: id_acc}]"],
        fields={"storage.path": str(tmp_path / "results")},
    )


@pytest.mark.parametrize("storage", ["journal", "memory"])
def test_resumed_search_agrees_with_the_trials_tune_restores(tmp_path, storage, monkeypatch):
    """A driver killed while its state was uploading: the experiment state knows trial b, the
    searcher's (older) state does not; the searcher's newer state knew c, the experiment state
    does not. After restore the searcher follows the experiment state, with the study in
    <experiment>/optuna.journal (which never lags) or only in Tune's pickled state."""
    cfg = _resume_config(tmp_path, storage, monkeypatch)
    alg = _resumable(cfg, 3)
    limiter = alg.searcher
    a = limiter.suggest("a")
    alg._counter = 1
    limiter.on_trial_complete("a", result={"id_acc": 0.5, "config": a})
    alg.save_to_dir(str(tmp_path), session_str="s")  # the searcher state that reached storage
    b = limiter.suggest("b")
    _state_file(tmp_path, {"a": ("TERMINATED", a, {"id_acc": 0.5}), "b": ("PENDING", b, {})})

    resumed = _resumable(cfg, 3)
    resumed.restore_from_dir(str(tmp_path))
    base = resumed.searcher.searcher
    assert resumed._counter == 2 and not resumed.is_finished()
    assert resumed.searcher.live_trials == {"b"}
    assert base._ot_trials["b"].params == {
        k.replace(".", "/"): v for k, v in flatten_params(b).items()
    }
    resumed.searcher.on_trial_complete("b", result={"id_acc": 0.7})  # a KeyError before
    study = base._ot_study
    assert sorted(t.values[0] for t in study.trials if t.state.name == "COMPLETE") == [0.5, 0.7]
    resumed._counter += 1  # the third and last trial
    assert resumed.is_finished()

    # the other way round: the searcher suggested c, the experiment state never recorded it
    alg.searcher.suggest("c")
    alg._counter = 3
    alg.save_to_dir(str(tmp_path), session_str="s")
    again = _resumable(cfg, 3)
    again.restore_from_dir(str(tmp_path))
    states = {t.number: t.state.name for t in again.searcher.searcher._ot_study.trials}
    assert again._counter == 2 and list(states.values()).count("FAIL") == 1
    assert "c" not in again.searcher.live_trials
    if storage == "journal":  # the study in the experiment: every trial once, tagged with its id
        import optuna

        from raymmft.searcher import open_study_storage

        stored = optuna.load_study(
            study_name="demo", storage=open_study_storage(study_storage(cfg))
        )
        tags = sorted(t.user_attrs["tune_trial_id"] for t in stored.trials)
        assert tags == ["a", "b", "c"]


@pytest.mark.parametrize("storage", ["journal", "memory"])
def test_resumed_search_tells_optuna_a_trial_tune_finished(tmp_path, storage, monkeypatch):
    """The searcher's state reached storage while trial a was running; the experiment state after
    a finished. Tune will not run a again, so the restore itself tells Optuna a's result (a CI run
    caught the study keeping a RUNNING for good)."""
    cfg = _resume_config(tmp_path, storage, monkeypatch)
    alg = _resumable(cfg, 2)
    a = alg.searcher.suggest("a")
    alg._counter = 1
    alg.save_to_dir(str(tmp_path), session_str="s")  # a still running in this state
    if storage == "journal":  # the journal is written at every tell: it saw a finish
        alg.searcher.on_trial_complete("a", result={"id_acc": 0.5, "config": a})
    _state_file(tmp_path, {"a": ("TERMINATED", a, {"id_acc": 0.5})})

    resumed = _resumable(cfg, 2)
    resumed.restore_from_dir(str(tmp_path))
    base = resumed.searcher.searcher
    trials = base._ot_study.get_trials(deepcopy=False)
    assert [(t.state.name, t.values) for t in trials] == [("COMPLETE", [0.5])]
    assert base._completed_trials == {"a"} and resumed.searcher.live_trials == set()
    assert resumed._counter == 1 and not resumed.is_finished()


def test_the_private_attributes_raymmft_searcher_relies_on(tmp_path, monkeypatch):
    """raymmft/searcher.py is the one module that reaches into Tune's OptunaSearch,
    ConcurrencyLimiter and SearchGenerator; these are the attributes and their meaning it relies
    on. An upgrade of Ray or Optuna that renames one fails here first."""
    import optuna

    cfg = _resume_config(tmp_path, "journal", monkeypatch)
    alg = _resumable(cfg, 3)
    limiter, base = alg.searcher, alg.searcher.searcher
    config = limiter.suggest("t1")
    assert isinstance(base._ot_study, optuna.Study)
    assert base._study_name == cfg.storage.name
    assert isinstance(base._sampler, optuna.samplers.RandomSampler)
    assert set(base._space) == {"train/lam", "model/temperature", "train/lr"}
    assert base._metric == "id_acc"
    assert isinstance(base._ot_trials["t1"], optuna.Trial)
    assert base._ot_trials["t1"].params == {
        k.replace(".", "/"): v for k, v in flatten_params(config).items()
    }
    assert limiter.live_trials == {"t1"} and limiter.num_unfinished_live_trials == 1
    limiter.on_trial_complete("t1", result={"id_acc": 0.5})
    assert base._completed_trials == {"t1"} and limiter.live_trials == set()
    assert isinstance(alg._counter, int)
