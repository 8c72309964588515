"""Optuna behind Ray Tune: the search algorithm of a search, and the one home of every private
attribute of Tune's ``OptunaSearch``, ``ConcurrencyLimiter`` and ``SearchGenerator`` that raymmft
relies on (no public API holds them). ``tests/test_searcher.py`` pins that behaviour against the
installed Ray and Optuna: an upgrade that renames one fails there, not in a user's resume.

The private attributes used: ``OptunaSearch._ot_study``, ``._ot_trials``, ``._completed_trials``,
``._study_name``, ``._sampler``, ``._space``, ``._metric``; ``ConcurrencyLimiter.live_trials`` and
``.num_unfinished_live_trials``; ``SearchGenerator._counter``.
"""

from __future__ import annotations

import os
import warnings

from ray.tune.search import ConcurrencyLimiter, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from raymmft.config import Config
from raymmft.errors import ConfigError, first_line
from raymmft.results.experiment import OPTUNA_JOURNAL, UNFINISHED, tune_state
from raymmft.search_space import flatten_fields, optuna_name
from raymmft.storage import Location

TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute that ties an Optuna trial to its Tune trial


class TaggedOptunaSearch(OptunaSearch):
    """Tune's ``OptunaSearch`` that writes each Tune trial's id into its Optuna trial (a user
    attribute), so a study kept in a storage maps back onto Tune's trials on ``--resume``, and
    names the study's objectives after the metrics (as optuna-dashboard shows them)."""

    def _setup_study(self, mode):
        super()._setup_study(mode)
        import optuna

        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        with warnings.catch_warnings():  # metric names are "experimental" in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self._ot_study.metric_names is None:
                self._ot_study.set_metric_names(list(metrics))

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None and TUNE_TRIAL_ID not in trial.user_attrs:
            trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        return config


def study_storage(cfg: Config) -> str | None:
    """Where the search's Optuna study lives (study name: the experiment's): ``search.optuna_storage``
    (an RDB URL), else ``<experiment>/optuna.journal`` on local or shared storage (Optuna's
    ``JournalStorage``: ``optuna-dashboard`` reads it live), else nowhere but Tune's own state
    (object storage)."""
    if cfg.search.optuna_storage:
        return cfg.search.optuna_storage
    exp = cfg.storage.experiment
    return exp.join(OPTUNA_JOURNAL).path if exp.is_local else None


def open_study_storage(spec: str):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in spec:
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as exc:  # SQLAlchemy: unknown dialect, missing driver, unreachable server
            raise ConfigError(
                f"search.optuna_storage {spec!r}: cannot open the study storage ({first_line(exc)})"
            ) from None
    os.makedirs(os.path.dirname(spec), exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(spec))


def optuna_search(cfg: Config, storage: str | None = None) -> TaggedOptunaSearch:
    """Tune's ``OptunaSearch`` with the configured sampler (TPE, NSGA-II or random), seeded, on the
    objectives, trying ``search.initial_points`` first; its study in ``storage`` when given."""
    import optuna

    s = cfg.search
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, multivariate=True),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
    }
    metrics, modes = s.goals.metrics, s.goals.modes
    if len(metrics) == 1:
        metrics, modes = metrics[0], modes[0]
    # Optuna names a nested Tune parameter "train/lam".
    points = [{optuna_name(k): v for k, v in p.items()} for p in s.initial_points]
    return TaggedOptunaSearch(
        metric=metrics,
        mode=modes,
        sampler=samplers[s.sampler](),
        points_to_evaluate=points,
        storage=open_study_storage(storage) if storage else None,
        study_name=cfg.storage.name if storage else None,
    )


def make_searcher(cfg: Config, max_concurrent: int) -> ResumableSearch:
    """The search algorithm: ``optuna_search`` with at most ``max_concurrent`` trials at once."""
    storage = study_storage(cfg)
    limiter = ConcurrencyLimiter(optuna_search(cfg, storage), max_concurrent=max_concurrent)
    return ResumableSearch(limiter, storage=storage)


class ResumableSearch(SearchGenerator):
    """Tune's ``SearchGenerator`` over ``ConcurrencyLimiter(OptunaSearch)``, made consistent on
    ``--resume`` with the trials Tune restores.

    Tune saves the experiment state (every trial, its status and config) and the searcher's state
    (Optuna's trials, the generator's trial counter, the limiter's live trials) as separate files,
    and on object storage uploads them in parallel: a driver killed during an upload leaves one
    newer than the other. Restored as they are, the searcher then meets a trial it never suggested
    (a ``KeyError`` inside OptunaSearch) or counts too few trials and runs more than
    ``num_samples``. After restoring, the searcher is brought in line with the experiment state,
    which is what Tune runs: a trial Optuna does not know is added to the study with its config,
    a trial Tune has finished is told its final result when Optuna still has it running (Tune
    will not run it again, so nothing else would tell it), a trial Optuna suggested that Tune never
    recorded is told failed, and the counter and the live trials are those of the experiment
    state.
    """

    def __init__(self, searcher, *, storage: str | None = None):
        super().__init__(searcher)
        self.storage = storage

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        if self.storage is not None:
            self._reattach_study()
        self.reconcile(tune_state(Location.parse(dirpath)))

    def _reattach_study(self) -> None:
        """The study as its storage holds it (written at every ask and tell, so never behind
        Tune's pickled copy), its trials mapped to Tune's by their ``tune_trial_id``."""
        import optuna

        base = self.searcher.searcher
        study = optuna.load_study(
            study_name=base._study_name,
            storage=open_study_storage(self.storage),
            sampler=base._sampler,
        )
        trials = [t for t in study.get_trials(deepcopy=False) if TUNE_TRIAL_ID in t.user_attrs]
        base._ot_study = study
        base._ot_trials = {
            t.user_attrs[TUNE_TRIAL_ID]: optuna.Trial(study, t._trial_id) for t in trials
        }
        base._completed_trials = {
            t.user_attrs[TUNE_TRIAL_ID] for t in trials if t.state.is_finished()
        }

    def reconcile(self, trials: dict[str, dict]) -> None:
        import optuna

        limiter, base = self.searcher, self.searcher.searcher
        for trial_id, trial in trials.items():
            if trial_id not in base._ot_trials:
                params = {optuna_name(k): v for k, v in flatten_fields(trial["config"]).items()}
                base._ot_study.enqueue_trial(params, skip_if_exists=False)
                base._ot_trials[trial_id] = base._ot_study.ask(fixed_distributions=base._space)
                base._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ID, trial_id)
            if trial_id in base._completed_trials:
                continue
            if trial["status"] == "TERMINATED":
                base.on_trial_complete(trial_id, result=trial["last_result"] or None)
            elif trial["status"] == "ERROR":
                base.on_trial_complete(trial_id, error=True)
        for trial_id, ot_trial in base._ot_trials.items():
            if trial_id not in trials and trial_id not in base._completed_trials:
                base._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
                base._completed_trials.add(trial_id)
        limiter.live_trials = {t for t, v in trials.items() if v["status"] in UNFINISHED}
        limiter.num_unfinished_live_trials = len(limiter.live_trials)
        self._counter = len(trials)
