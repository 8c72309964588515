"""NegLabel mining on hand-made embeddings with a known answer, the on-disk cache, re-encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from raymmft.config import EvalConfig, NegLabelConfig
from raymmft.errors import ConfigError
from raymmft.neglabel_corpus import resolve_corpus
from raymmft.ood.corpus import WordCorpus
from raymmft.ood.embed import TextEncoder
from raymmft.ood.neglabel import (
    NegativeLabels,
    encode_negative_labels,
    eta_quantile,
    mine_negative_labels,
)


def mine(encoder, classes, corpus, *, cache=None, **settings):
    """Mining with the config's NegLabel section built from ``settings``."""
    return mine_negative_labels(encoder, classes, corpus, NegLabelConfig(**settings), cache=cache)


D = 8


def _e(i: int) -> np.ndarray:
    v = np.zeros(D)
    v[i] = 1.0
    return v


def _with_sims(sims: list[float], spare: int) -> np.ndarray:
    """A unit vector whose dot products with e_0, e_1, ... are ``sims`` (rest on axis ``spare``)."""
    v = sum(s * _e(i) for i, s in enumerate(sims))
    return v + math.sqrt(1 - float(np.dot(v, v))) * _e(spare)


class FakeEncoder:
    """prompt -> fixed vector; counts calls and prompts; has a fingerprint like ``TextEncoder``."""

    def __init__(self, table: dict[str, np.ndarray], fingerprint: str = "model-a"):
        self.table, self._fp = table, fingerprint
        self.calls = 0
        self.prompts_seen = 0

    def __call__(self, prompts):
        self.calls += 1
        self.prompts_seen += len(prompts)
        return torch.tensor(np.stack([self.table[p] for p in prompts]), dtype=torch.float32)

    def fingerprint(self) -> str:
        return self._fp


CLASSES = ["cat", "dog", "tree"]


def _table():
    """ID classes on e_0..e_2; nouns and adjectives with hand-picked similarities to them."""
    t = {f"a photo of a {c}.": _e(i) for i, c in enumerate(CLASSES)}
    nouns = {
        "peaked": [0.9, 0.0, 0.0],  # close to one class: high 0.95-quantile (0.81)
        "flat": [0.3, 0.3, 0.3],  # same mean as 'peaked', quantile 0.3
        "far": [-0.5, -0.4, -0.3],  # quantile -0.31
        "near": [0.45, 0.45, 0.45],  # quantile 0.45
        "Cat": [0.99, 0.0, 0.0],  # equals an ID class name: dropped before ranking
    }
    adjs = {
        # every adjective is more ID-like than every noun but 'peaked'; ranked separately, the
        # least similar adjectives are kept all the same (joint ranking would keep 'near' instead)
        "shiny": [0.5, 0.5, 0.4],  # quantile 0.5
        "dull": [0.55, 0.55, 0.55],  # 0.55
        "bright": [0.57, 0.57, 0.57],  # 0.57
        "vivid": [0.8, 0.3, 0.2],  # 0.75
    }
    for k, (w, s) in enumerate(nouns.items()):
        t[f"a photo of a {w}."] = _with_sims(s, 3 + k % 5)
    for k, (w, s) in enumerate(adjs.items()):
        t[f"This is a {w} photo."] = _with_sims(s, 3 + k % 5)
    corpus = WordCorpus("hand", tuple(nouns), tuple(adjs))
    return t, corpus


def test_eta_quantile_matches_numpy():
    g = torch.Generator().manual_seed(0)
    sims = torch.randn(20, 7, generator=g, dtype=torch.float64)
    for eta in (0.0, 0.3, 0.95, 1.0):
        np.testing.assert_allclose(
            eta_quantile(sims, eta).numpy(), np.quantile(sims.numpy(), eta, axis=1)
        )


