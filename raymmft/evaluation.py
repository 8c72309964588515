"""Evaluation of a CLIP model for OoD detection: ID accuracy, OoD metrics per score, modality gap.

Two layers: ``evaluate_embeddings`` is a pure function of features (what the metrics are), and
``Evaluator`` is the one evaluation path of raymmft: built once for a model and its datasets (each
score's setup runs with the starting model), called at each evaluation with the current weights.
The training loop, a chosen configuration's test evaluation, ``raymmft evaluate``, the search's
zero-shot baseline and the world's metrics all go through it.

Definitions (docs/method.md, "Metrics"):
- ID accuracy: ``argmax_c f . T_c`` against the label, ``T_c`` the template-averaged class feature;
- OoD metrics per OoD set and score (ID positive): AUROC, FPR at 95 % TPR, AUPR-in, AUPR-out; their
  mean over the OoD sets;
- modality gap: ``|| mean_i f_i - mean_c T_c ||_2`` with ``f_i`` the L2-normalised ID image features
  and ``T_c`` the L2-normalised class text features;
- on request, 95 % bootstrap intervals of the accuracy and OoD metrics, and their paired difference
  from a reference model (``raymmft.ood.bootstrap``, docs/method.md "Confidence intervals").
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raymmft.config import OOD_METRICS
from raymmft.data.loading import require_same_classes
from raymmft.distributed import gather_rows, shard_bounds
from raymmft.ood.bootstrap import BootstrapIntervals, Estimate, bootstrap_intervals
from raymmft.ood.embed import CachedTokenizer, TextEncoder, class_text_features, encode_images
from raymmft.ood.metrics import accuracy, ood_metrics
from raymmft.ood.scores import SCORES, ScoreContext, clip_logits, get_score
from raymmft.progress import Progress, say
from raymmft.storage import Location
from raymmft.text_tower import clip_of

METRICS = OOD_METRICS
METRIC_TITLES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out"}
# images per block when scoring: bounds the [block, M] similarity matrices held at once
SCORE_BLOCK = 1024


@dataclass
class EvaluationResult:
    """Everything one evaluation measured. Metric values are fractions in [0, 1]."""

    id_accuracy: float
    modality_gap: float
    primary_score: str
    scores: list[str]
    per_set: dict[str, dict[str, dict[str, float]]]  # OoD set -> score -> metric -> value
    mean: dict[str, dict[str, float]]  # score -> metric -> mean over OoD sets
    num_id: int
    num_classes: int
    num_ood: dict[str, int]
    num_negatives: int | None = None
    num_skipped: int = 0  # unreadable images left out (skip_corrupt)
    id_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # score -> [N_id]
    ood_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    # whether each ID image is classified right, [N_id] bool: what the accuracy bootstrap resamples
    id_correct: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    logit_scale: float | None = None  # the model's, which MSP used
    intervals: BootstrapIntervals | None = field(default=None, repr=False)  # add_intervals

    def add_intervals(
        self,
        num_resamples: int,
        seed: int = 0,
        *,
        reference: EvaluationResult | None = None,
        reference_name: str = "reference",
    ) -> BootstrapIntervals:
        """Compute (``raymmft.ood.bootstrap.bootstrap_intervals``) and keep the 95 % bootstrap
        intervals of every metric, with the paired difference from ``reference`` (another model's
        evaluation of the same images) when given; ``to_dict`` and ``format_table`` show them."""
        self.intervals = bootstrap_intervals(
            self,
            num_resamples=num_resamples,
            seed=seed,
            reference=reference,
            reference_name=reference_name,
        )
        return self.intervals

    def flat_metrics(self) -> dict[str, float]:
        """One flat dict for reporting (Ray Tune, TensorBoard).

        ``id_acc``, ``modality_gap``; ``ood_<metric>`` = mean over OoD sets with the primary score and
        ``ood_<metric>/<set>`` per set; ``<score>/ood_<metric>`` and ``<score>/ood_<metric>/<set>``
        for every score.
        """
        out = {"id_acc": self.id_accuracy, "modality_gap": self.modality_gap}
        for metric in METRICS:
            out[f"ood_{metric}"] = self.mean[self.primary_score][metric]
            for name, by_score in self.per_set.items():
                out[f"ood_{metric}/{name}"] = by_score[self.primary_score][metric]
        for score in self.scores:
            for metric in METRICS:
                out[f"{score}/ood_{metric}"] = self.mean[score][metric]
                for name, by_score in self.per_set.items():
                    out[f"{score}/ood_{metric}/{name}"] = by_score[score][metric]
        return out

    def to_dict(self) -> dict:
        """JSON-ready summary (no raw score arrays).

        With intervals (``add_intervals``), each bounded metric's key ``K`` has a sibling
        ``K_ci95`` of the same shape with ``[low, high]`` in place of each value
        (``id_accuracy_ci95``, ``ood.<set>.metrics_ci95``, ``mean_ci95``), ``bootstrap`` says how
        they were drawn, and with a reference ``delta_vs_reference`` holds ``{"value", "ci95"}``
        per metric in the shapes of ``id_accuracy``, ``ood.<set>.metrics`` and ``mean``.
        """
        out = {
            "id_accuracy": self.id_accuracy,
            "modality_gap": self.modality_gap,
            "logit_scale": self.logit_scale,
            "primary_score": self.primary_score,
            "scores": list(self.scores),
            "num_id": self.num_id,
            "num_classes": self.num_classes,
            "num_negatives": self.num_negatives,
            "num_skipped": self.num_skipped,
            "ood": {
                name: {"num_samples": self.num_ood[name], "metrics": by_score}
                for name, by_score in self.per_set.items()
            },
            "mean": self.mean,
        }
        ci = self.intervals
        if ci is None:
            return out
        out["id_accuracy_ci95"] = list(ci.id_accuracy)
        for name, entry in out["ood"].items():
            entry["metrics_ci95"] = _nested(ci.per_set[name], list)
        out["mean_ci95"] = _nested(ci.mean, list)
        out["bootstrap"] = {
            "resamples": ci.num_resamples,
            "seed": ci.seed,
            "interval": "95 % percentile; ID and each OoD set resampled apart, with replacement",
        }
        if ci.delta is not None:
            d = ci.delta
            out["delta_vs_reference"] = {
                "reference": d.reference,
                "id_accuracy": _estimate(d.id_accuracy),
                "ood": {name: _nested(by, _estimate) for name, by in d.per_set.items()},
                "mean": _nested(d.mean, _estimate),
            }
        return out


def _nested(by_score: Mapping[str, Mapping[str, object]], convert) -> dict:
    return {s: {m: convert(v) for m, v in by.items()} for s, by in by_score.items()}


def _estimate(e: Estimate) -> dict:
    return {"value": e.value, "ci95": list(e.ci95)}


def modality_gap(image_features: Tensor, text_features: Tensor) -> float:
    """``|| mean_i normalise(f_i) - mean_c normalise(T_c) ||_2`` (Liang et al., 2022)."""
    f = F.normalize(image_features.double(), dim=-1).mean(dim=0)
    t = F.normalize(text_features.double(), dim=-1).mean(dim=0).to(f.device)
    return float(torch.linalg.vector_norm(f - t))


def _check_scores(scores: Sequence[str], primary_score: str | None) -> tuple[list[str], str]:
    scores = list(dict.fromkeys([scores] if isinstance(scores, str) else scores))
    if not scores:
        raise ValueError("at least one OoD score is needed")
    for name in scores:
        get_score(name)
    primary = primary_score or scores[0]
    get_score(primary)
    if primary not in scores:  # the primary score is always computed
        scores.append(primary)
    return scores, primary


def _set_metrics(score: str, ood_set: str, id_s: np.ndarray, ood_s: np.ndarray) -> dict:
    try:
        return ood_metrics(id_s, ood_s)
    except ValueError as exc:  # e.g. NaN scores from a diverged model: say which score and set
        raise ValueError(f"score '{score}' on OoD set '{ood_set}': {exc}") from exc


def evaluate_embeddings(
    id_features: Tensor,
    id_labels: Tensor,
    id_text_features: Tensor,
    ood_features: Mapping[str, Tensor],
    *,
    scores: Sequence[str],
    primary_score: str | None = None,
    params: Mapping[str, object] | None = None,
    logit_scale: float | None = None,
    inputs: Mapping[str, Mapping[str, Tensor]] | None = None,
    device: torch.device | str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EvaluationResult:
    """All metrics from features: image features ``[N, D]`` (ID) and per OoD set, class text features
    ``[C, D]``; ``params`` are the scores' settings (``EvalConfig.score_params``: temperature,
    MCM's temperature, NegLabel's groups and seed), ``logit_scale`` the model's
    ``exp(model.logit_scale)`` that MSP scales its logits by (features do not carry it: MSP is
    refused without it, no default stands for a model's), ``inputs[score]`` what a score's setup
    provides (NegLabel's negatives: ``{"neglabel": {"neg_text_features": [M, D]}}``). Scores run
    on ``device``.

    On ``world_size`` workers (every rank calls it with the same features) each rank scores its
    own run of the ``SCORE_BLOCK``-row blocks of every set and the scores are gathered: the same
    blocks as on one worker, so the same scores, and every rank gets the whole result."""
    scores, primary = _check_scores(scores, primary_score)
    params = {"temperature": 0.01, **(params or {})}
    if logit_scale is not None:
        params["logit_scale"] = float(logit_scale)
    inputs = dict(inputs or {})
    if not ood_features:
        raise ValueError("need at least one OoD set to evaluate OoD detection")
    if id_features.shape[0] == 0:
        raise ValueError("the ID set has no images")
    for name, feats in ood_features.items():
        if feats.shape[0] == 0:
            raise ValueError(f"OoD set '{name}' has no images")
    num_classes = id_text_features.shape[0]
    id_labels = torch.as_tensor(id_labels).long().reshape(-1)
    if id_labels.numel() and (id_labels.min() < 0 or id_labels.max() >= num_classes):
        raise ValueError(
            f"ID labels must lie in [0, {num_classes}) for {num_classes} class names, got "
            f"[{int(id_labels.min())}, {int(id_labels.max())}]"
        )
    device = torch.device(device) if device is not None else id_features.device
    text = id_text_features.to(device)
    on_device = {s: {k: v.to(device) for k, v in inputs.get(s, {}).items()} for s in scores}

    def compute(feats: Tensor) -> dict[str, np.ndarray]:
        # every score is row-wise: blocks of images bound the similarity matrices held at once,
        # and this rank scores its own run of them
        blocks = feats.split(SCORE_BLOCK)
        first, last = shard_bounds(len(blocks), rank, world_size)
        out: dict[str, list[Tensor]] = {name: [] for name in scores}
        for block in blocks[first:last]:
            block = block.to(device)
            for name in scores:
                value = SCORES[name].call_with(block, text, params, on_device[name])
                out[name].append(value.double().cpu().reshape(-1))
        mine = torch.stack(
            [
                torch.cat(out[name]) if out[name] else torch.empty(0, dtype=torch.float64)
                for name in scores
            ],
            dim=1,
        )
        every = gather_rows(mine, world_size)
        return {name: every[:, k].numpy() for k, name in enumerate(scores)}

    logits = clip_logits(id_features.to(device), text, params["temperature"])
    acc = accuracy(logits, id_labels)
    id_correct = (logits.argmax(dim=-1).cpu() == id_labels).numpy()
    id_scores = compute(id_features)
    ood_scores = {name: compute(feats) for name, feats in ood_features.items()}
    per_set = {
        name: {s: _set_metrics(s, name, id_scores[s], by_score[s]) for s in scores}
        for name, by_score in ood_scores.items()
    }
    mean = {
        s: {m: float(np.mean([per_set[name][s][m] for name in per_set])) for m in METRICS}
        for s in scores
    }
    negatives = inputs.get("neglabel", {}).get("neg_text_features")
    return EvaluationResult(
        id_accuracy=acc,
        modality_gap=modality_gap(id_features, id_text_features),
        primary_score=primary,
        scores=scores,
        per_set=per_set,
        mean=mean,
        num_id=int(id_features.shape[0]),
        num_classes=int(num_classes),
        num_ood={name: int(f.shape[0]) for name, f in ood_features.items()},
        num_negatives=None if negatives is None else int(negatives.shape[0]),
        id_scores=id_scores,
        ood_scores=ood_scores,
        id_correct=id_correct,
        logit_scale=params.get("logit_scale"),
    )


class Evaluator:
    """A model on an ID set and named OoD sets, with every score of ``settings`` (the config's
    ``EvalConfig``).

    Built once per run: the datasets are given opened, and each score's setup runs with the
    *starting* model (``bundle.model``): NegLabel mines its negatives from ``corpus``, or takes
    ``negatives`` mined earlier (a search's preparation step). ``evaluate(model)`` then encodes
    every set and the texts with the current weights.

    On ``world_size`` workers every rank builds the evaluator and calls ``evaluate`` at the same
    time: each encodes its own run of every set's batches (the same batches a single worker would
    form: no image twice, none left out) and the features are gathered; each then scores its own
    run of the score blocks (``evaluate_embeddings``) and the scores are gathered, so every rank
    gets the metrics one worker would have. Texts (class prompts, NegLabel's negatives) are
    encoded the same way (``TextEncoder``): each rank its run of the batches, then gathered.
    """

    def __init__(
        self,
        settings,
        bundle,
        classnames: Sequence[str],
        id_set,
        ood_sets: Mapping[str, object],
        *,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = 0,
        corpus=None,
        negatives=None,
        cache: str | Location | None = None,
        out: Callable[[str], None] | None = say,
    ):
        if not ood_sets:
            raise ValueError("need at least one OoD set to evaluate OoD detection")
        self.settings, self.bundle, self.device = settings, bundle, torch.device(device)
        self.classnames = list(classnames)
        if hasattr(id_set, "classnames"):
            require_same_classes(id_set, self.classnames, "the ID evaluation set", "the ID classes")
        self.rank, self.world_size, self.num_workers, self.out = rank, world_size, num_workers, out
        self.scores, self.primary = _check_scores(settings.scores, settings.ood_score)
        self.sets = {"ID": id_set, **ood_sets}
        self._loaders: dict[str, object] = {}
        self.tokenizer = CachedTokenizer(bundle.tokenizer)  # ids kept across evaluations
        context = ScoreContext(
            settings=settings,
            classnames=self.classnames,
            # its own token-id cache: mining's candidates (WordNet: 140k prompts) are not kept
            encode=self.text_encoder(bundle.model, CachedTokenizer(bundle.tokenizer)),
            corpus=corpus,
            negatives=negatives,
            cache=cache,
            out=out,
        )
        self.setups = {n: SCORES[n].setup(context) for n in self.scores if SCORES[n].setup}

    @property
    def num_images(self) -> int:
        return sum(len(d) for d in self.sets.values())

    def text_encoder(self, model: torch.nn.Module, tokenizer=None) -> TextEncoder:
        """A text encoder of ``model`` on this evaluator's device and workers; by default with
        the token ids the evaluator keeps across evaluations."""
        return TextEncoder(
            model,
            tokenizer or self.tokenizer,
            self.device,
            autocast_dtype=self.bundle.autocast_dtype,
            rank=self.rank,
            world_size=self.world_size,
        )

    def _block(self, n: int) -> range:
        """This rank's run of a set's ``eval.batch_size`` batches, as sample indices."""
        size = self.settings.batch_size
        first, last = shard_bounds(math.ceil(n / size), self.rank, self.world_size)
        return range(first * size, min(last * size, n))

    def _loader(self, name: str, dataset):
        """This rank's loader of a set, built once per evaluator (a trial evaluates many times;
        with loader processes, they are kept between evaluations)."""
        from torch.utils.data import DataLoader, Subset

        from raymmft.data.loading import loader_context, loader_workers

        if name not in self._loaders:
            block = Subset(dataset, self._block(len(dataset)))
            workers = loader_workers(self.num_workers)
            self._loaders[name] = DataLoader(
                block,
                batch_size=self.settings.batch_size,
                shuffle=False,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=workers > 0,
                multiprocessing_context=loader_context() if workers > 0 else None,
            )
        return self._loaders[name]

    def _images(self, model, name: str, dataset, progress: Progress) -> tuple[Tensor, Tensor, int]:
        feats, labels, skipped = encode_images(
            model,
            self._loader(name, dataset),
            self.device,
            autocast_dtype=self.bundle.autocast_dtype,
            progress=progress,
        )
        if self.world_size == 1:
            return feats, labels, skipped
        total = gather_rows(torch.tensor([[skipped]]), self.world_size).sum()
        return gather_rows(feats, self.world_size), gather_rows(labels, self.world_size), int(total)

    def evaluate(self, model: torch.nn.Module) -> EvaluationResult:
        """Every metric of ``model`` (the current weights of the bundle's architecture); MSP with
        its current logit scale."""
        logit_scale = float(clip_of(model).logit_scale.detach().exp())
        encode = self.text_encoder(model)
        text = class_text_features(encode, self.classnames, self.settings.templates)
        inputs = {name: setup.inputs(encode) for name, setup in self.setups.items()}
        mine = sum(len(self._block(len(d))) for d in self.sets.values())
        progress = Progress("evaluating", mine, "images", out=self.out)
        encoded = {name: self._images(model, name, d, progress) for name, d in self.sets.items()}
        progress.finish()
        id_feats, id_labels, _ = encoded.pop("ID")
        result = evaluate_embeddings(
            id_feats,
            id_labels,
            text,
            {name: feats for name, (feats, _, _) in encoded.items()},
            scores=self.scores,
            primary_score=self.primary,
            params=self.settings.score_params,
            logit_scale=logit_scale,
            inputs=inputs,
            device=self.device,
            rank=self.rank,
            world_size=self.world_size,
        )
        result.num_skipped = sum(skipped for *_, skipped in encoded.values())
        return result


# --- presentation --------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def _with_ci(value: float, ci: tuple[float, float] | None, sign: str = "") -> str:
    """``91.23`` or, with an interval, ``91.23 [90.10, 92.40]`` (in %)."""
    if math.isnan(value):
        return "nan"
    text = f"{100 * value:{sign}.2f}"
    if ci is None:
        return text
    return f"{text} [{100 * ci[0]:{sign}.2f}, {100 * ci[1]:{sign}.2f}]"


def format_table(result: EvaluationResult) -> str:
    """The results as text: ID accuracy and modality gap, then per score a table of OoD sets
    (AUROC, FPR95, AUPR-in, AUPR-out in %) with their mean; the primary score first. With
    intervals (``add_intervals``) every metric shows its 95 % interval, ``91.23 [90.10, 92.40]``,
    and a paired difference from a reference is a row of signed mean differences per score and a
    line for the ID accuracy."""
    ci = result.intervals
    delta = ci.delta if ci is not None else None
    ordered = [result.primary_score] + [s for s in result.scores if s != result.primary_score]
    names = list(result.per_set)
    delta_row = f"delta vs {delta.reference}" if delta is not None else ""
    width = max([len("OoD set"), len("mean"), len(delta_row), *(len(n) for n in names)])

    def cells(score: str, name: str | None) -> list[str]:
        values = result.mean[score] if name is None else result.per_set[name][score]
        bounds = (
            None if ci is None else (ci.mean[score] if name is None else ci.per_set[name][score])
        )
        return [_with_ci(values[m], bounds and bounds[m]) for m in METRICS]

    rows = {s: {n: cells(s, n) for n in [*names, None]} for s in ordered}  # None: the mean
    deltas = {
        s: [_with_ci(e.value, e.ci95, "+") for e in by.values()]
        for s, by in (delta.mean.items() if delta is not None else ())
    }
    every = [c for by in rows.values() for row in by.values() for c in row]
    cell = max([8, *(len(c) for c in every + [c for row in deltas.values() for c in row])])
    header = f"{'OoD set':<{width}}  {'images':>7}" + "".join(
        f"  {METRIC_TITLES[m]:>{cell}}" for m in METRICS
    )
    negs = f", {result.num_negatives} negative labels" if result.num_negatives is not None else ""
    accuracy = _with_ci(result.id_accuracy, ci and ci.id_accuracy)
    lines = [
        f"ID accuracy: {accuracy} %  ({result.num_id} images, {result.num_classes} classes{negs})",
        f"modality gap: {result.modality_gap:.4f}",
    ]
    if delta is not None:
        change = _with_ci(delta.id_accuracy.value, delta.id_accuracy.ci95, "+")
        lines.append(f"ID accuracy {delta_row}: {change} points")
    if ci is not None:
        lines.append(
            f"[95 % bootstrap intervals: {ci.num_resamples} resamples of the ID and each OoD "
            f"set, seed {ci.seed}]"
        )
    if result.num_skipped:
        lines.append(f"unreadable images skipped: {result.num_skipped}")
    for score in ordered:
        tag = " (primary)" if score == result.primary_score else ""
        lines += ["", f"score: {score}{tag}", header, "-" * len(header)]
        for name in names:
            lines.append(
                f"{name:<{width}}  {result.num_ood[name]:>7}"
                + "".join(f"  {c:>{cell}}" for c in rows[score][name])
            )
        lines.append(
            f"{'mean':<{width}}  {'':>7}" + "".join(f"  {c:>{cell}}" for c in rows[score][None])
        )
        if score in deltas:
            lines.append(
                f"{delta_row:<{width}}  {'':>7}" + "".join(f"  {c:>{cell}}" for c in deltas[score])
            )
    return "\n".join(lines)


def write_json(result: EvaluationResult, location, extra: Mapping | None = None) -> Location:
    """Write ``result.to_dict()`` (plus ``extra``, e.g. the model and data specs) as JSON to a
    local path or storage URI, whole or not at all; returns its ``Location``."""
    payload = {**(dict(extra) if extra else {}), **result.to_dict()}
    return Location.parse(location).write_text(json.dumps(payload, indent=2) + "\n")
