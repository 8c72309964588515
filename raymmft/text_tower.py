"""The CLIP text tower at each prompt's real length.

open_clip's ``CLIP`` text tower attends with a causal mask and pools at the end-of-text token: a
position never sees the positions after it, so every sequence of a batch can be cut after the
batch's longest prompt (its end-of-text position + 1) and the features come out the same, at a
fraction of the 77-token cost (a WordNet prompt is about 13 tokens). ``encode_text`` does that
wherever it is exact (``trims_exactly``) and calls ``model.encode_text`` otherwise.

It runs open_clip's own ``encode_text`` with the positional embedding and the attention mask sliced
to the length (``torch.func.functional_call``), so gradients reach the real parameters and a
training step through DDP (``TrainingForward``) works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# open_clip's text_global_pool types that read the end-of-text position (or the first token)
EXACT_POOLING = ("argmax", "eos", "first")


def trims_exactly(model: torch.nn.Module) -> bool:
    """Whether cutting the context after the longest prompt leaves ``model``'s text features
    unchanged: an open_clip ``CLIP`` text tower with a causal attention mask, a positional
    embedding per position, and pooling at the end-of-text token (or the first token)."""
    import open_clip

    if type(model) is not open_clip.CLIP:  # CustomTextCLIP, CoCa, ...: other text towers
        return False
    mask = getattr(model, "attn_mask", None)
    pos = getattr(model, "positional_embedding", None)
    if mask is None or pos is None or mask.ndim != 2 or mask.shape[0] != pos.shape[0]:
        return False
    if getattr(model, "text_pool_type", None) not in EXACT_POOLING:
        return False
    future = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isneginf(mask[future]).all() and (mask[~future] == 0).all())


def token_lengths(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Each prompt's length up to and including its end-of-text token (what pooling reads)."""
    pool = getattr(model, "text_pool_type", "argmax")
    if pool == "first":
        return torch.ones(tokens.shape[0], dtype=torch.long, device=tokens.device)
    if pool == "eos":
        end = (tokens == model.text_eos_id).int().argmax(dim=-1)
    else:  # argmax: the end-of-text token has the largest id
        end = tokens.argmax(dim=-1)
    return end.long() + 1


class _EncodeText(torch.nn.Module):
    """``clip.encode_text`` as a module's forward, for ``functional_call``."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, tokens: Tensor) -> Tensor:
        return self.clip.encode_text(tokens)


def encode_text(model: torch.nn.Module, tokens: Tensor, *, normalize: bool = False) -> Tensor:
    """``model.encode_text(tokens)``, with the context cut after the longest prompt of the batch
    when that is exact (``trims_exactly``)."""
    if not trims_exactly(model) or tokens.shape[0] == 0:
        features = model.encode_text(tokens)
    else:
        length = int(token_lengths(model, tokens).max())
        if length >= tokens.shape[1]:
            features = model.encode_text(tokens)
        else:
            sliced = {
                "clip.positional_embedding": model.positional_embedding[:length],
                "clip.attn_mask": model.attn_mask[:length, :length],
            }
            features = torch.func.functional_call(
                _EncodeText(model), sliced, (tokens[:, :length],), strict=False
            )
    return F.normalize(features, dim=-1) if normalize else features


class TrainingForward(torch.nn.Module):
    """What a fine-tuning step runs (through DDP on several workers): both towers on a batch of
    (image, class prompt) pairs, the text at its real length. Its ``clip`` is the open_clip model."""

    def __init__(self, clip: torch.nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        image_features = self.clip.encode_image(images, normalize=True)
        text_features = encode_text(self.clip, tokens, normalize=True)
        return image_features, text_features, self.clip.logit_scale.exp()


def clip_of(model: torch.nn.Module) -> torch.nn.Module:
    """The open_clip model inside DDP / ``TrainingForward`` wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, TrainingForward):
            model = model.clip
        else:
            return model