def test_mining_selects_least_similar_per_kind():
    table, corpus = _table()
    enc = FakeEncoder(table)
    neg = mine(enc, CLASSES, corpus, keep_fraction=0.5)
    # 4 nouns left after dropping 'Cat' -> int(4 * 0.5) = 2; 4 adjectives -> 2
    assert neg.words == ["far", "flat", "shiny", "dull"]
    assert neg.kinds == ["noun", "noun", "adj", "adj"]
    assert neg.prompts == [
        "a photo of a far.",
        "a photo of a flat.",
        "This is a shiny photo.",
        "This is a dull photo.",
    ]
    np.testing.assert_allclose(neg.affinity.numpy(), [-0.31, 0.3, 0.5, 0.55], atol=1e-6)
    expected = torch.tensor(np.stack([table[p] for p in neg.prompts]), dtype=torch.float32)
    assert torch.allclose(neg.features, expected, atol=1e-6)
    # ID prompts + 4 nouns + 4 adjectives, each encoded once; 'Cat' never encoded
    assert enc.prompts_seen == 3 + 4 + 4


def test_eta_decides_the_ranking():
    table, corpus = _table()
    only = WordCorpus("two", ("peaked", "flat"))
    # eta = 0.95: 'peaked' is near one class (0.81 > 0.3) -> 'flat' is the negative
    assert mine(FakeEncoder(table), CLASSES, only, keep_fraction=0.5).words == ["flat"]
    # eta = 0 ranks by the minimum similarity: 0 < 0.3 -> 'peaked'
    got = mine(FakeEncoder(table), CLASSES, only, keep_fraction=0.5, eta=0.0)
    assert got.words == ["peaked"]


def test_max_negatives_splits_in_proportion():
    table, corpus = _table()
    neg = mine(FakeEncoder(table), CLASSES, corpus, keep_fraction=1.0, max_negatives=3)
    # keep 4 + 4, capped at 3: round(3 * 4 / 8) = 2 nouns, 1 adjective, least similar first
    assert neg.words == ["far", "flat", "shiny"]


def test_plain_word_list_corpus_uses_noun_template():
    table, _ = _table()
    neg = mine(FakeEncoder(table), CLASSES, ["near", "far", "far", "dog"], keep_fraction=0.5)
    # duplicates and the ID name 'dog' removed -> 2 candidates -> keep 1
    assert neg.words == ["far"] and neg.prompts == ["a photo of a far."]


def test_cache_hit_skips_encoding_and_miss_on_changed_inputs(tmp_path):
    table, corpus = _table()
    enc = FakeEncoder(table)
    first = mine(enc, CLASSES, corpus, keep_fraction=0.5, cache=tmp_path)
    assert enc.calls > 0 and not first.from_cache
    assert len(list(tmp_path.glob("neglabel-*.pt"))) == 1

    enc.calls = 0
    again = mine(enc, CLASSES, corpus, keep_fraction=0.5, cache=tmp_path)
    assert enc.calls == 0 and again.from_cache
    assert again.words == first.words and torch.equal(again.features, first.features)
    assert again.fingerprint == first.fingerprint

    # different ID class names -> a new fingerprint, encoded again
    table["a photo of a bird."] = _e(7)
    changed = mine(enc, [*CLASSES, "bird"], corpus, keep_fraction=0.5, cache=tmp_path)
    assert enc.calls > 0 and not changed.from_cache and changed.fingerprint != first.fingerprint

    # other weights, template or parameters: misses too
    for kwargs, encoder in (
        ({}, FakeEncoder(table, fingerprint="model-b")),
        ({"eta": 0.9}, FakeEncoder(table)),
        ({"keep_fraction": 0.75}, FakeEncoder(table)),
    ):
        mine(encoder, CLASSES, corpus, cache=tmp_path, **{"keep_fraction": 0.5, **kwargs})
        assert encoder.calls > 0, kwargs
    assert len(list(tmp_path.glob("neglabel-*.pt"))) == 5


def test_cache_with_a_real_model_keys_on_weights(tmp_path):
    from raymmft.model import build_model

    torch.manual_seed(0)
    bundle = build_model("raymmft-tiny")
    words = [f"thing{i}" for i in range(30)]
    kwargs = dict(keep_fraction=0.2, cache=tmp_path)
    first = mine(TextEncoder(bundle.model, bundle.tokenizer), CLASSES, words, **kwargs)
    assert len(first) == 6 and first.features.shape == (6, 64)

    calls = []
    encoder = TextEncoder(bundle.model, bundle.tokenizer)
    counting = lambda prompts: calls.append(len(prompts)) or encoder(prompts)  # noqa: E731
    counting.fingerprint = encoder.fingerprint
    assert mine(counting, CLASSES, words, **kwargs).from_cache and calls == []

    # the features are what the model gives for the selected prompts
    assert torch.allclose(encoder(first.prompts), first.features, atol=1e-5)
    # change the weights: a miss
    with torch.no_grad():
        bundle.model.text_projection.add_(0.1)
    changed = TextEncoder(bundle.model, bundle.tokenizer)
    assert changed.fingerprint() != encoder.fingerprint()
    assert not mine(changed, CLASSES, words, **kwargs).from_cache


