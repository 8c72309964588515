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
        params={"temperature": 0.05, "mcm_temperature": 0.5, **params},
        logit_scale=30.0,
        inputs=inputs,
    )
    assert res.scores == names and res.primary_score == "mcm"
    logits = F.normalize(id_feats, dim=-1) @ F.normalize(text, dim=-1).T
    assert res.id_accuracy == accuracy(logits, labels)
    np.testing.assert_array_equal(res.id_correct, (logits.argmax(-1) == labels).numpy())
    assert res.id_correct.mean() == res.id_accuracy and res.logit_scale == 30.0
    own = {"mcm": {"mcm_temperature": 0.5}, "msp": {"logit_scale": 30.0}}
    for name in names:
        kwargs = own.get(name, {"temperature": 0.05, **(params if name == "neglabel" else {})})
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
        params={"temperature": 0.05, "mcm_temperature": 0.5, **params},
        logit_scale=30.0,
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
    res = evaluate_embeddings(
        id_feats, labels, text, ood, scores=["msp"], primary_score="energy", logit_scale=100.0
    )
    assert (
        res.scores == ["msp", "energy"]
        and res.flat_metrics()["ood_auroc"] == res.mean["energy"]["auroc"]
    )
    with pytest.raises(ConfigError, match=r"^OoD score 'msp' needs the model's logit scale"):
        evaluate_embeddings(id_feats, labels, text, ood, scores=["msp"])
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


def test_evaluator_gives_msp_the_models_logit_scale_and_mcm_its_own_temperature(tiny):
    import copy

    from raymmft.ood.scores import clip_msp_score, mcm_score

    model = copy.deepcopy(tiny.model)
    bundle = dataclasses.replace(tiny, model=model)
    settings = EvalConfig(scores=["msp", "mcm"], ood_score="msp", mcm_temperature=0.8, batch_size=7)
    evaluator = Evaluator(settings, bundle, CLASSES, _set(12, 1), {"x": _set(10, 2)})
    id_feats = encode_images(model, _loader(_set(12, 1)))[0]
    text = class_text_features(_encoder(bundle), CLASSES, settings.templates)
    results = {}
    for scale in (100.0, 5.0):
        with torch.no_grad():
            model.logit_scale.fill_(np.log(scale))
        res = evaluator.evaluate(model)
        assert res.logit_scale == pytest.approx(scale, rel=1e-6)
        expected = clip_msp_score(id_feats, text, scale).double().numpy()
        np.testing.assert_allclose(res.id_scores["msp"], expected, rtol=1e-5, atol=1e-7)
        expected = mcm_score(id_feats, text, 0.8).double().numpy()
        np.testing.assert_allclose(res.id_scores["mcm"], expected, rtol=1e-5, atol=1e-7)
        results[scale] = res
    # the scale moves MSP, not MCM (nor the accuracy)
    assert np.abs(results[100.0].id_scores["msp"] - results[5.0].id_scores["msp"]).min() > 1e-4
    np.testing.assert_array_equal(results[100.0].id_scores["mcm"], results[5.0].id_scores["mcm"])
    assert results[100.0].id_accuracy == results[5.0].id_accuracy
    assert results[5.0].to_dict()["logit_scale"] == pytest.approx(5.0, rel=1e-6)


def _with_intervals(reference=None):
    id_feats, labels, text, ood, negs = _features()
    res = evaluate_embeddings(id_feats, labels, text, ood, scores=["mcm", "energy"])
    res.add_intervals(200, seed=3, reference=reference, reference_name="start")
    return res


def test_to_dict_keeps_its_keys_and_puts_intervals_beside_them():
    plain = evaluate_embeddings(*_features()[:4], scores=["mcm", "energy"])
    res = _with_intervals()
    d, before = res.to_dict(), plain.to_dict()
    # every key a consumer read before is there with the same value
    for key, value in before.items():
        if key != "ood":
            assert d[key] == value, key
    for name, entry in before["ood"].items():
        assert d["ood"][name]["metrics"] == entry["metrics"]
        assert d["ood"][name]["num_samples"] == entry["num_samples"]
    ci = res.intervals
    assert d["id_accuracy_ci95"] == list(ci.id_accuracy)
    assert d["id_accuracy_ci95"][0] <= d["id_accuracy"] <= d["id_accuracy_ci95"][1]
    for name in ("a", "b"):
        bounds = d["ood"][name]["metrics_ci95"]
        assert bounds.keys() == d["ood"][name]["metrics"].keys() == {"mcm", "energy"}
        for score, by in bounds.items():
            assert by.keys() == d["ood"][name]["metrics"][score].keys()
            assert by["auroc"] == list(ci.per_set[name][score]["auroc"])
    assert d["mean_ci95"]["energy"]["fpr95"] == list(ci.mean["energy"]["fpr95"])
    assert d["bootstrap"]["resamples"] == 200 and d["bootstrap"]["seed"] == 3
    assert "delta_vs_reference" not in d and "bootstrap" not in before
    import json

    json.dumps(d)  # JSON-ready: no tuples of numpy floats


def test_paired_difference_in_to_dict_and_table():
    reference = evaluate_embeddings(*_features()[:4], scores=["mcm", "energy"])
    res = _with_intervals(reference)
    delta = res.to_dict()["delta_vs_reference"]
    assert delta["reference"] == "start"
    assert delta["id_accuracy"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert delta["mean"]["mcm"]["auroc"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert delta["ood"]["b"]["energy"]["aupr_out"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    table = format_table(res)
    assert "ID accuracy delta vs start: +0.00 [+0.00, +0.00] points" in table
    row = next(line for line in table.splitlines() if line.startswith("delta vs start"))
    assert row.split()[3:] == ["+0.00", "[+0.00,", "+0.00]"] * 4


def test_format_table_shows_the_intervals():
    res = _with_intervals()
    table = format_table(res)
    lo, hi = res.intervals.id_accuracy
    acc = f"{100 * res.id_accuracy:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] %"
    assert f"ID accuracy: {acc}  (60 images, 4 classes)" in table
    assert "[95 % bootstrap intervals: 200 resamples of the ID and each OoD set, seed 3]" in table
    row = next(line for line in table.splitlines() if line.startswith("b "))
    m, ci = res.per_set["b"]["mcm"], res.intervals.per_set["b"]["mcm"]
    expected = ["b", "17"]
    for k in ("auroc", "fpr95", "aupr_in", "aupr_out"):
        low, high = ci[k]
        expected += [f"{100 * m[k]:.2f}", f"[{100 * low:.2f},", f"{100 * high:.2f}]"]
    assert row.split() == expected
    header = next(line for line in table.splitlines() if line.startswith("OoD set"))
    assert len(header) == len(row)  # the columns widen to hold the intervals
