"""The built-in world's pretrained CLIP: it loads offline as a named tag, knows the world zero-shot,
has a CLIP-like modality gap that CMA closes faster than FLYP, and pretraining is deterministic."""

import json

import pytest
import torch

from raymmft.data import build_loader, open_dataset
from raymmft.data.shapes import world_concepts
from raymmft.errors import ConfigError
from raymmft.evaluation import modality_gap
from raymmft.model import build_model
from raymmft.ood.embed import TextEncoder, class_text_features, encode_images
from raymmft.ood.metrics import accuracy
from raymmft.world import WORLD_ARCH, WORLD_METRICS, WORLD_TAG, WORLD_WEIGHTS, compare, pretrain
from raymmft.world.corpus import world_corpus
from raymmft.world.metrics import metrics_within_tolerance


@pytest.fixture(autouse=True)
def one_thread():
    # Two threads on two shared cores run much slower than one (pretraining is specified on one).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def shipped():
    return build_model(WORLD_ARCH, WORLD_TAG)


def held_out_features(bundle, classes, per_class):
    spec = {"uri": "builtin:shapes", "split": "test", "classes": classes, "per_class": per_class}
    dataset = open_dataset(spec, bundle.preprocess_eval)
    images, labels, _ = encode_images(
        bundle.model, build_loader(dataset, 256, shuffle=False, seed=0)
    )
    encode = TextEncoder(bundle.model, bundle.tokenizer)
    texts = class_text_features(encode, list(dataset.classnames), ["a photo of a {}."])
    return images, labels, texts


def test_shipped_weights_load_offline_as_a_named_tag(shipped):
    state = torch.load(WORLD_WEIGHTS, map_location="cpu", weights_only=True)
    assert WORLD_WEIGHTS.stat().st_size < 10 * 2**20
    assert all(t.dtype == torch.float16 for k, t in state.items() if k != "logit_scale")
    own = shipped.model.state_dict()
    assert set(state) == set(own)
    # fp16 -> fp32 is exact: the loaded model holds exactly the shipped weights
    assert all(torch.equal(own[k], state[k].float()) for k in state)
    assert shipped.model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-4)
    record = json.loads(WORLD_METRICS.read_text())
    assert record["weights_fingerprint"] == pretrain.weights_fingerprint(state)
    assert record["arch"] == WORLD_ARCH


def test_shipped_model_knows_the_world_zero_shot(shipped):
    images, labels, texts = held_out_features(shipped, "id", 20)
    # recorded 12-way accuracy: 0.98 on 600 held-out images; chance is 1/12
    assert accuracy(images @ texts.T, labels) > 0.9
    images, labels, texts = held_out_features(shipped, "all", 3)
    # all 100 concepts (recorded 0.83); chance is 0.01
    assert accuracy(images @ texts.T, labels) > 0.6


def test_shipped_model_has_a_clip_like_modality_gap(shipped):
    images, labels, texts = held_out_features(shipped, "id", 20)
    gap = modality_gap(images, texts)
    matched = (images * texts[labels]).sum(dim=1).mean().item()
    assert gap > 0.5  # real CLIP ViT-B: ~0.8; a learned logit scale ends near 0.2
    assert matched < 0.75  # images and their own captions are far from aligned


def finetune_config(lam: float):
    return compare.world_config(
        {
            "train.lam": lam,
            "train.epochs": 1,
            "train.lr": 3e-4,
            "train.warmup_steps": 0,
            "train.max_steps_per_epoch": 4,
            "train.augment": False,
            "data.id_train.per_class": 20,
            "data.id_val.per_class": 10,
            "data.ood_val": [
                {"uri": "builtin:shapes", "split": "val", "classes": "far_ood", "per_class": 10}
            ],
            "data.ood_test": [],
            "eval.scores": ["mcm"],
            "eval.ood_score": "mcm",
        }
    )


def test_cma_closes_the_modality_gap_more_than_flyp():
    gaps = {}
    for lam in (0.0, 1.0):
        result = compare.finetune_world(finetune_config(lam))
        gaps[lam] = result["metrics"]["modality_gap"]
        assert result["metrics"]["step"] == 4
    shipped_gap = json.loads(WORLD_METRICS.read_text())["metrics"]["modality_gap"]
    assert gaps[1.0] < gaps[0.0] - 0.02
    assert gaps[1.0] < shipped_gap - 0.05


def test_pretraining_is_deterministic_for_a_seed():
    def weights(seed):
        settings = pretrain.PretrainSettings(
            seed=seed, steps=3, warmup_steps=1, images_per_concept=2
        )
        return pretrain.pretrain_world(settings, threads=1).model.state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["text_projection"], other["text_projection"])
    # it trained: the weights moved away from the seed's initialisation
    torch.manual_seed(0)
    init = build_model(WORLD_ARCH).model.state_dict()
    assert not torch.equal(first["visual.proj"], init["visual.proj"])