def test_reencode_with_current_model():
    table, corpus = _table()
    neg = mine(FakeEncoder(table), CLASSES, corpus, keep_fraction=0.5)
    # a 'fine-tuned' encoder: every vector rotated by a fixed permutation of axes
    rotated = {p: np.roll(v, 1) for p, v in table.items()}
    enc = FakeEncoder(rotated)
    feats = encode_negative_labels(enc, neg)
    assert enc.calls == 1 and enc.prompts_seen == len(neg)
    expected = torch.tensor(np.stack([rotated[p] for p in neg.prompts]), dtype=torch.float32)
    assert torch.allclose(feats, expected, atol=1e-6)
    # a word list is formatted with the noun template
    assert torch.allclose(encode_negative_labels(enc, ["far"]), feats[:1], atol=1e-6)
    assert isinstance(neg, NegativeLabels)


def test_mining_bad_inputs():
    table, corpus = _table()
    enc = FakeEncoder(table)
    with pytest.raises(ValidationError, match=r"eta\n  Input should be less than or equal to 1"):
        mine(enc, CLASSES, corpus, eta=1.5)
    with pytest.raises(ValidationError, match=r"keep_fraction\n  Input should be greater than 0"):
        mine(enc, CLASSES, corpus, keep_fraction=0)
    with pytest.raises(
        ValueError,
        match=r"^NegLabel mining keeps no words: 1 nouns and 0 adjectives with keep_fraction=0.15; "
        r"use a larger corpus or keep_fraction$",
    ):
        mine(enc, CLASSES, ["far"])
    with pytest.raises(
        ValueError, match=r"^need at least one ID class name to mine negative labels$"
    ):
        mine(enc, [], corpus)
    with pytest.raises(ValueError, match=r"^caching mined negatives needs model_fingerprint="):
        mine(lambda p: enc(p), CLASSES, corpus, keep_fraction=0.5, cache="/nonexistent")
    with pytest.raises(
        ConfigError,
        match=r"^unknown NegLabel corpus 'imagenet' \(known: wordnet, world, world\+wordnet, "
        r"world\+wordnet:N, or a word file with one word per line\)$",
    ):
        resolve_corpus(NegLabelConfig(corpus="imagenet"))
    with pytest.raises(ValidationError, match=r"etaa\n  Extra inputs are not permitted"):
        NegLabelConfig(etaa=0.9)


def test_scoring_parameters_come_from_the_config_and_word_files_are_corpora(tmp_path):
    settings = EvalConfig(
        neglabel=NegLabelConfig(corpus="world", exclude_categories=["noun.animal"], ngroups=3)
    )
    assert settings.score_params == {
        "temperature": 0.01,
        "mcm_temperature": 1.0,
        "ngroups": 3,
        "seed": 0,
    }
    # a word file: one word per line, blank lines and '#' comments skipped
    table, _ = _table()
    words = tmp_path / "words.txt"
    words.write_text("# candidates\nnear\n\nfar\n")
    corpus = resolve_corpus(NegLabelConfig(corpus=str(words)))
    assert corpus.nouns == ("near", "far")
    assert mine(FakeEncoder(table), CLASSES, corpus, keep_fraction=0.5).words == ["far"]


def test_fingerprint_ignores_what_text_encoding_does_not_read():
    from raymmft.model import build_model
    from raymmft.ood.embed import model_fingerprint

    a = build_model("raymmft-tiny", temperature=0.01).model
    b = build_model("raymmft-tiny", temperature=0.05).model
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "logit_scale"}, strict=False)
    with torch.no_grad():
        b.visual.conv1.weight.add_(1.0)
    assert model_fingerprint(a) == model_fingerprint(b), "temperature and image tower do not matter"
    with torch.no_grad():
        b.token_embedding.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)
