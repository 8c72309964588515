"""NegLabel corpora by name: what ``eval.neglabel.corpus`` means.

- ``wordnet``: the WordNet 3.0 nouns and adjectives shipped with raymmft (``raymmft.ood.corpus``);
- ``world``: the built-in shapes world's 100 concept names; ``world+wordnet`` and
  ``world+wordnet:N``: those plus every (or N) WordNet words (``raymmft.world.corpus``);
- anything else: a text file with one word per line.

The corpus object is built here, above the core, and handed to NegLabel: ``raymmft.ood`` knows no
corpus by name, and only this module imports the built-in world for it.
"""

from __future__ import annotations

from pathlib import Path

from raymmft.errors import ConfigError
from raymmft.ood.corpus import WordCorpus, load_wordnet_corpus, read_word_file
from raymmft.world.corpus import is_world_corpus, world_corpus

NAMES = "wordnet, world, world+wordnet, world+wordnet:N, or a word file with one word per line"


def resolve_corpus(settings) -> WordCorpus:
    """The corpus ``settings.corpus`` names (``settings``: the config's ``NegLabelConfig``), with
    ``settings.exclude_categories`` left out."""
    name, exclude = settings.corpus, settings.exclude_categories
    if name == "wordnet":
        return load_wordnet_corpus(exclude)
    if is_world_corpus(name):
        return world_corpus(name, exclude)
    if not Path(name).exists():
        raise ConfigError(f"unknown NegLabel corpus '{name}' (known: {NAMES})")
    return read_word_file(name).without_categories(exclude)
