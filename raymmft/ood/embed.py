"""Image and text embeddings for evaluation: L2-normalised float32 features on the CPU.

Everything runs under ``torch.no_grad`` with the model in eval mode (its previous mode is restored),
optionally under autocast with the model's training precision. Texts go through ``TextEncoder``:
each prompt is tokenised once (``CachedTokenizer`` keeps the ids and lengths), prompts are batched
by length and each batch is encoded at its real length (``raymmft.text_tower``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from raymmft.distributed import gather_rows
from raymmft.progress import Progress
from raymmft.text import class_prompts
from raymmft.text_tower import clip_of, encode_text, token_lengths

DEFAULT_TEXT_BATCH_SIZE = 256
# A set of prompts is cut into at least this many batches (of at least MIN_TEXT_BATCH prompts), so
# that up to 8 workers share a small set, such as 312 negatives or 1,000 class prompts, evenly. It
# depends on the number of prompts only: any number of workers encodes the same batches.
TEXT_BATCHES = 8
MIN_TEXT_BATCH = 32


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no gradients inside; the model's previous train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _autocast(device: torch.device | str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _param_dtype(model: torch.nn.Module) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def encode_images(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device | str = "cpu",
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Encode every ``(images, labels)`` batch of ``loader``: ``(features [N, D], labels [N],
    skipped)``. Features are L2-normalised float32 on the CPU; labels are int64. A sample with
    label -1 is an image that could not be decoded (``skip_corrupt``): it is left out and counted
    in ``skipped``."""
    clip = clip_of(model)
    input_dtype = _param_dtype(clip)
    features, labels, skipped = [], [], 0
    with eval_mode(clip):
        for images, targets in loader:
            targets = torch.as_tensor(targets).long().reshape(-1)
            keep = targets >= 0
            if progress is not None:
                progress.update(len(targets))
            if not keep.all():
                skipped += int((~keep).sum())
                images, targets = images[keep], targets[keep]
            if len(targets) == 0:
                continue
            images = images.to(device=device, dtype=input_dtype, non_blocking=True)
            with _autocast(device, autocast_dtype):
                feats = clip.encode_image(images)
            features.append(F.normalize(feats.float(), dim=-1).cpu())
            labels.append(targets.cpu())
    if not features:
        dim = int(getattr(clip, "embed_dim", None) or clip.text_projection.shape[-1])
        return torch.empty(0, dim), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(features), torch.cat(labels), skipped


def share_batches(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Which batches each of ``world_size`` ranks encodes, given each batch's cost (its prompts
    times its length in tokens): the costliest first, each to the rank with the least so far
    (ties: the lower rank), each rank's in ascending order. Every rank computes the same shares.
    A contiguous run per rank would give the last rank every long prompt, as batches are sorted
    by length."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[index]
        shares[rank].append(index)
    return [sorted(share) for share in shares]


class CachedTokenizer:
    """A tokenizer that keeps the token ids of every prompt it has seen.

    An evaluator encodes the same prompts (class prompts, NegLabel negatives) at every evaluation of
    a trial with a changing model; the ids never change, so each prompt is tokenised once. Rows are
    returned in the order asked, exactly as ``tokenizer(prompts)`` returns them.
    """

    def __init__(self, tokenizer: Callable[[list[str]], Tensor]) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        prompts = list(prompts)
        new = list(dict.fromkeys(p for p in prompts if p not in self._ids))
        if new:
            self._ids.update(zip(new, self.tokenizer(new)))
        return torch.stack([self._ids[p] for p in prompts])


class TextEncoder:
    """``prompts -> features`` with a model and tokenizer: L2-normalised float32 ``[N, D]`` on
    the CPU, in the order given.

    Prompts are tokenised once each, sorted by length and encoded ``batch_size`` at a time (fewer
    for a small set: ``TEXT_BATCHES``), every batch at its longest prompt's length; a ``progress``
    counts them. On ``world_size`` workers
    (every rank calls it with the same prompts) each rank encodes its share of those batches
    (``share_batches``: balanced by tokens, as batches of long prompts cost more) and the features
    are gathered: the same batches as on one worker, so the same features.
    ``fingerprint()`` identifies the text tower's weights (the key of cached NegLabel mining).
    """

    counts_progress = True  # __call__ takes a Progress

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        device: torch.device | str = "cpu",
        batch_size: int = DEFAULT_TEXT_BATCH_SIZE,
        *,
        autocast_dtype: torch.dtype | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = clip_of(model)
        cached = isinstance(tokenizer, CachedTokenizer)
        self.tokenizer = tokenizer if cached else CachedTokenizer(tokenizer)
        self.device, self.batch_size, self.autocast_dtype = device, batch_size, autocast_dtype
        self.rank, self.world_size = rank, world_size
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return int(getattr(self.model, "embed_dim", None) or self.model.text_projection.shape[-1])

    def __call__(self, prompts: Sequence[str], progress: Progress | None = None) -> Tensor:
        if len(prompts) == 0:
            return torch.empty(0, self.dim)
        ids = self.tokenizer(list(prompts))
        lengths = token_lengths(self.model, ids)
        order = torch.argsort(lengths, stable=True)
        size = min(self.batch_size, max(MIN_TEXT_BATCH, -(-len(prompts) // TEXT_BATCHES)))
        batches = order.split(size)
        shares = share_batches([len(b) * int(lengths[b].max()) for b in batches], self.world_size)
        mine = [batches[i] for i in shares[self.rank]]
        local = []
        with eval_mode(self.model):
            for batch in mine:
                tokens = ids[batch].to(self.device)
                with _autocast(self.device, self.autocast_dtype):
                    feats = encode_text(self.model, tokens)
                local.append(F.normalize(feats.float(), dim=-1).cpu())
                if progress is not None:
                    progress.update(len(batch))
        local = torch.cat(local) if local else torch.empty(0, self.dim)
        gathered = gather_rows(local, self.world_size)
        if progress is not None and self.world_size > 1:  # the other ranks' batches
            progress.update(len(prompts) - len(local))
        out = torch.empty(len(prompts), self.dim)
        out[torch.cat([batches[i] for share in shares for i in share])] = gathered
        return out

    def fingerprint(self) -> str:
        """``model_fingerprint(model)``, computed once per encoder (weights are assumed fixed)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint


def average_templates(features: Tensor, num_classes: int, num_templates: int) -> Tensor:
    """Mean over templates of normalised class-major features ``[C*K, D]``, renormalised: ``[C, D]``."""
    feats = F.normalize(features.float(), dim=-1).view(num_classes, num_templates, -1)
    return F.normalize(feats.mean(dim=1), dim=-1)


def class_text_features(
    encode: Callable[[Sequence[str]], Tensor], classnames: Sequence[str], templates: Sequence[str]
) -> Tensor:
    """Zero-shot classifier ``[C, D]``: ``T_c = normalise(mean_k normalise(E(template_k(c))))``."""
    feats = encode(class_prompts(classnames, templates))
    return average_templates(feats, len(classnames), len(templates))


# Not read by encode_text: the image tower and the logit scale/bias. Leaving them out keeps the
# NegLabel mining cache valid across trials that differ only in temperature (logit_scale).
_NOT_TEXT = ("visual.", "logit_scale", "logit_bias")


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the text tower's weights (hex): what
    text features, and so mined negatives, depend on."""
    digest = hashlib.sha256()
    for name, tensor in clip_of(model).state_dict().items():
        if name.startswith(_NOT_TEXT):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
