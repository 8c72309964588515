"""TensorBoard record of one trial, written by its rank-0 worker into the experiment storage.

``TrialWriter`` writes event files into a local staging directory and copies them to the trial's
directory on the experiment storage (``<storage>/<experiment>/tensorboard/<trial_id>``) after every
evaluation and at ``close``, through ``pyarrow.fs`` so that a local path, NFS and ``s3://`` /
``gs://`` all work, whichever node rank 0 runs on. ``tensorboard --logdir <experiment dir>`` then
shows every trial as the run ``tensorboard/<trial_id>``.

Tags (``<key>`` is a metric name as ``run_training`` reports it):

- ``train/loss``, ``train/contrastive``: the total loss and its CLIP cross-entropy part;
  ``train/cma_regularizer``: R = R_img + R_txt (mean negative log-sum-exp, docs/method.md, "The CMA loss");
  ``train/cma_term``: lam * R, the CMA part of the loss (when ``train.lam`` is an hparam);
  ``train/lr``, ``train/logit_scale``, ``train/images_per_s``, ``train/skipped_images``;
  ``time/train_s``, ``time/eval_s``, ``time/startup_s``: where the trial's time went since the
  previous report (``time/checkpoint_s``, measured as the report is made, is in the trial's
  results only).
- ``eval/id_acc``, ``eval/modality_gap``, ``eval/score``;
  ``eval/ood_<m>`` (mean over the OoD val sets, primary score) and ``eval/ood_<m>/<set>`` for
  ``<m>`` in auroc, fpr95, aupr_in, aupr_out; ``eval/<score>/ood_<m>[/<set>]`` for every score.
- ``hist/<score>/id`` and ``hist/<score>/<set>``: the raw ID and OoD scores of each evaluation.
- The HParams plugin entry: every searched field (``train.lam``, ``model.temperature``,
  ``train.lr``, ...) as an hparam, and the ``eval/*`` tags of ``METRIC_TAGS`` (plus per-set AUROC and
  FPR95) as its metrics, whose values the dashboard reads from the scalars, i.e. the last
  evaluation. The entry is written when the writer opens, so a trial that ASHA stops (its workers
  are killed, ``close`` never runs) is still in the dashboard; ``close`` adds the end status.

Pure: no Ray import; ``torch.utils.tensorboard`` is the writer.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np

from raymmft.objectives import DEFAULT_GOALS, Objectives
from raymmft.storage import Location

# metric reported by run_training -> TensorBoard tag
TRAIN_TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "train_contrastive": "train/contrastive",
    "train_regularizer": "train/cma_regularizer",
    "lr": "train/lr",
    "logit_scale": "train/logit_scale",
    "images_per_s": "train/images_per_s",
    "train_skipped": "train/skipped_images",
}
# where the trial's time went since the last report (raymmft.loop): logged under their own names
TIME_PREFIX = "time/"
CMA_TERM_TAG = "train/cma_term"
# Bookkeeping in the metrics dict that is not a measurement.
NOT_LOGGED = frozenset({"epoch", "step", "world_size", "checkpoint_path"})
METRIC_TAGS: tuple[str, ...] = (
    "eval/id_acc",
    "eval/ood_auroc",
    "eval/ood_fpr95",
    "eval/ood_aupr_in",
    "eval/ood_aupr_out",
    "eval/modality_gap",
    "eval/score",
    "train/loss",
)


def objectives_layout(objectives: Objectives) -> dict:
    """What TensorBoard's custom-scalars page (http://localhost:6006/#custom_scalars) shows: the
    search's objectives and its scalar score, every run (the zero-shot baseline included) on one
    chart each. The per-score and per-set cards stay in the scalars dashboard."""
    charts = {
        f"{g.metric} ({g.mode})": ["Multiline", [f"^eval/{re.escape(g.metric)}$"]]
        for g in objectives.goals
    }
    charts[f"score = {objectives.formula()}"] = ["Multiline", [r"^eval/score$"]]
    return {
        "objectives": charts,
        "the method": {
            "FPR95": ["Multiline", [r"^eval/ood_fpr95$"]],
            "modality gap": ["Multiline", [r"^eval/modality_gap$"]],
            "training loss": ["Multiline", [r"^train/loss$"]],
        },
    }


# Always in the HParams entry when the config has them (the method's three knobs).
CORE_HPARAMS: tuple[str, ...] = ("train.lam", "model.temperature", "train.lr")
LAM_KEY = "train.lam"


def hparams_of(config: Any, searched_keys: Sequence[str]) -> dict[str, Any]:
    """``{dotted.field: value}`` of every searched field and of lam, tau, lr.

    ``config`` is a nested dict (or a pydantic model, dumped): pass the trial's full config
    (``cfg.model_dump(mode="json")``) so that unset defaults are there too. Fields absent from it
    are left out.
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    out = {}
    for key in [*CORE_HPARAMS, *(k for k in searched_keys if k not in CORE_HPARAMS)]:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            out[key] = node
    return out


