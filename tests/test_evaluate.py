"""The evaluator: its numbers against the library functions, modality gap, text encoding counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from raymmft import evaluation
from raymmft.config import EvalConfig, NegLabelConfig
from raymmft.errors import ConfigError
from raymmft.evaluation import Evaluator, evaluate_embeddings, format_table, modality_gap
from raymmft.ood.corpus import corpus_from_words
from raymmft.ood.embed import CachedTokenizer, TextEncoder, class_text_features, encode_images
from raymmft.ood.metrics import accuracy, ood_metrics
from raymmft.ood.neglabel import mine_negative_labels
from raymmft.ood.scores import get_score


def _features(seed=0, d=12):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(4, d, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    # ID images near their class text, OoD images random
    id_feats = text[labels] + 0.8 * torch.randn(60, d, generator=g)
    ood = {"a": torch.randn(30, d, generator=g), "b": torch.randn(17, d, generator=g) + text[0]}
    negs = torch.randn(20, d, generator=g)
    return id_feats, labels, text, ood, negs


def test_evaluate_embeddings_equals_library_functions(monkeypatch):
    id_feats, labels, text, ood, negs = _features()
    names = ["neglabel", "mcm", "energy", "msp", "max_logit"]
    params = {"ngroups": 3, "seed": 4}
    inputs = {"neglabel": {"neg_text_features": negs}}
    res = evaluate_embeddings(
        id_feats,
        labels,
        text,
        ood,
        scores=names,
        primary_score="mcm",
        params={"temperature": 0.05, **params},
        inputs=inputs,
    )
    assert res.scores == names and res.primary_score == "mcm"
    logits = F.normalize(id_feats, dim=-1) @ F.normalize(text, dim=-1).T
    assert res.id_accuracy == accuracy(logits, labels)
    for name in names:
        kwargs = {"temperature": 0.05, **(params if name == "neglabel" else {})}
        kwargs.update(inputs.get(name, {}))
        id_s = get_score(name)(id_feats, text, **kwargs)
        np.testing.assert_array_equal(res.id_scores[name], id_s.double().numpy())
        per_set = []
        for set_name, feats in ood.items():
            ood_s = get_score(name)(feats, text, **kwargs)
            expected = ood_metrics(id_s, ood_s)
            assert res.per_set[set_name][name] == expected
            per_set.append(expected)
        for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
            assert res.mean[name][metric] == pytest.approx(np.mean([m[metric] for m in per_set]))
    # images scored in blocks of 7: same numbers
    monkeypatch.setattr(evaluation, "SCORE_BLOCK", 7)
    small = evaluate_embeddings(
        id_feats,
        labels,
        text,
        ood,
        scores=names,
        primary_score="mcm",
        params={"temperature": 0.05, **params},
        inputs=inputs,
    )
    for name in names:
        np.testing.assert_allclose(small.id_scores[name], res.id_scores[name], rtol=1e-6)
        assert small.per_set["a"][name] == pytest.approx(res.per_set["a"][name])
    flat = res.flat_metrics()
    assert flat["id_acc"] == res.id_accuracy
    assert flat["ood_auroc"] == res.mean["mcm"]["auroc"]
    assert flat["ood_fpr95/b"] == res.per_set["b"]["mcm"]["fpr95"]
    assert flat["neglabel/ood_auroc/a"] == res.per_set["a"]["neglabel"]["auroc"]
    assert flat["modality_gap"] == res.modality_gap


def test_modality_gap_formula():
    g = torch.Generator().manual_seed(0)
    f, t = torch.randn(50, 8, generator=g), torch.randn(5, 8, generator=g)
    fn, tn = f.numpy() / np.linalg.norm(f.numpy(), axis=1, keepdims=True), t.numpy()
    tn = tn / np.linalg.norm(tn, axis=1, keepdims=True)
    assert modality_gap(f, t) == pytest.approx(np.linalg.norm(fn.mean(0) - tn.mean(0)), rel=1e-6)
    e = torch.eye(3)
    assert modality_gap(3 * e[:1], e[1:2]) == pytest.approx(2**0.5)
    assert modality_gap(e, 2 * e) == pytest.approx(0.0, abs=1e-12)


def test_primary_score_is_always_computed_and_errors():
    id_feats, labels, text, ood, negs = _features()
    res = evaluate_embeddings(id_feats, labels, text, ood, scores=["msp"], primary_score="energy")
    assert (
        res.scores == ["msp", "energy"]
        and res.flat_metrics()["ood_auroc"] == res.mean["energy"]["auroc"]
    )
    with pytest.raises(ConfigError, match=r"^OoD score 'neglabel' needs negative text features$"):
        evaluate_embeddings(id_feats, labels, text, ood, scores=["neglabel"])
    with pytest.raises(ConfigError, match=r"^unknown OoD score 'knn' \(known: energy, max_logit"):
        evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm", "knn"])
    with pytest.raises(ValueError, match=r"^need at least one OoD set to evaluate OoD detection$"):
        evaluate_embeddings(id_feats, labels, text, {}, scores=["mcm"])
    nan = {"a": torch.full((3, 12), float("nan"))}
    with pytest.raises(
        ValueError,
        match=r"^score 'mcm' on OoD set 'a': ood_scores contains 3 NaN value\(s\) out of 3$",
    ):
        evaluate_embeddings(id_feats, labels, text, nan, scores=["mcm"])
    with pytest.raises(ValueError, match=r"^OoD set 'b' has no images$"):
        evaluate_embeddings(id_feats, labels, text, {"b": torch.empty(0, 12)}, scores=["mcm"])
    with pytest.raises(
        ValueError, match=r"^ID labels must lie in \[0, 3\) for 3 class names, got \[0, 3\]$"
    ):
        evaluate_embeddings(id_feats, labels, text[:3], ood, scores=["mcm"])


def test_format_table_shows_the_numbers():
    id_feats, labels, text, ood, negs = _features()
    res = evaluate_embeddings(
        id_feats,
        labels,
        text,
        ood,
        scores=["mcm", "neglabel"],
        inputs={"neglabel": {"neg_text_features": negs}},
    )
    table = format_table(res)
    assert (
        f"ID accuracy: {100 * res.id_accuracy:.2f} %  (60 images, 4 classes, 20 negative labels)"
        in table
    )
    assert "score: mcm (primary)" in table and "score: neglabel\n" in table
    row = next(line for line in table.splitlines() if line.startswith("b "))
    m = res.per_set["b"]["mcm"]
    assert row.split() == [
        "b",
        "17",
        *(f"{100 * m[k]:.2f}" for k in ("auroc", "fpr95", "aupr_in", "aupr_out")),
    ]


@pytest.fixture(scope="module")
def tiny():
    from raymmft.model import build_model

    torch.manual_seed(0)
    return build_model("raymmft-tiny")


def _set(n, seed, classes=3):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(images, torch.randint(0, classes, (n,), generator=g))


def _loader(dataset, batch=7):
    return DataLoader(dataset, batch_size=batch, shuffle=False)


CLASSES = ["red circle", "blue square", "green star"]


def _encoder(bundle):
    return TextEncoder(bundle.model, bundle.tokenizer)


def test_evaluator_equals_embeddings_path_and_encodes_each_text_once(tiny):
    model = tiny.model
    words = [f"word{i}" for i in range(24)]
    id_set, ood_sets = _set(20, 1), {"x": _set(15, 2), "y": _set(9, 3)}
    templates = ["a photo of a {}.", "a drawing of a {}."]
    negatives = mine_negative_labels(
        _encoder(tiny), CLASSES, words, NegLabelConfig(keep_fraction=0.25)
    )
    settings = EvalConfig(
        scores=["neglabel", "mcm"], templates=templates, neglabel={"ngroups": 2}, batch_size=7
    )
    evaluator = Evaluator(settings, tiny, CLASSES, id_set, ood_sets, negatives=negatives)

    seen: list[int] = []
    original = model.encode_text

    def counting(tokens, *a, **k):
        seen.append(tokens.shape[0])
        return original(tokens, *a, **k)

    model.encode_text = counting
    model.train()
    try:
        res = evaluator.evaluate(model)
    finally:
        del model.encode_text
    # class prompts (3 x 2) and the 6 negatives, each once; train mode restored
    assert sum(seen) == 3 * 2 + len(negatives) == 12
    assert model.training
    model.eval()

    id_feats, labels, _ = encode_images(model, _loader(id_set))
    text = class_text_features(_encoder(tiny), CLASSES, templates)
    negs = _encoder(tiny)(negatives.prompts)
    assert torch.allclose(negs, negatives.features, atol=1e-5)  # same model: same features
    ref = evaluate_embeddings(
        id_feats,
        labels,
        text,
        {k: encode_images(model, _loader(v))[0] for k, v in ood_sets.items()},
        scores=["neglabel", "mcm"],
        params=settings.score_params,
        inputs={"neglabel": {"neg_text_features": negs}},
    )
    assert res.id_accuracy == ref.id_accuracy and res.modality_gap == pytest.approx(
        ref.modality_gap
    )
    for s in ("neglabel", "mcm"):
        np.testing.assert_allclose(res.id_scores[s], ref.id_scores[s], rtol=1e-5)
        for name in ood_sets:
            for metric, value in ref.per_set[name][s].items():
                assert res.per_set[name][s][metric] == pytest.approx(value, abs=1e-9)


def test_cached_tokenizer_returns_the_tokenizers_ids_and_tokenises_each_prompt_once(tiny):
    calls: list[list[str]] = []

    def counting(prompts):
        calls.append(list(prompts))
        return tiny.tokenizer(prompts)

    cached = CachedTokenizer(counting)
    first = ["a photo of a cat.", "a dog", "a photo of a cat.", "zebra"]
    assert torch.equal(cached(first), tiny.tokenizer(first))
    assert calls == [["a photo of a cat.", "a dog", "zebra"]]  # duplicates tokenised once
    second = ["zebra", "a new word", "a dog"]
    assert torch.equal(cached(second), tiny.tokenizer(second))
    assert calls[1:] == [["a new word"]] and len(cached) == 4
    assert torch.equal(cached(first), tiny.tokenizer(first)) and len(calls) == 2


def test_later_evaluations_tokenise_nothing_and_give_the_same_numbers(tiny):
    words = [f"word{i}" for i in range(30)]
    negatives = mine_negative_labels(
        _encoder(tiny), CLASSES, words, NegLabelConfig(keep_fraction=0.3)
    )
    tokenised: list[int] = []

    def counting(prompts):
        tokenised.append(len(prompts))
        return tiny.tokenizer(prompts)

    bundle = dataclasses.replace(tiny, tokenizer=counting)
    settings = EvalConfig(scores=["neglabel", "mcm"], batch_size=7)
    evaluator = Evaluator(
        settings, bundle, CLASSES, _set(12, 1), {"x": _set(10, 2)}, negatives=negatives
    )
    first = evaluator.evaluate(tiny.model)
    for _ in range(2):
        res = evaluator.evaluate(tiny.model)
        assert res.id_accuracy == first.id_accuracy
        for s in ("neglabel", "mcm"):
            np.testing.assert_array_equal(res.id_scores[s], first.id_scores[s])
    assert sum(tokenised) == len(CLASSES) + len(negatives)  # later evaluations tokenised none


def test_class_text_features_average_templates(tiny):
    encode = _encoder(tiny)
    got = class_text_features(encode, ["a", "b"], ["x {}", "y {} z"])
    each = encode(["x a", "y a z", "x b", "y b z"]).view(2, 2, -1)
    expected = F.normalize(F.normalize(each, dim=-1).mean(1), dim=-1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))


def test_evaluator_mines_with_the_starting_model_without_negatives(tiny, tmp_path):
    words = corpus_from_words([f"word{i}" for i in range(24)])
    settings = EvalConfig(scores=["neglabel"], neglabel={"keep_fraction": 0.5})
    evaluator = Evaluator(
        settings, tiny, CLASSES, _set(12, 1), {"x": _set(10, 2)}, corpus=words, cache=tmp_path
    )
    assert evaluator.evaluate(tiny.model).num_negatives == 12
    assert len(list(tmp_path.glob("neglabel-*.pt"))) == 1  # mined and cached with this model


def test_remine_each_eval_ignores_given_negatives_and_cache(tiny, tmp_path):
    words = corpus_from_words([f"word{i}" for i in range(24)])
    old = mine_negative_labels(_encoder(tiny), CLASSES, words, NegLabelConfig(keep_fraction=0.25))
    sets = (_set(12, 1), {"x": _set(10, 2)})
    counts = []
    for remine in (False, True):
        settings = EvalConfig(
            scores=["neglabel"], neglabel={"keep_fraction": 0.5, "remine_each_eval": remine}
        )
        evaluator = Evaluator(
            settings, tiny, CLASSES, *sets, negatives=old, corpus=words, cache=tmp_path
        )
        counts.append(evaluator.evaluate(tiny.model).num_negatives)
    assert counts == [6, 12]
    assert not list(tmp_path.iterdir())
