"""``raymmft.worker.train_fn_per_worker`` with a stopwatch: where a Ray Train worker's time goes.

``probed_train_fn`` is passed to a ``TorchTrainer`` instead of ``train_fn_per_worker``; it wraps the
phases of ``raymmft.loop.run_training`` (imports, loading the negatives a search's preparation step
mined, model build, data, evaluator set-up (``raymmft.loop.evaluator_for``: the evaluation sets and
the scores' setup, NegLabel mining when no prepared negatives were given), each training step, each
evaluation and each report with its checkpoint) by patching the module attributes the loop and the
worker look up, then calls the real ``train_fn_per_worker``. Timestamps are wall-clock
(``time.time()``) so that they compare with the driver's and Ray's logs. Each rank writes
``<probe_dir>/rank<r>.json``. Only the benchmarks import this module (Ray adds the script's
directory to its workers' ``sys.path``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path


class Stopwatch:
    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []
        self.steps: list[tuple[float, float]] = []
        self.reports: list[dict] = []

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spans.append((name, start, time.time()))

        return timed


def probed_train_fn(loop_config: dict) -> None:
    watch = Stopwatch()
    watch.mark("enter")
    import torch

    watch.mark("torch_imported")
    import raymmft.evaluation as evaluation
    import raymmft.finetune as finetune
    import raymmft.loop as loop
    import raymmft.ood.neglabel as neglabel
    import raymmft.tensorboard_log as tensorboard_log
    import raymmft.worker as worker

    watch.mark("raymmft_imported")

    # train_fn_per_worker loads the prepared negatives (a search's preparation step) before the loop
    neglabel.NegativeLabels.load = staticmethod(
        watch.wrap("load_negatives", neglabel.NegativeLabels.load)
    )
    # model_of -> build_model; the train set (the first open_dataset), then evaluator_for opens the
    # evaluation sets and builds the Evaluator, whose NegLabel setup mines (setup_neglabel ->
    # mine_negative_labels) only when no prepared negatives were given
    loop.build_model = watch.wrap("build_model", loop.build_model)
    loop.open_dataset = watch.wrap("open_dataset", loop.open_dataset)
    loop.evaluator_for = watch.wrap("evaluator_init", loop.evaluator_for)
    neglabel.mine_negative_labels = watch.wrap("neglabel_mining", neglabel.mine_negative_labels)
    evaluation.Evaluator.evaluate = watch.wrap("evaluate", evaluation.Evaluator.evaluate)
    finetune.FineTuner.__init__ = watch.wrap("finetuner_init", finetune.FineTuner.__init__)
    tensorboard_log.TrialWriter.__init__ = watch.wrap(
        "tensorboard_init", tensorboard_log.TrialWriter.__init__
    )
    tensorboard_log.TrialWriter.close = watch.wrap(
        "tensorboard_close", tensorboard_log.TrialWriter.close
    )
    # writing rank 0's checkpoint (raymmft.checkpoint.save_state, as imported into the worker)
    worker.save_state = watch.wrap("save_checkpoint", worker.save_state)
    # ray.train.report alone (inside _report, after the checkpoint is written)
    worker.ray.train.report = watch.wrap("ray_train_report", worker.ray.train.report)
    inner_report = worker._report

    def report(metrics: dict, state):
        watch.reports.append(
            {
                "time": time.time(),
                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            }
        )
        return inner_report(metrics, state)

    worker._report = watch.wrap("report", report)
    # Ray's DDP wrapping (a no-op wrapper for one worker) is looked up when the worker fn runs.
    worker.ray.train.torch.prepare_model = watch.wrap(
        "prepare_model", worker.ray.train.torch.prepare_model
    )
    step = finetune.FineTuner.train_step

    def train_step(self, images, labels):
        start = time.time()
        try:
            return step(self, images, labels)
        finally:
            watch.steps.append((start, time.time()))

    finetune.FineTuner.train_step = train_step

    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    info = {
        "rank": rank,
        "world_size": ctx.get_world_size(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpu_affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "dist_initialized": torch.distributed.is_initialized(),
        "dist_backend": torch.distributed.get_backend()
        if torch.distributed.is_initialized()
        else None,
    }
    try:
        worker.train_fn_per_worker(
            {k: v for k, v in loop_config.items() if not k.startswith("probe_")}
        )
    finally:
        watch.mark("exit")
        out = Path(loop_config["probe_dir"]) / f"rank{rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    **info,
                    "marks": watch.marks,
                    "spans": watch.spans,
                    "steps": watch.steps,
                    "reports": watch.reports,
                }
            )
        )


def read_probe(probe_dir: str | Path, rank: int = 0) -> dict:
    return json.loads((Path(probe_dir) / f"rank{rank}.json").read_text())


def span_total(probe: dict, name: str) -> float:
    return sum(end - start for n, start, end in probe["spans"] if n == name)


def span_count(probe: dict, name: str) -> int:
    return sum(1 for n, _, _ in probe["spans"] if n == name)


class ProbedTrainer:
    """A ``TorchTrainer`` whose ``fit`` also writes its start and end time (``fit.json``), and the
    seconds this process spent importing ``raymmft.search`` when that was observed."""

    def __init__(self, trainer, probe_dir: Path):
        self.trainer, self.probe_dir = trainer, probe_dir

    def fit(self):
        record = {
            "fit_start": time.time(),
            "fit_end": None,
            "pid": os.getpid(),
            "search_import_s": _SEARCH_IMPORT.get("seconds"),
            "process_start": _SEARCH_IMPORT.get("hook_time"),
        }
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        path = self.probe_dir / "fit.json"
        # written first: under Tune, a scheduler may stop the trial (kill this process) at its
        # last report, before fit() returns
        path.write_text(json.dumps(record))
        try:
            return self.trainer.fit()
        finally:
            record["fit_end"] = time.time()
            path.write_text(json.dumps(record))


def probed_trainer(
    cfg,
    *,
    storage,
    name: str,
    probe_dir: str | Path,
    cache=None,
    tensorboard_dir=None,
    negatives: str | None = None,
    callbacks=(),
    make_trainer=None,
):
    """The ``TorchTrainer`` that ``raymmft.trial.make_trainer`` builds for ``cfg`` (same scaling and
    run config, callbacks included), running ``probed_train_fn`` instead of ``train_fn_per_worker``.
    ``storage``, ``cache`` and ``tensorboard_dir`` are paths or URIs (``str``) or
    ``raymmft.storage.Location``s; ``negatives`` is the URI of a search's prepared negatives."""
    from ray.train.torch import TorchTrainer

    from raymmft.storage import Location

    if make_trainer is None:
        from raymmft.trial import make_trainer

    def location(value):
        return None if value is None else Location.parse(value)

    reference = make_trainer(
        cfg,
        storage=location(storage),
        name=name,
        cache=location(cache),
        tensorboard_dir=location(tensorboard_dir),
        negatives=negatives,
        callbacks=callbacks,
    )
    trainer = TorchTrainer(
        probed_train_fn,
        train_loop_config={**reference.train_loop_config, "probe_dir": str(probe_dir)},
        scaling_config=reference.scaling_config,
        run_config=reference.run_config,
    )
    return ProbedTrainer(trainer, Path(probe_dir))


