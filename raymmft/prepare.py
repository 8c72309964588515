"""A search's preparation: the work that is the same for every trial, done once before the first.

It builds the starting model, mines NegLabel's negatives with it and evaluates it zero-shot on the
ID validation set and the OoD validation sets, and stores both in the experiment (any storage):

- ``prepared/negatives.pt``: the mined negatives (``NegativeLabels``), which every trial loads
  instead of mining (and the chosen configuration's test evaluation too);
- ``prepared/zero_shot.json``: the starting model's evaluation, the baseline every trial is
  compared with (and ``tensorboard/zero-shot``, the same at step 0).

``raymmft search`` and ``raymmft train`` run it on as many workers as one trial has (a Ray Train
run of its own: mining's prompts and the evaluation's images split over them); ``--resume`` finds
it done. When a searched field changes the starting model, the evaluation or the
ID classes (``model.arch``, ``eval.*``, ``data.*``, ...), no one preparation holds for every trial:
then nothing is prepared and each trial mines for itself (through the NegLabel cache).
"""

from __future__ import annotations

from raymmft.config import Config
from raymmft.progress import say
from raymmft.results.experiment import (
    NEGATIVES_FILE,
    PREPARED_DIR,
    TENSORBOARD_DIR,
    ZERO_SHOT_FILE,
)
from raymmft.results.rows import BASELINE_ID as BASELINE_RUN
from raymmft.storage import Location

# searched fields under these change what the preparation computes
PER_TRIAL = ("model.arch", "model.pretrained", "eval.", "data.", "train.template")


def per_trial_fields(cfg: Config) -> list[str]:
    """The searched fields that make the starting model, its evaluation or the ID classes differ
    between trials (``[]``: one preparation serves every trial)."""
    return [k for k in cfg.search.distributions if k.startswith(PER_TRIAL)]


def prepared_files(experiment: Location) -> dict[str, Location | None]:
    """The experiment's prepared files that exist: ``{"negatives": ..., "zero_shot": ...}``."""
    directory = experiment.join(PREPARED_DIR)
    files = {
        "negatives": directory.join(NEGATIVES_FILE),
        "zero_shot": directory.join(ZERO_SHOT_FILE),
    }
    return {k: v if v.is_file() else None for k, v in files.items()}


def _quiet(line: str) -> None:
    """Progress of the workers other than rank 0: not printed."""


def prepare(
    cfg: Config,
    experiment: str | Location,
    *,
    cache: str | Location | None = None,
    listings: dict[str, str] | None = None,
    worker=None,
) -> dict:
    """Mine the negatives and evaluate the zero-shot starting model; store both under
    ``<experiment>/prepared``. Returns the prepared files' URIs (``negatives`` is ``None`` when no
    score uses NegLabel). With a ``worker`` of a group (``raymmft.loop.WorkerContext``), every
    worker calls this at once: mining's prompts and the evaluation's images are split over them
    (each encodes its share, the features are gathered) and rank 0 writes the files."""
    import torch

    from raymmft.evaluation import write_json
    from raymmft.faults import pause_if_asked
    from raymmft.loop import WorkerContext, evaluator_for, model_of, report_metrics

    pause_if_asked("prepare")
    if worker is None:
        gpu = torch.cuda.is_available() and cfg.resources.use_gpu
        worker = WorkerContext(device=torch.device("cuda" if gpu else "cpu"))
    experiment = Location.parse(experiment)
    directory = experiment.join(PREPARED_DIR)
    device = worker.device
    writes = worker.rank == 0
    if writes:
        model = cfg.model.pretrained or "random init"
        say(
            f"preparing the search: starting model {cfg.model.arch} ({model}) on "
            f"{worker.world_size} worker(s)"
        )
    bundle = model_of(cfg, device)
    cache = Location.parse(cache) if cache is not None else None
    evaluator = evaluator_for(
        cfg,
        bundle,
        device,
        rank=worker.rank,
        world_size=worker.world_size,
        cache=cache,
        listings=listings,
        out=say if writes else _quiet,  # one worker's progress lines
    )
    out = {"negatives": None, "zero_shot": None}
    if "neglabel" in evaluator.setups and writes:
        negatives = evaluator.setups["neglabel"].negatives
        out["negatives"] = negatives.save(directory.join(NEGATIVES_FILE)).uri
    result = evaluator.evaluate(bundle.model)
    if not writes:
        return out
    metrics = report_metrics(cfg, result)
    extra = {"metrics": metrics, "model": cfg.model.model_dump(mode="json")}
    out["zero_shot"] = write_json(result, directory.join(ZERO_SHOT_FILE), extra).uri
    # the baseline in TensorBoard: the trials' evaluation tags at step 0, a run of its own
    from raymmft.data.spec import set_names
    from raymmft.tensorboard_log import TrialWriter

    writer = TrialWriter(
        experiment.join(TENSORBOARD_DIR, BASELINE_RUN),
        None,
        ood_sets=set_names(cfg.data.ood_val),
        objectives=cfg.search.goals,
    )
    writer.log_eval(0, metrics, result)
    writer.close()
    say(
        f"zero-shot starting model: ID accuracy {result.id_accuracy:.4f}, "
        f"OoD AUROC {result.mean[result.primary_score]['auroc']:.4f} ({result.primary_score})"
    )
    return out
