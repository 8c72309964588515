"""The shipped WordNet corpus: contents, category exclusion, reproducibility, mining at full size."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from raymmft.config import NegLabelConfig
from raymmft.errors import ConfigError
from raymmft.ood.corpus import WORDNET_CORPUS, load_wordnet_corpus
from raymmft.ood.neglabel import mine_negative_labels

ROOT = Path(__file__).resolve().parents[1]


def _raw_lines():
    with gzip.open(WORDNET_CORPUS, "rt", encoding="utf-8") as fh:
        return [line.rstrip("\n").split("\t") for line in fh]


def test_wordnet_corpus_contents():
    corpus = load_wordnet_corpus()
    assert (len(corpus.nouns), len(corpus.adjectives)) == (119034, 21538)
    assert len(set(corpus.nouns)) == len(corpus.nouns)
    nouns = dict(zip(corpus.nouns, corpus.noun_categories))
    assert "noun.animal" in nouns["dog"] and "noun.person" in nouns["dog"]  # 'dog' is also a person
    assert nouns["hot dog"] == ("noun.food", "noun.person")  # underscores became spaces
    assert "Albert Einstein" in nouns  # proper nouns keep their case
    adjs = dict(zip(corpus.adjectives, corpus.adj_categories))
    assert adjs["able"] == ("adj.all",) and "shiny" in adjs
    assert not any("(" in a or "_" in a for a in corpus.adjectives)  # markers like '(a)' removed
    assert (WORDNET_CORPUS.parent / "LICENSE").read_text().count("Princeton University") >= 3
    assert WORDNET_CORPUS.stat().st_size < 2_000_000


def test_exclude_categories_drops_every_word_with_such_a_sense():
    full = load_wordnet_corpus()
    lines = _raw_lines()
    animal = {w for pos, w, cats in lines if pos == "n" and "noun.animal" in cats.split(",")}
    plant = {w for pos, w, cats in lines if pos == "n" and "noun.plant" in cats.split(",")}
    pert = {w for pos, w, cats in lines if pos == "a" and "adj.pert" in cats.split(",")}
    assert len(animal) > 7000 and len(plant) > 7000 and len(pert) > 3000
    less = load_wordnet_corpus(exclude_categories=("noun.animal", "noun.plant", "adj.pert"))
    assert len(less.nouns) == len(full.nouns) - len(animal | plant)
    assert len(less.adjectives) == len(full.adjectives) - len(pert)
    assert "dog" not in less.nouns and "oak" not in less.nouns and "table" in less.nouns
    # the cached full corpus was not changed by excluding
    assert len(load_wordnet_corpus().nouns) == 119034


def test_unknown_category():
    with pytest.raises(
        ConfigError, match=r"^unknown WordNet category 'noun.animals' \(known: noun.Tops,"
    ):
        load_wordnet_corpus(exclude_categories=["noun.animals"])


@pytest.mark.skipif(
    not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed"
)
def test_build_script_reproduces_the_shipped_corpus(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", ROOT / "scripts/build_wordnet_corpus.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.main(["--out", str(tmp_path)]) == 0
    for name in ("corpus.tsv.gz", "LICENSE"):
        new, shipped = tmp_path / name, WORDNET_CORPUS.parent / name
        assert (
            hashlib.sha256(new.read_bytes()).digest()
            == hashlib.sha256(shipped.read_bytes()).digest()
        )
    shutil.rmtree(tmp_path)


def _md5_vectors(prompts):
    """A deterministic pseudo-random 16-d vector per prompt: its MD5 digest's bytes, centred."""
    raw = b"".join(hashlib.md5(p.encode()).digest() for p in prompts)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(prompts), 16).astype(np.float64) - 127.5


def md5_encoder(prompts):
    """Cheap stand-in for a text encoder over the full 140k-word corpus."""
    return torch.tensor(_md5_vectors(prompts), dtype=torch.float32)


def test_mining_full_wordnet_matches_direct_selection():
    classes = ["dog", "cat", "oak", "car", "Shiny"]
    settings = NegLabelConfig(keep_fraction=0.15)
    neg = mine_negative_labels(md5_encoder, classes, load_wordnet_corpus(), settings)
    corpus = load_wordnet_corpus()
    ids = {c.lower() for c in classes}
    nouns = [w for w in corpus.nouns if w.lower() not in ids]
    adjs = [w for w in corpus.adjectives if w.lower() not in ids]
    # ID names are matched case-insensitively: 'CAT' (the scan) goes too
    assert set(corpus.nouns) - set(nouns) == {"CAT", "cat", "dog", "car", "oak"}
    assert set(corpus.adjectives) - set(adjs) == {"shiny"}
    assert not {"CAT", "cat", "shiny"} & set(neg.words)
    assert len(neg) == int(len(nouns) * 0.15) + int(len(adjs) * 0.15) == 17854 + 3230

    def unit(words, template):
        v = _md5_vectors([template.format(w) for w in words])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    id_feats = unit(classes, "a photo of a {}.")
    kinds = np.array(neg.kinds)
    for kind, words, template in (
        ("noun", nouns, "a photo of a {}."),
        ("adj", adjs, "This is a {} photo."),
    ):
        # float64 reference; mining runs in float32, so compare up to float32 round-off
        q = dict(zip(words, np.quantile(unit(words, template) @ id_feats.T, 0.95, axis=1)))
        keep = int(len(words) * 0.15)
        boundary = np.sort(list(q.values()))[keep - 1]
        chosen = [w for w, k in zip(neg.words, kinds) if k == kind]
        assert len(chosen) == len(set(chosen)) == keep
        ref_q = np.array([q[w] for w in chosen])
        assert ref_q.max() <= boundary + 1e-5
        got_q = neg.affinity[torch.from_numpy(kinds == kind)].double().numpy()
        np.testing.assert_allclose(got_q, ref_q, atol=1e-5)
        assert np.all(np.diff(got_q) >= 0)  # least similar first
