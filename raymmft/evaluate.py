"""Evaluation of a CLIP model for OoD detection: ID accuracy, OoD metrics per score, modality gap.

Two layers: ``evaluate_embeddings`` is a pure function of features (what the metrics are), and
``evaluate`` encodes a model's images and texts first (what the training loop and ``raymmft
evaluate`` call). Each text is encoded once per evaluation: the class prompts, and the NegLabel
negatives (mined with the starting model once, then re-encoded with the current model; or re-mined).

Definitions (METHOD.md §3-4):
- ID accuracy: ``argmax_c f . T_c`` against the label, ``T_c`` the template-averaged class feature;
- OoD metrics per OoD set and score (ID positive): AUROC, FPR at 95 % TPR, AUPR-in, AUPR-out; their
  mean over the OoD sets;
- modality gap: ``|| mean_i f_i - mean_c T_c ||_2`` with ``f_i`` the L2-normalised ID image features
  and ``T_c`` the L2-normalised class text features.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raymmft.errors import ConfigError
from raymmft.ood.embed import (
    TextEncoder,
    class_text_features,
    encode_images,
)
from raymmft.ood.metrics import accuracy, ood_metrics
from raymmft.ood.neglabel import (
    NegativeLabels,
    NegLabelParams,
    encode_negative_labels,
    mine_negative_labels,
)
from raymmft.ood.scores import DEFAULT_TEMPERATURE, clip_logits, get_score

METRICS: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out")
METRIC_TITLES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-in", "aupr_out": "AUPR-out"}
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


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
    id_scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # score -> [N_id]
    ood_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

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
        """JSON-ready summary (no raw score arrays)."""
        return {
            "id_accuracy": self.id_accuracy,
            "modality_gap": self.modality_gap,
            "primary_score": self.primary_score,
            "scores": list(self.scores),
            "num_id": self.num_id,
            "num_classes": self.num_classes,
            "num_negatives": self.num_negatives,
            "ood": {
                name: {"num_samples": self.num_ood[name], "metrics": by_score}
                for name, by_score in self.per_set.items()
            },
            "mean": self.mean,
        }


def modality_gap(image_features: Tensor, text_features: Tensor) -> float:
    """``|| mean_i normalise(f_i) - mean_c normalise(T_c) ||_2`` (Liang et al., 2022)."""
    f = F.normalize(image_features.double(), dim=-1).mean(dim=0)
    t = F.normalize(text_features.double(), dim=-1).mean(dim=0).to(f.device)
    return float(torch.linalg.vector_norm(f - t))


def _check_scores(scores: Sequence[str], primary_score: str | None) -> tuple[list[str], str]:
    if isinstance(scores, str):
        scores = [scores]
    scores = list(dict.fromkeys(scores))
    if not scores:
        raise ConfigError("at least one OoD score is needed")
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
    temperature: float = DEFAULT_TEMPERATURE,
    neg_text_features: Tensor | None = None,
    neglabel_params: NegLabelParams | Mapping | None = None,
    device: torch.device | str | None = None,
) -> EvaluationResult:
    """All metrics from features: image features ``[N, D]`` (ID) and per OoD set, class text features
    ``[C, D]``, optional NegLabel negatives ``[M, D]``. Scores are computed on ``device``."""
    scores, primary = _check_scores(scores, primary_score)
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
    params = NegLabelParams.from_mapping(neglabel_params)
    if "neglabel" in scores and neg_text_features is None:
        raise ConfigError("OoD score 'neglabel' needs negative text features")
    device = torch.device(device) if device is not None else id_features.device
    text = id_text_features.to(device)
    negs = neg_text_features.to(device) if neg_text_features is not None else None
    shared = {"temperature": temperature, **params.score_kwargs()}

    def compute(feats: Tensor) -> dict[str, np.ndarray]:
        # every score is row-wise: blocks of images bound the similarity matrices held at once
        out: dict[str, list[Tensor]] = {name: [] for name in scores}
        for block in feats.split(params.batch_size):
            block = block.to(device)
            for name in scores:
                value = get_score(name).call_with(block, text, negs, shared)
                out[name].append(value.double().cpu())
        return {name: torch.cat(values).numpy() for name, values in out.items()}

    acc = accuracy(clip_logits(id_features.to(device), text, temperature), id_labels)
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
        num_negatives=None if negs is None else int(negs.shape[0]),
        id_scores=id_scores,
        ood_scores=ood_scores,
    )


def prepare_negatives(
    model: torch.nn.Module,
    tokenizer,
    id_classnames: Sequence[str],
    params: NegLabelParams | Mapping | None = None,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> NegativeLabels:
    """Mine NegLabel negatives with ``model`` (the starting model), cached in ``cache_dir`` (or the
    params' ``cache_dir``) when given."""
    params = NegLabelParams.from_mapping(params)
    kwargs = params.mining_kwargs()
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    encoder = TextEncoder(
        model, tokenizer, device, params.text_batch_size, autocast_dtype=autocast_dtype
    )
    return mine_negative_labels(
        encoder, id_classnames, corpus=params.corpus, progress=progress, **kwargs
    )


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    id_loader: Iterable,
    id_classnames: Sequence[str],
    ood_loaders: Mapping[str, Iterable],
    *,
    scores: Sequence[str] = ("mcm",),
    primary_score: str | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    temperature: float = DEFAULT_TEMPERATURE,
    neglabel_params: NegLabelParams | Mapping | None = None,
    neglabel: NegLabelParams | Mapping | None = None,
    negatives: NegativeLabels | Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Encode the ID and OoD sets and the texts with ``model``, then ``evaluate_embeddings``.

    NegLabel negatives: ``negatives`` (mined earlier, e.g. by ``prepare_negatives`` with the
    starting model) are re-encoded with ``model``; with ``negatives=None`` or
    ``remine_each_eval``, they are mined now with ``model``. ``neglabel`` is an alias of
    ``neglabel_params`` (a ``NegLabelParams``, a dict or the config's section).
    """
    if neglabel is not None and neglabel_params is not None:
        raise TypeError("pass neglabel_params or neglabel, not both")
    params = NegLabelParams.from_mapping(neglabel_params if neglabel is None else neglabel)
    scores, primary = _check_scores(scores, primary_score)
    if not ood_loaders:
        raise ValueError("need at least one OoD set to evaluate OoD detection")
    text_features = class_text_features(
        model,
        tokenizer,
        id_classnames,
        templates,
        device,
        params.text_batch_size,
        autocast_dtype=autocast_dtype,
    )
    neg_features = None
    if "neglabel" in scores:
        if negatives is None or params.remine_each_eval:
            # re-mined at every evaluation, the weights differ each time: a cache would only grow
            remine = params.remine_each_eval
            mined = prepare_negatives(
                model,
                tokenizer,
                id_classnames,
                replace(params, cache_dir=None) if remine else params,
                device=device,
                cache_dir=None if remine else cache_dir,
                autocast_dtype=autocast_dtype,
                progress=progress,
            )
            neg_features = mined.features  # already this model's features
        else:
            neg_features = encode_negative_labels(
                TextEncoder(
                    model, tokenizer, device, params.text_batch_size, autocast_dtype=autocast_dtype
                ),
                negatives,
                noun_template=params.noun_template,
            )

    def images(loader, desc):
        return encode_images(
            model,
            loader,
            device,
            autocast_dtype=autocast_dtype,
            progress=desc if progress else False,
        )

    id_features, id_labels = images(id_loader, "ID images")
    ood_features = {name: images(loader, f"OoD {name}")[0] for name, loader in ood_loaders.items()}
    return evaluate_embeddings(
        id_features,
        id_labels,
        text_features,
        ood_features,
        scores=scores,
        primary_score=primary,
        temperature=temperature,
        neg_text_features=neg_features,
        neglabel_params=params,
        device=device,
    )


# --- presentation --------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def format_table(result: EvaluationResult) -> str:
    """The results as text: ID accuracy and modality gap, then per score a table of OoD sets
    (AUROC, FPR95, AUPR-in, AUPR-out in %) with their mean; the primary score first."""
    ordered = [result.primary_score] + [s for s in result.scores if s != result.primary_score]
    names = list(result.per_set)
    width = max([len("OoD set"), len("mean"), *(len(n) for n in names)])
    header = f"{'OoD set':<{width}}  {'images':>7}" + "".join(
        f"  {METRIC_TITLES[m]:>8}" for m in METRICS
    )
    negs = f", {result.num_negatives} negative labels" if result.num_negatives is not None else ""
    lines = [
        f"ID accuracy: {_pct(result.id_accuracy)} %  ({result.num_id} images, "
        f"{result.num_classes} classes{negs})",
        f"modality gap: {result.modality_gap:.4f}",
    ]
    for score in ordered:
        tag = " (primary)" if score == result.primary_score else ""
        lines += ["", f"score: {score}{tag}", header, "-" * len(header)]
        for name in names:
            values = result.per_set[name][score]
            lines.append(
                f"{name:<{width}}  {result.num_ood[name]:>7}"
                + "".join(f"  {_pct(values[m]):>8}" for m in METRICS)
            )
        lines.append(
            f"{'mean':<{width}}  {'':>7}"
            + "".join(f"  {_pct(result.mean[score][m]):>8}" for m in METRICS)
        )
    return "\n".join(lines)


def write_json(result: EvaluationResult, location, extra: Mapping | None = None):
    """Write ``result.to_dict()`` (plus ``extra``, e.g. the model and data specs) as JSON to a
    local path or storage URI, whole or not at all; returns its ``Location``."""
    from raymmft.storage import Location

    payload = {**(dict(extra) if extra else {}), **result.to_dict()}
    return Location.parse(location).write_text(json.dumps(payload, indent=2) + "\n")