def _hparam_value(v: Any) -> float | str:
    """What the HParams plugin can hold: a number or a string."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, Number):
        return float(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, default=str)


def _is_number(v: Any) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool)


class TrialWriter:
    """rank 0's TensorBoard writer for one trial (see the module docstring for the tags)."""

    def __init__(
        self,
        destination: str | Location,
        hparams: Mapping[str, Any] | None,
        *,
        ood_sets: Sequence[str] = (),
        objectives: Objectives | None = None,
        staging_dir: str | None = None,
        purge_step: int | None = None,
    ):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.destination = Location.parse(destination)
        self.hparams = {k: _hparam_value(v) for k, v in (hparams or {}).items()}
        lam = (hparams or {}).get(LAM_KEY)
        self._lam = float(lam) if _is_number(lam) else None
        self._own_staging = staging_dir is None
        self.staging_dir = staging_dir or tempfile.mkdtemp(prefix="raymmft-tb-")
        self._writer = SummaryWriter(log_dir=self.staging_dir, flush_secs=30, purge_step=purge_step)
        self._eval_steps: set[int] = set()
        self._last_step = 0
        self._closed = False

        self._writer.add_custom_scalars(objectives_layout(objectives or Objectives(DEFAULT_GOALS)))
        self._session_end = None
        if hparams is not None:  # the zero-shot baseline's run has no hparams entry
            metric_tags = list(METRIC_TAGS)
            for name in ood_sets:
                metric_tags += [f"eval/ood_auroc/{name}", f"eval/ood_fpr95/{name}"]
            experiment, start, self._session_end = hparams_summary(
                self.hparams, dict.fromkeys(metric_tags, 0.0)
            )
            self._writer.file_writer.add_summary(experiment)
            self._writer.file_writer.add_summary(start)
        self.sync()

    # ------------------------------------------------------------ logging

    def log_train(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Training scalars (loss and its parts, lr, logit scale, throughput) at ``step``."""
        for key, tag in TRAIN_TAGS.items():
            if _is_number(metrics.get(key)):
                self._writer.add_scalar(tag, float(metrics[key]), step)
        for key, value in metrics.items():
            # a report's checkpoint time is measured as the report is made, after this log
            if key == "time/checkpoint_s":
                continue
            if key.startswith(TIME_PREFIX) and _is_number(value):
                self._writer.add_scalar(key, float(value), step)
        if self._lam is not None and _is_number(metrics.get("train_regularizer")):
            self._writer.add_scalar(
                CMA_TERM_TAG, self._lam * float(metrics["train_regularizer"]), step
            )
        self._last_step = max(self._last_step, step)

    def log_eval(self, step: int, metrics: Mapping[str, Any], evaluation=None) -> None:
        """Every evaluation metric as ``eval/<key>``; with ``evaluation`` (an ``EvaluationResult``)
        also the ID vs OoD score histograms. Then copies the event files to the destination."""
        for key, value in metrics.items():
            if key in NOT_LOGGED or key in TRAIN_TAGS or key.startswith(TIME_PREFIX):
                continue
            if not _is_number(value):
                continue
            self._writer.add_scalar(f"eval/{key}", float(value), step)
        if evaluation is not None:
            self._log_histograms(step, evaluation)
        self._eval_steps.add(step)
        self._last_step = max(self._last_step, step)
        self.sync()

    def _log_histograms(self, step: int, evaluation) -> None:
        for score, values in evaluation.id_scores.items():
            self._histogram(f"hist/{score}/id", values, step)
        for name, by_score in evaluation.ood_scores.items():
            for score, values in by_score.items():
                self._histogram(f"hist/{score}/{name}", values, step)

    def _histogram(self, tag: str, values, step: int) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size:
            self._writer.add_histogram(tag, values, step)

    # ------------------------------------------------------------ storage

    def sync(self) -> None:
        """Flush and copy the staging directory to the destination (overwriting earlier copies)."""
        self._writer.flush()
        self.destination.upload_dir(self.staging_dir)

    def close(self, final_metrics: Mapping[str, Any] | None = None) -> None:
        """Log ``final_metrics`` as an evaluation unless its step was logged already, mark the
        HParams session finished, copy the event files to the destination one last time."""
        if self._closed:
            return
        if final_metrics:
            step = final_metrics.get("step")
            step = int(step) if _is_number(step) else self._last_step
            if step not in self._eval_steps:
                self.log_eval(step, final_metrics)
        if self._session_end is not None:
            self._writer.file_writer.add_summary(self._session_end)
        self.sync()
        self._writer.close()
        self._closed = True
        if self._own_staging:
            shutil.rmtree(self.staging_dir, ignore_errors=True)

    def __enter__(self) -> TrialWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
