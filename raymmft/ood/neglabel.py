"""NegLabel negative-label mining (Jiang et al., ICLR 2024; docs/method.md, "NegLabel").

Candidates are the words of a ``WordCorpus`` (WordNet nouns and adjectives, a word list, the built-in
world's concepts: whatever the caller built) turned into prompts. For a candidate with text feature
``n`` and ID class text features ``T_1..T_C`` (all L2-normalised), its affinity to the ID classes is
the eta-quantile (linear interpolation, as ``torch.quantile``) of ``{n . T_c}_c``. Nouns and
adjectives are ranked separately by that affinity and the ``keep_fraction`` least similar of each are
kept (``int(count * keep_fraction)``, as in the paper's code); ``max_negatives`` caps the total, split
between nouns and adjectives in proportion to what each kept. Candidates equal to an ID class name
are dropped first, compared as the tokenizer reads them (``name_key``: case, whitespace, Unicode
form and WordNet's ``_`` do not count); ``mining_candidates`` is that rule, which preflight applies
too, so a corpus that leaves nothing to keep is refused before the search.

As in the paper's code, mining happens once with the starting model; during fine-tuning the selected
prompts are re-encoded with the current model (``NegLabelSetup.inputs``). The parameters are the
config's ``NegLabelConfig`` (``settings``: read by attribute, so this module needs no config import).
Mined negatives are stored (``NegativeLabels.save``) in a cache keyed by a fingerprint of the model
weights, the ID class names, the prompts, the corpus and the parameters, and by a search's
preparation step in the experiment.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from raymmft.ood.corpus import WordCorpus, corpus_from_words
from raymmft.ood.embed import average_templates
from raymmft.progress import Progress, say
from raymmft.storage import Location
from raymmft.text import class_prompts, tokenizer_text

if TYPE_CHECKING:  # the settings are the config's section; read by attribute only
    from raymmft.config import NegLabelConfig

EncodeText = Callable[..., Tensor]  # (prompts, progress=None) -> [n, D] features

ID_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
# candidates per encoder call
MINING_CHUNK = 8192
CACHE_VERSION = 2


@dataclass
class NegativeLabels:
    """Mined negative labels: words, their prompts, kind (``noun``/``adj``), ID affinity, features."""

    words: list[str]
    prompts: list[str]
    kinds: list[str]
    affinity: Tensor  # [M] eta-quantile similarity to the ID classes at mining time
    features: Tensor  # [M, D] L2-normalised text features of the mining model
    fingerprint: str | None = None
    from_cache: bool = field(default=False, compare=False)

    def __len__(self) -> int:
        return len(self.words)

    def save(self, location: str | Location) -> Location:
        """Write to a local path or storage URI, whole or not at all (``torch.save`` of tensors and
        strings: loads with ``weights_only=True``)."""
        payload = {
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "words": self.words,
            "prompts": self.prompts,
            "kinds": self.kinds,
            "affinity": self.affinity,
            "features": self.features,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return Location.parse(location).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, location: str | Location) -> NegativeLabels:
        data = torch.load(
            io.BytesIO(Location.parse(location).read_bytes()), map_location="cpu", weights_only=True
        )
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            raise ValueError(f"{location} is not a NegLabel file of version {CACHE_VERSION}")
        return cls(
            words=list(data["words"]),
            prompts=list(data["prompts"]),
            kinds=list(data["kinds"]),
            affinity=data["affinity"],
            features=data["features"],
            fingerprint=data["fingerprint"],
            from_cache=True,
        )


def eta_quantile(similarities: Tensor, eta: float) -> Tensor:
    """Row-wise eta-quantile with linear interpolation (``torch.quantile``'s default).

    ``q = s_(lo) + (eta (C-1) - lo) (s_(hi) - s_(lo))`` over each row sorted ascending, with
    ``lo = floor(eta (C-1))`` and ``hi = ceil(eta (C-1))``. Written out because ``torch.quantile``
    refuses inputs over 2^24 elements.
    """
    sims = similarities.sort(dim=-1).values
    pos = eta * (sims.shape[-1] - 1)
    lo, hi = int(pos // 1), min(int(pos // 1) + 1, sims.shape[-1] - 1)
    return sims[..., lo] + (pos - lo) * (sims[..., hi] - sims[..., lo])


def name_key(name: str) -> str:
    """A word or class name as the tokenizer reads it, WordNet's ``_`` as a space: the form in
    which candidates are compared with the ID class names."""
    return tokenizer_text(name.replace("_", " "))


def mining_candidates(
    corpus: WordCorpus, id_classnames: Sequence[str], settings: NegLabelConfig
) -> tuple[list[str], list[str], int, int]:
    """``(nouns, adjectives, nouns kept, adjectives kept)``: the words mining ranks
    (``settings.exclude_categories`` and the words equal to an ID class name left out) and how
    many of each it keeps. A corpus of which it would keep none is a ``ValueError`` saying why."""
    words = corpus.without_categories(settings.exclude_categories)
    id_keys = {name_key(name) for name in id_classnames}
    nouns = [w for w in words.nouns if name_key(w) not in id_keys]
    adjs = [w for w in words.adjectives if name_key(w) not in id_keys]
    k_noun, k_adj = _keep_counts(
        len(nouns), len(adjs), settings.keep_fraction, settings.max_negatives
    )
    if k_noun + k_adj == 0:
        dropped = len(words) - len(nouns) - len(adjs)
        named = f" ({dropped} more equal an ID class name)" if dropped else ""
        raise ValueError(
            f"NegLabel mining keeps no words: {len(nouns)} nouns and {len(adjs)} adjectives{named} "
            f"with keep_fraction={settings.keep_fraction}; use a larger corpus or keep_fraction"
        )
    return nouns, adjs, k_noun, k_adj


def mining_fingerprint(
    model_fingerprint: str,
    id_classnames: Sequence[str],
    corpus: WordCorpus,
    settings: NegLabelConfig,
    id_templates: Sequence[str],
) -> str:
    """SHA-256 of everything that determines a mining result."""
    key = {
        "version": CACHE_VERSION,
        "model": model_fingerprint,
        "id_classnames": list(id_classnames),
        "corpus": corpus.fingerprint(),
        "eta": settings.eta,
        "keep_fraction": settings.keep_fraction,
        "max_negatives": settings.max_negatives,
        "noun_template": settings.noun_template,
        "adj_template": settings.adj_template,
        "id_templates": list(id_templates),
        "id_filter": "tokenizer_text",  # how candidates are matched to ID names (name_key)
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _keep_counts(num_nouns: int, num_adjs: int, keep_fraction: float, max_negatives: int | None):
    k_noun, k_adj = int(num_nouns * keep_fraction), int(num_adjs * keep_fraction)
    if max_negatives is not None and k_noun + k_adj > max_negatives:
        scaled = round(max_negatives * k_noun / (k_noun + k_adj))
        k_noun, k_adj = scaled, max_negatives - scaled
    return k_noun, k_adj


def _encode(encode: EncodeText, prompts: Sequence[str], progress: Progress | None) -> Tensor:
    """``encode(prompts)``; an encoder that counts as it goes (``counts_progress``, as
    ``embed.TextEncoder``) gets the progress, a plain ``prompts -> features`` callable is counted
    after each call."""
    if getattr(encode, "counts_progress", False):
        return encode(prompts, progress)
    features = encode(prompts)
    if progress is not None:
        progress.update(len(prompts))
    return features


def _encode_candidates(
    encode: EncodeText,
    prompts: Sequence[str],
    id_features: Tensor,
    eta: float,
    progress: Progress | None,
) -> tuple[Tensor, Tensor]:
    """Candidate features ``[n, D]`` and their eta-quantile affinities to the ID classes ``[n]``.

    Encoded ``MINING_CHUNK`` prompts per call; similarities are reduced to quantiles in blocks of at
    most 2^24 entries, so memory holds the features but never the full ``[n, C]`` matrix.
    """
    rows = max(1, min(MINING_CHUNK, 2**24 // id_features.shape[0]))
    feats, affinity = [], []
    for start in range(0, len(prompts), MINING_CHUNK):
        chunk = _encode(encode, prompts[start : start + MINING_CHUNK], progress)
        chunk = F.normalize(chunk.float().cpu(), dim=-1)
        feats.append(chunk)
        for block in chunk.split(rows):
            affinity.append(eta_quantile(block @ id_features.T, eta))
    return torch.cat(feats), torch.cat(affinity)


def mine_negative_labels(
    encode: EncodeText,
    id_classnames: Sequence[str],
    corpus: WordCorpus | Sequence[str],
    settings: NegLabelConfig,
    *,
    id_templates: Sequence[str] = ID_TEMPLATES,
    cache: str | Location | None = None,
    model_fingerprint: str | None = None,
    out: Callable[[str], None] | None = say,
) -> NegativeLabels:
    """Select NegLabel negatives for ``id_classnames`` (module docstring gives the rule).

    ``encode`` is a callable ``(prompts, progress) -> [n, D] features`` (an ``embed.TextEncoder``;
    a plain ``prompts -> features`` callable works too). ``corpus`` is a ``WordCorpus`` or a plain
    word list (used as nouns), before ``settings.exclude_categories`` are dropped. With ``cache`` (a
    directory, local or URI) a result is reused when the fingerprint matches; the model part is
    ``model_fingerprint`` or ``encode.fingerprint()``. ``out`` receives a progress line about every
    10 s and one line when mining is done.
    """
    if not id_classnames:
        raise ValueError("need at least one ID class name to mine negative labels")
    if not isinstance(corpus, WordCorpus):
        corpus = corpus_from_words(corpus)
    nouns, adjs, k_noun, k_adj = mining_candidates(corpus, id_classnames, settings)
    words = corpus.without_categories(settings.exclude_categories)

    cache_file = fingerprint = None
    if cache is not None:
        model_fp = model_fingerprint or getattr(encode, "fingerprint", lambda: None)()
        if model_fp is None:
            raise ValueError(
                "caching mined negatives needs model_fingerprint= or encode.fingerprint()"
            )
        fingerprint = mining_fingerprint(model_fp, id_classnames, words, settings, id_templates)
        cache_file = Location.parse(cache).join(f"neglabel-{fingerprint[:24]}.pt")
        cached = _load_cache(cache_file, fingerprint)
        if cached is not None:
            return cached

    start = time.monotonic()
    id_prompts = class_prompts(id_classnames, id_templates)
    id_feats = average_templates(
        _encode(encode, id_prompts, None).float().cpu(), len(id_classnames), len(id_templates)
    )
    total = len(nouns) * (k_noun > 0) + len(adjs) * (k_adj > 0)
    progress = Progress("mining negatives", total, "words", out=out)
    selected_words, selected_kinds, selected_prompts = [], [], []
    selected_feats, selected_aff = [], []
    for kind, cands, template, keep in (
        ("noun", nouns, settings.noun_template, k_noun),
        ("adj", adjs, settings.adj_template, k_adj),
    ):
        if keep == 0:
            continue
        prompts = [template.format(w) for w in cands]
        feats, affinity = _encode_candidates(encode, prompts, id_feats, settings.eta, progress)
        order = torch.argsort(affinity, stable=True)[:keep]
        selected_words += [cands[i] for i in order.tolist()]
        selected_prompts += [prompts[i] for i in order.tolist()]
        selected_kinds += [kind] * keep
        selected_feats.append(feats[order])
        selected_aff.append(affinity[order])
    result = NegativeLabels(
        words=selected_words,
        prompts=selected_prompts,
        kinds=selected_kinds,
        affinity=torch.cat(selected_aff),
        features=torch.cat(selected_feats),
        fingerprint=fingerprint,
    )
    if out is not None:
        out(
            f"mined {len(result):,} negative labels from {total:,} words "
            f"in {time.monotonic() - start:.1f} s"
        )
    if cache_file is not None:
        result.save(cache_file)
    return result


def encode_negative_labels(
    encode: EncodeText,
    negatives: NegativeLabels | Sequence[str],
    noun_template: str = "a photo of a {}.",
) -> Tensor:
    """Re-encode mined negatives with the current model: L2-normalised features ``[M, D]``.

    ``negatives`` is a ``NegativeLabels`` (its prompts are encoded) or a word list (formatted with
    ``noun_template``).
    """
    if isinstance(negatives, NegativeLabels):
        prompts = negatives.prompts
    else:
        prompts = [noun_template.format(w) for w in negatives]
    if not prompts:
        raise ValueError("no negative labels to encode")
    return F.normalize(_encode(encode, list(prompts), None).float().cpu(), dim=-1)


def _load_cache(location: Location, fingerprint: str) -> NegativeLabels | None:
    try:
        if not location.is_file():
            return None
        cached = NegativeLabels.load(location)
    except Exception:  # a torn, foreign or unreadable file is a miss, and is overwritten
        return None
    return cached if cached.fingerprint == fingerprint else None


# --- the score's setup (behind the registry in raymmft.ood.scores) --------------------------------


@dataclass
class NegLabelSetup:
    """NegLabel prepared for a run's evaluations: the negatives mined with the starting model (or
    given, e.g. by a search's preparation step), re-encoded with the current model at each
    evaluation, or mined again from ``corpus`` when ``settings.remine_each_eval``."""

    negatives: NegativeLabels
    settings: NegLabelConfig
    classnames: list[str]
    id_templates: tuple[str, ...]
    corpus: WordCorpus | None = None

    def inputs(self, encode: EncodeText) -> dict[str, Tensor]:
        """What ``neglabel_score`` takes besides the image and class features, for ``encode``'s
        model: the negatives' text features."""
        if self.settings.remine_each_eval:
            mined = mine_negative_labels(
                encode, self.classnames, self.corpus, self.settings, id_templates=self.id_templates
            )
            return {"neg_text_features": mined.features}
        return {"neg_text_features": encode_negative_labels(encode, self.negatives)}

    def info(self) -> dict[str, int]:
        return {"num_negatives": len(self.negatives)}


def setup_neglabel(context) -> NegLabelSetup:
    """Mine with the starting model (``context.encode``), unless the context brings negatives."""
    settings = context.settings.neglabel
    templates = tuple(context.settings.templates)
    negatives = context.negatives
    if context.corpus is None and (negatives is None or settings.remine_each_eval):
        raise ValueError("NegLabel needs the corpus to mine negatives from")
    if negatives is None:
        negatives = mine_negative_labels(
            context.encode,
            context.classnames,
            context.corpus,
            settings,
            id_templates=templates,
            cache=context.cache,
            out=context.out,
        )
    return NegLabelSetup(negatives, settings, list(context.classnames), templates, context.corpus)
