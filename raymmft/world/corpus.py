"""The built-in world's NegLabel corpora: its 100 concept names (``world``), and those plus WordNet
words the world model has never seen (``world+wordnet``: all of them; ``world+wordnet:N``: N drawn
with a fixed seed, nouns and adjectives in proportion)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from raymmft.data import shapes
from raymmft.errors import ConfigError
from raymmft.ood.corpus import WordCorpus, corpus_from_words, load_wordnet_corpus

PREFIX = "world+wordnet"


def is_world_corpus(name: str) -> bool:
    return name == "world" or name.partition(":")[0] == PREFIX


def world_corpus(name: str, exclude_categories: Sequence[str] = ()) -> WordCorpus:
    """The corpus ``world``, ``world+wordnet`` or ``world+wordnet:N`` names; WordNet's excluded
    categories are left out before the N words are drawn."""
    concepts = shapes.world_concepts()
    if name == "world":
        return corpus_from_words(concepts, name="world")
    head, sep, count = name.partition(":")
    if head != PREFIX:
        raise ConfigError(f"'{name}' is not a world corpus (world, {PREFIX}, {PREFIX}:N)")
    wordnet = load_wordnet_corpus(exclude_categories)
    nouns, adjs = list(wordnet.nouns), list(wordnet.adjectives)
    if sep:
        n = int(count) if count.isdigit() else 0
        if n < 1:
            raise ConfigError(f"NegLabel corpus '{name}': expected {PREFIX}:N with N >= 1 words")
        rng = random.Random(0)
        n_nouns = min(len(nouns), round(n * len(nouns) / (len(nouns) + len(adjs))))
        n_adjs = min(len(adjs), n - n_nouns)
        nouns = sorted(rng.sample(nouns, n_nouns))
        adjs = sorted(rng.sample(adjs, n_adjs))
    known = set(concepts)
    return WordCorpus(name, tuple(concepts + [w for w in nouns if w not in known]), tuple(adjs))
