"""The world model's zero-shot metrics on held-out world images (split ``test``, data seed 0),
measured through the one evaluator (``raymmft.evaluation.Evaluator``), and the tolerance within
which a re-run of ``raymmft pretrain-world`` must reproduce the recorded ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Reproduction tolerance of the recorded metrics (regenerating on another machine or thread count
# may round differently; same machine and threads give identical weights).
METRIC_TOLERANCE = {"accuracy": 0.03, "auroc": 0.03, "fpr95": 0.10, "gap": 0.05, "cosine": 0.05}


@dataclass(frozen=True)
class WorldEvalSets:
    """The held-out images ``world_metrics`` scores: split ``test`` of data seed ``seed``."""

    seed: int = 0
    id_per_class: int = 50
    near_per_class: int = 5
    far_per_class: int = 50
    world_per_class: int = 10

    def specs(self) -> dict[str, dict]:
        base = {"uri": "builtin:shapes", "split": "test", "seed": self.seed}
        return {
            "id": {**base, "classes": "id", "per_class": self.id_per_class},
            "near": {
                **base,
                "classes": "near_ood",
                "per_class": self.near_per_class,
                "name": "near",
            },
            "far": {**base, "classes": "far_ood", "per_class": self.far_per_class, "name": "far"},
            "all": {**base, "classes": "all", "per_class": self.world_per_class, "name": "all"},
        }


def world_metrics(
    bundle,
    *,
    sets: WorldEvalSets = WorldEvalSets(),
    corpora: Sequence[str] = ("world", "world+wordnet:2000"),
    cache=None,
) -> dict[str, float]:
    """Zero-shot metrics of a model on held-out world images (fractions; gap and cosines raw).

    ``id_acc``: 12-way accuracy on the default ID concepts; ``world_acc``: 100-way accuracy over all
    concepts; ``modality_gap`` (ID images vs ID class texts, as the evaluator defines it) and
    ``world_gap`` (all concepts); ``matched_cosine``: mean cosine of an ID image and its class text;
    ``mcm/<auroc|fpr95>/<near|far>``, and ``neglabel[<corpus>]/...`` for each NegLabel corpus.
    """
    from raymmft.config import EvalConfig
    from raymmft.data import build_loader, open_dataset
    from raymmft.evaluation import Evaluator, modality_gap
    from raymmft.ood.embed import class_text_features, encode_images
    from raymmft.ood.metrics import accuracy
    from raymmft.world.corpus import world_corpus

    transform = bundle.preprocess_eval
    specs = sets.specs()
    id_set = open_dataset(specs["id"], transform)
    classnames = list(id_set.classnames)
    ood = {n: open_dataset(specs[n], transform, id_classnames=classnames) for n in ("near", "far")}
    out: dict[str, float] = {}
    for i, corpus in enumerate(corpora):
        settings = EvalConfig(
            scores=["neglabel", "mcm"] if i == 0 else ["neglabel"], neglabel={"corpus": corpus}
        )
        evaluator = Evaluator(
            settings, bundle, classnames, id_set, ood, corpus=world_corpus(corpus), cache=cache
        )
        result = evaluator.evaluate(bundle.model)
        if i == 0:
            out.update(id_acc=result.id_accuracy, modality_gap=result.modality_gap)
            encode = evaluator.text_encoder(bundle.model)
        for score in result.scores:
            key = score if score == "mcm" else f"neglabel[{corpus}]"
            for name in ("near", "far"):
                for metric in ("auroc", "fpr95"):
                    out[f"{key}/{metric}/{name}"] = result.per_set[name][score][metric]
        out[f"neglabel[{corpus}]/num_negatives"] = float(result.num_negatives or 0)

    def features(dataset):
        loader = build_loader(dataset, 256, shuffle=False, seed=0)
        images, labels, _ = encode_images(bundle.model, loader)
        texts = class_text_features(encode, list(dataset.classnames), ["a photo of a {}."])
        return images, labels, texts

    images, labels, texts = features(id_set)
    out["matched_cosine"] = float((images * texts[labels]).sum(dim=1).mean())
    images, labels, texts = features(open_dataset(specs["all"], transform))
    out["world_acc"] = accuracy(images @ texts.T, labels)
    out["world_gap"] = modality_gap(images, texts)
    return out


def metrics_within_tolerance(measured: dict[str, float], recorded: dict[str, float]) -> list[str]:
    """The recorded metrics that ``measured`` misses by more than ``METRIC_TOLERANCE`` (names)."""
    misses = []
    for key, value in recorded.items():
        if key not in measured or key.endswith("num_negatives"):
            continue
        if "acc" in key:
            tol = METRIC_TOLERANCE["accuracy"]
        elif "fpr95" in key:
            tol = METRIC_TOLERANCE["fpr95"]
        elif "auroc" in key:
            tol = METRIC_TOLERANCE["auroc"]
        elif "cosine" in key:
            tol = METRIC_TOLERANCE["cosine"]
        else:
            tol = METRIC_TOLERANCE["gap"]
        if abs(measured[key] - value) > tol:
            misses.append(f"{key}: measured {measured[key]:.4f}, recorded {value:.4f}")
    return misses