# --- probing a search: every trial's TorchTrainer becomes a probed one ---------------------------

PROBE_ROOT_ENV = "RAYMMFT_BENCH_PROBE_ROOT"
_SEARCH_IMPORT: dict[str, float] = {}


def patch_search_module(search, probe_root: str | Path) -> None:
    """Make ``search.make_trainer`` build probed trainers writing to ``<probe_root>/<name>``."""
    original = search.make_trainer
    if getattr(original, "probed", False):
        return

    def make_trainer(
        cfg, *, storage, name, cache, tensorboard_dir=None, negatives=None, callbacks=()
    ):
        return probed_trainer(
            cfg,
            storage=storage,
            name=name,
            probe_dir=Path(probe_root) / name,
            cache=cache,
            tensorboard_dir=tensorboard_dir,
            negatives=negatives,
            callbacks=callbacks,
            make_trainer=original,
        )

    make_trainer.probed = True
    search.make_trainer = make_trainer


class _PatchSearchOnImport:
    """A ``sys.meta_path`` finder that patches ``raymmft.trial`` right after a process imports it,
    so that Ray worker processes pay no import they would not have paid anyway."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "raymmft.trial":
            return None
        import sys

        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            start = time.time()
            exec_module(module)
            _SEARCH_IMPORT["seconds"] = time.time() - start
            patch_search_module(module, os.environ[PROBE_ROOT_ENV])
            _note_hook("patched_on_import")

        spec.loader.exec_module = exec_and_patch
        return spec


def install_search_probe() -> None:
    """Ray ``worker_process_setup_hook``: probe the trials of a search run in this process."""
    import sys

    if not os.environ.get(PROBE_ROOT_ENV):
        return
    _SEARCH_IMPORT["hook_time"] = time.time()
    if "raymmft.trial" in sys.modules:
        patch_search_module(sys.modules["raymmft.trial"], os.environ[PROBE_ROOT_ENV])
        _note_hook("patched_at_start")
    else:
        sys.meta_path.insert(0, _PatchSearchOnImport())
        _note_hook("finder_installed")


def _note_hook(event: str) -> None:
    """Leave ``<probe_root>/hooks/<pid>.<event>`` so that a run can tell which processes were probed."""
    d = Path(os.environ[PROBE_ROOT_ENV]) / "hooks"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{os.getpid()}.{event}").write_text(str(time.time()))