def test_pretraining_settings_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        pretrain.PretrainSettings(templates=("a photo.",))
    with pytest.raises(ValueError, match="steps"):
        pretrain.PretrainSettings(steps=0)


def test_world_corpus_adds_wordnet_words_to_the_concepts():
    corpus = world_corpus("world+wordnet:500")
    concepts = world_concepts()
    assert corpus.nouns[:100] == tuple(concepts)
    extra = len(corpus.nouns) - 100 + len(corpus.adjectives)
    assert extra == 500
    assert len(corpus.adjectives) > 0
    assert world_corpus("world+wordnet:500") == corpus  # a fixed draw
    assert world_corpus("world").nouns == tuple(concepts)  # the concept names alone
    with pytest.raises(ConfigError, match=r"world\+wordnet:N"):
        world_corpus("world+wordnet:many")


def test_recorded_metrics_tolerance_flags_a_miss():
    recorded = {"id_acc": 0.99, "neglabel/auroc/near": 0.9, "modality_gap": 0.6}
    assert metrics_within_tolerance(dict(recorded), recorded) == []
    misses = metrics_within_tolerance({**recorded, "neglabel/auroc/near": 0.8}, recorded)
    assert len(misses) == 1 and misses[0].startswith("neglabel/auroc/near")


def test_markdown_table_rows_and_cells():
    row = {"id_acc": 0.5, "modality_gap": 0.25}
    for score in ("neglabel", "mcm"):
        for metric in ("auroc", "fpr95"):
            row[f"{score}/ood_{metric}/near"] = 0.9
            row[f"{score}/ood_{metric}/far"] = 0.1
    rows = [{"method": "zero-shot", "lam": None, **row}, {"method": "CMA", "lam": 0.3, **row}]
    lines = compare.markdown_table(rows, ["near", "far"]).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith("| zero-shot | 50.0 | 0.250 | 90.0 / 10.0 |")
    assert lines[3].startswith("| CMA (λ = 0.3) |")


@pytest.mark.slow  # 2,000 held-out images and two minings
def test_world_metrics_reproduce_the_record(shipped):
    """The world's metrics, now measured through the one evaluator, give the recorded values."""
    from raymmft.world.metrics import world_metrics

    recorded = json.loads(WORLD_METRICS.read_text())["metrics"]
    measured = world_metrics(shipped)
    assert set(recorded) <= set(measured)
    assert metrics_within_tolerance(measured, recorded) == []


@pytest.mark.slow  # two fine-tuning runs
def test_comparison_rows_are_each_runs_test_evaluation():
    """compare-world's rows: the starting model and each run's final weights, evaluated on the
    test sets by the same evaluator (the negatives the starting model mined)."""
    from raymmft.config import apply_trial_params
    from raymmft.loop import evaluator_for, model_of

    far = {"uri": "builtin:shapes", "split": "test", "classes": "far_ood", "per_class": 10}
    cfg = finetune_config(0.0)
    cfg = apply_trial_params(cfg, {"data.ood_test": [{**far, "name": "far-test"}]})
    cfg = apply_trial_params(
        cfg, {"eval.scores": ["neglabel", "mcm"], "eval.ood_score": "neglabel"}
    )
    cfg = apply_trial_params(cfg, {"eval.neglabel.corpus": "world"})
    rows = compare.compare_methods(cfg, [0.0, 1.0])
    assert [(r["method"], r["lam"]) for r in rows] == [
        ("zero-shot", None),
        ("FLYP", 0.0),
        ("CMA", 1.0),
    ]

    bundle = model_of(cfg)
    evaluator = evaluator_for(cfg, bundle, on="test")
    keys = ("id_acc", "modality_gap", "neglabel/ood_auroc/far-test", "mcm/ood_fpr95/far-test")
    zero_shot = evaluator.evaluate(bundle.model).flat_metrics()
    assert {k: rows[0][k] for k in keys} == {k: zero_shot[k] for k in keys}
    state = compare.finetune_world(apply_trial_params(cfg, {"train.lam": 1.0}))["state"]
    bundle.model.load_state_dict(state["model"])
    tuned = evaluator.evaluate(bundle.model).flat_metrics()
    for k in keys:
        assert rows[2][k] == pytest.approx(tuned[k], abs=1e-6), k
    assert rows[2]["modality_gap"] < rows[0]["modality_gap"]  # CMA moved the weights
