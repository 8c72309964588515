"""NegLabel negative-label mining (Jiang et al., ICLR 2024; METHOD.md §3).

Candidates are words (WordNet nouns and adjectives by default) turned into prompts. For a candidate
with text feature ``n`` and ID class text features ``T_1..T_C`` (all L2-normalised), its affinity to
the ID classes is the eta-quantile (linear interpolation, as ``torch.quantile``) of ``{n . T_c}_c``.
Nouns and adjectives are ranked separately by that affinity and the ``keep_fraction`` least similar
of each are kept (``int(count * keep_fraction)``, as in the paper's code); ``max_negatives`` caps the
total, split between nouns and adjectives in proportion to what each kept. Candidates equal to an ID
class name (case- and underscore-insensitive) are dropped first.

As in the paper's code, mining happens once with the starting model; during fine-tuning the selected
prompts are re-encoded with the current model (``encode_negative_labels``). Mining results are cached
on disk, keyed by a fingerprint of the model weights, the ID class names, the prompts, the corpus and
the mining parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from raymmft.errors import ConfigError
from raymmft.ood.corpus import WordCorpus, corpus_from_words, load_wordnet_corpus
from raymmft.ood.embed import DEFAULT_TEXT_BATCH_SIZE, TextEncoder, average_templates, class_prompts
from raymmft.storage import Location

EncodeText = Callable[[Sequence[str]], Tensor]

NOUN_TEMPLATE = "a photo of a {}."
ADJ_TEMPLATE = "This is a {} photo."
ID_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
# candidates per encoder call (the progress bar's step)
MINING_CHUNK = 8192
CACHE_VERSION = 1


@dataclass
class NegLabelParams:
    """Everything NegLabel needs, for mining and for scoring, as plain data (the config's section).

    ``ngroups``: 1 by default because small corpora cannot fill the paper's 100 groups; the paper's
    ImageNet setting uses 100. ``corpus``: ``"wordnet"``, ``"world"`` (the built-in shapes world's
    concept names), a text file with one word per line, or a list of words. ``remine_each_eval``: mine
    again with the current model at every evaluation instead of re-encoding the first selection.
    """

    eta: float = 0.95
    keep_fraction: float = 0.15
    max_negatives: int | None = None
    noun_template: str = NOUN_TEMPLATE
    adj_template: str = ADJ_TEMPLATE
    id_templates: tuple[str, ...] = ID_TEMPLATES
    exclude_categories: tuple[str, ...] = ()
    corpus: str | tuple[str, ...] = "wordnet"
    cache_dir: str | None = None
    ngroups: int = 1
    seed: int = 0
    batch_size: int = 1024
    text_batch_size: int = DEFAULT_TEXT_BATCH_SIZE
    remine_each_eval: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, object] | NegLabelParams | None) -> NegLabelParams:
        """Build from a dict (or a pydantic config section); an unknown key is a ``ConfigError``."""
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        if hasattr(values, "model_dump"):
            values = values.model_dump()
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown NegLabel parameter '{key}' (known: {', '.join(sorted(known))})"
                )
        kwargs = dict(values)
        for key in ("id_templates", "exclude_categories"):
            if key in kwargs and not isinstance(kwargs[key], str):
                kwargs[key] = tuple(kwargs[key])
        if "corpus" in kwargs and not isinstance(kwargs["corpus"], str):
            kwargs["corpus"] = tuple(kwargs["corpus"])
        return cls(**kwargs)

    def mining_kwargs(self) -> dict[str, object]:
        """Keyword arguments of ``mine_negative_labels`` (corpus resolved by the caller)."""
        return {
            "eta": self.eta,
            "keep_fraction": self.keep_fraction,
            "max_negatives": self.max_negatives,
            "noun_template": self.noun_template,
            "adj_template": self.adj_template,
            "id_templates": self.id_templates,
            "exclude_categories": self.exclude_categories,
            "cache_dir": self.cache_dir,
            "batch_size": self.text_batch_size,
        }

    def score_kwargs(self) -> dict[str, object]:
        """Keyword arguments of ``neglabel_score`` besides the features and temperature."""
        return {"ngroups": self.ngroups, "seed": self.seed, "batch_size": self.batch_size}


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


def _name_key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _read_word_file(path: Path) -> list[str]:
    words = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise ConfigError(f"NegLabel corpus file {path} holds no words (one word per line)")
    return words


def resolve_corpus(
    corpus: WordCorpus | Sequence[str] | str | os.PathLike | None,
    exclude_categories: Sequence[str] = (),
) -> WordCorpus:
    """``None``/``"wordnet"``, ``"world"``, a word-file path, a word list or a ``WordCorpus``."""
    if corpus is None or corpus == "wordnet":
        return load_wordnet_corpus(exclude_categories)
    if corpus == "world":
        from raymmft.data.shapes import world_concepts

        return corpus_from_words(world_concepts(), name="world")
    if isinstance(corpus, str) and corpus.startswith("world+wordnet"):
        from raymmft.world import world_corpus

        return world_corpus(corpus, exclude_categories)
    if isinstance(corpus, (str, os.PathLike)):
        path = Path(corpus)
        if not path.is_file():
            raise ConfigError(
                f"unknown NegLabel corpus '{corpus}' (known: wordnet, world, or a word file "
                f"with one word per line)"
            )
        corpus = corpus_from_words(_read_word_file(path), name=path.name)
    if not isinstance(corpus, WordCorpus):
        corpus = corpus_from_words(corpus)
    return corpus.without_categories(exclude_categories)


def _check_params(eta: float, keep_fraction: float, max_negatives: int | None) -> None:
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if max_negatives is not None and max_negatives < 1:
        raise ValueError(f"max_negatives must be >= 1 or None, got {max_negatives}")


def _as_encoder(encoder, tokenizer, device, batch_size) -> EncodeText:
    if tokenizer is not None:
        return TextEncoder(encoder, tokenizer, device, batch_size)
    if isinstance(encoder, torch.nn.Module) and hasattr(encoder, "encode_text"):
        raise ValueError("pass tokenizer= when mining with a CLIP model")
    if not callable(encoder):
        raise ValueError(f"encoder must be a callable prompts -> features, got {type(encoder)}")
    return encoder


def mining_fingerprint(
    model_fingerprint: str,
    id_classnames: Sequence[str],
    corpus: WordCorpus,
    *,
    eta: float,
    keep_fraction: float,
    max_negatives: int | None,
    noun_template: str,
    adj_template: str,
    id_templates: Sequence[str],
) -> str:
    """SHA-256 of everything that determines a mining result."""
    key = {
        "version": CACHE_VERSION,
        "model": model_fingerprint,
        "id_classnames": list(id_classnames),
        "corpus": corpus.fingerprint(),
        "eta": eta,
        "keep_fraction": keep_fraction,
        "max_negatives": max_negatives,
        "noun_template": noun_template,
        "adj_template": adj_template,
        "id_templates": list(id_templates),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _keep_counts(num_nouns: int, num_adjs: int, keep_fraction: float, max_negatives: int | None):
    k_noun, k_adj = int(num_nouns * keep_fraction), int(num_adjs * keep_fraction)
    if max_negatives is not None and k_noun + k_adj > max_negatives:
        scaled = round(max_negatives * k_noun / (k_noun + k_adj))
        k_noun, k_adj = scaled, max_negatives - scaled
    return k_noun, k_adj


def _encode_candidates(
    encode: EncodeText, prompts: Sequence[str], id_features: Tensor, eta: float, bar=None
) -> tuple[Tensor, Tensor]:
    """Candidate features ``[n, D]`` and their eta-quantile affinities to the ID classes ``[n]``.

    Encoded ``MINING_CHUNK`` prompts per call; similarities are reduced to quantiles in blocks of at
    most 2^24 entries, so memory holds the features but never the full ``[n, C]`` matrix.
    """
    rows = max(1, min(MINING_CHUNK, 2**24 // id_features.shape[0]))
    feats, affinity = [], []
    for start in range(0, len(prompts), MINING_CHUNK):
        chunk = F.normalize(encode(prompts[start : start + MINING_CHUNK]).float().cpu(), dim=-1)
        feats.append(chunk)
        for block in chunk.split(rows):
            affinity.append(eta_quantile(block @ id_features.T, eta))
        if bar is not None:
            bar.update(chunk.shape[0])
    return torch.cat(feats), torch.cat(affinity)


def mine_negative_labels(
    encoder: EncodeText | torch.nn.Module,
    id_classnames: Sequence[str],
    *,
    tokenizer: Callable | None = None,
    device: torch.device | str = "cpu",
    corpus: WordCorpus | Sequence[str] | str | None = None,
    eta: float = 0.95,
    keep_fraction: float = 0.15,
    max_negatives: int | None = None,
    noun_template: str = NOUN_TEMPLATE,
    adj_template: str = ADJ_TEMPLATE,
    id_templates: Sequence[str] = ID_TEMPLATES,
    exclude_categories: Sequence[str] = (),
    batch_size: int = DEFAULT_TEXT_BATCH_SIZE,
    cache_dir: str | os.PathLike | None = None,
    model_fingerprint: str | None = None,
    progress: bool = False,
) -> NegativeLabels:
    """Select NegLabel negatives for ``id_classnames`` (module docstring gives the rule).

    ``encoder`` is a callable ``prompts -> [n, D] features`` (e.g. ``embed.TextEncoder``), or a CLIP
    model together with ``tokenizer=``. ``corpus``: ``None``/``"wordnet"`` for the shipped WordNet
    corpus, a ``WordCorpus``, or a plain word list (used as nouns). With ``cache_dir`` a result is
    reused when the fingerprint matches; the model part is ``model_fingerprint`` or
    ``encoder.fingerprint()``. ``progress`` shows a tqdm bar over the candidates.
    """
    _check_params(eta, keep_fraction, max_negatives)
    if not id_classnames:
        raise ValueError("need at least one ID class name to mine negative labels")
    for template in (noun_template, adj_template, *id_templates):
        if template.count("{}") != 1:
            raise ValueError(f"prompt template must contain exactly one '{{}}', got {template!r}")
    encode = _as_encoder(encoder, tokenizer, device, batch_size)
    words = resolve_corpus(corpus, exclude_categories)
    id_keys = {_name_key(name) for name in id_classnames}
    nouns = [w for w in words.nouns if _name_key(w) not in id_keys]
    adjs = [w for w in words.adjectives if _name_key(w) not in id_keys]
    k_noun, k_adj = _keep_counts(len(nouns), len(adjs), keep_fraction, max_negatives)
    if k_noun + k_adj == 0:
        raise ValueError(
            f"NegLabel mining keeps no words: {len(nouns)} nouns and {len(adjs)} adjectives "
            f"with keep_fraction={keep_fraction}; use a larger corpus or keep_fraction"
        )

    cache_path = fingerprint = None
    if cache_dir is not None:
        model_fp = model_fingerprint or getattr(encode, "fingerprint", lambda: None)()
        if model_fp is None:
            raise ValueError(
                "caching mined negatives needs model_fingerprint= or encoder.fingerprint()"
            )
        fingerprint = mining_fingerprint(
            model_fp,
            id_classnames,
            words,
            eta=eta,
            keep_fraction=keep_fraction,
            max_negatives=max_negatives,
            noun_template=noun_template,
            adj_template=adj_template,
            id_templates=id_templates,
        )
        cache_path = Location.parse(cache_dir).join(f"neglabel-{fingerprint[:24]}.pt")
        cached = _load_cache(cache_path, fingerprint)
        if cached is not None:
            return cached

    id_prompts = class_prompts(id_classnames, id_templates)
    id_feats = average_templates(
        encode(id_prompts).float().cpu(), len(id_classnames), len(id_templates)
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(nouns) * (k_noun > 0) + len(adjs) * (k_adj > 0)
        bar = tqdm(total=total, desc="NegLabel candidates", unit="word", leave=False)
    selected_words, selected_kinds, selected_prompts = [], [], []
    selected_feats, selected_aff = [], []
    for kind, cands, template, keep in (
        ("noun", nouns, noun_template, k_noun),
        ("adj", adjs, adj_template, k_adj),
    ):
        if keep == 0:
            continue
        prompts = [template.format(w) for w in cands]
        feats, affinity = _encode_candidates(encode, prompts, id_feats, eta, bar)
        order = torch.argsort(affinity, stable=True)[:keep]
        selected_words += [cands[i] for i in order.tolist()]
        selected_prompts += [prompts[i] for i in order.tolist()]
        selected_kinds += [kind] * keep
        selected_feats.append(feats[order])
        selected_aff.append(affinity[order])
    if bar is not None:
        bar.close()
    result = NegativeLabels(
        words=selected_words,
        prompts=selected_prompts,
        kinds=selected_kinds,
        affinity=torch.cat(selected_aff),
        features=torch.cat(selected_feats),
        fingerprint=fingerprint,
    )
    if cache_path is not None:
        _save_cache(cache_path, result)
    return result


def encode_negative_labels(
    encoder: EncodeText | torch.nn.Module,
    negatives: NegativeLabels | Sequence[str],
    *,
    tokenizer: Callable | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = DEFAULT_TEXT_BATCH_SIZE,
    noun_template: str = NOUN_TEMPLATE,
) -> Tensor:
    """Re-encode mined negatives with the current model: L2-normalised features ``[M, D]``.

    ``negatives`` is a ``NegativeLabels`` (its prompts are encoded) or a word list (formatted with
    ``noun_template``).
    """
    encode = _as_encoder(encoder, tokenizer, device, batch_size)
    if isinstance(negatives, NegativeLabels):
        prompts = negatives.prompts
    else:
        prompts = [noun_template.format(w) for w in negatives]
    if not prompts:
        raise ValueError("no negative labels to encode")
    return F.normalize(encode(list(prompts)).float().cpu(), dim=-1)


def _load_cache(location: Location, fingerprint: str) -> NegativeLabels | None:
    try:
        if not location.is_file():
            return None
        data = torch.load(io.BytesIO(location.read_bytes()), map_location="cpu", weights_only=True)
    except Exception:  # a torn, foreign or unreadable file is a miss, and is overwritten
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return None
    return NegativeLabels(
        words=list(data["words"]),
        prompts=list(data["prompts"]),
        kinds=list(data["kinds"]),
        affinity=data["affinity"],
        features=data["features"],
        fingerprint=fingerprint,
        from_cache=True,
    )


def _save_cache(location: Location, result: NegativeLabels) -> None:
    """Written whole or not at all (``Location.write_bytes``): several workers may mine the same
    set at once, on a local disk, NFS or a bucket."""
    payload = {
        "fingerprint": result.fingerprint,
        "words": result.words,
        "prompts": result.prompts,
        "kinds": result.kinds,
        "affinity": result.affinity,
        "features": result.features,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    location.write_bytes(buffer.getvalue())
