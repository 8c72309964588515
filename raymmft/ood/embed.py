"""Image and text embeddings for evaluation: L2-normalised float32 features on the CPU.

Everything runs under ``torch.no_grad`` with the model in eval mode (its previous mode is restored),
optionally under autocast with the model's training precision. Texts are encoded in batches, each
prompt once per call, so a caller that needs class features and negatives encodes each text once
per evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEXT_BATCH_SIZE = 256


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The CLIP model inside a DDP / DataParallel wrapper (``.module``), else the model itself."""
    return (
        model.module
        if hasattr(model, "module") and hasattr(model.module, "encode_image")
        else model
    )


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
    progress: bool | str = False,
) -> tuple[Tensor, Tensor]:
    """Encode every ``(images, labels)`` batch of ``loader``: ``(features [N, D], labels [N])``.

    Features are L2-normalised float32 on the CPU; labels are int64. ``progress`` shows a tqdm bar
    (a string is used as its description).
    """
    clip = unwrap(model)
    input_dtype = _param_dtype(clip)
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        desc = progress if isinstance(progress, str) else "images"
        batches = tqdm(loader, desc=desc, unit="batch", leave=False)
    features, labels = [], []
    with eval_mode(clip):
        for images, targets in batches:
            images = images.to(device=device, dtype=input_dtype, non_blocking=True)
            with _autocast(device, autocast_dtype):
                feats = clip.encode_image(images)
            features.append(F.normalize(feats.float(), dim=-1).cpu())
            labels.append(torch.as_tensor(targets).long().reshape(-1).cpu())
    if not features:
        raise ValueError("the image loader yielded no batches")
    return torch.cat(features), torch.cat(labels)


def encode_texts(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    prompts: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = DEFAULT_TEXT_BATCH_SIZE,
    *,
    autocast_dtype: torch.dtype | None = None,
    progress: bool | str = False,
) -> Tensor:
    """Encode ``prompts`` in batches: L2-normalised float32 features ``[len(prompts), D]`` on CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clip = unwrap(model)
    starts: Iterable[int] = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        desc = progress if isinstance(progress, str) else "texts"
        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    out = []
    with eval_mode(clip):
        for start in starts:
            tokens = tokenizer(list(prompts[start : start + batch_size])).to(device)
            with _autocast(device, autocast_dtype):
                feats = clip.encode_text(tokens)
            out.append(F.normalize(feats.float(), dim=-1).cpu())
    if not out:
        dim = getattr(clip, "embed_dim", None) or clip.text_projection.shape[-1]
        return torch.empty(0, int(dim))
    return torch.cat(out)


def class_text_features(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = DEFAULT_TEXT_BATCH_SIZE,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Zero-shot classifier ``[C, D]``: ``T_c = normalise(mean_k normalise(E(template_k(c))))``."""
    prompts = class_prompts(classnames, templates)
    feats = encode_texts(
        model, tokenizer, prompts, device, batch_size, autocast_dtype=autocast_dtype
    )
    return average_templates(feats, len(classnames), len(templates))


def class_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Prompts in class-major order: ``[t.format(c) for c in classnames for t in templates]``."""
    if not templates:
        raise ValueError("need at least one prompt template")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template must contain exactly one '{{}}', got {template!r}")
    return [template.format(name) for name in classnames for template in templates]


def average_templates(features: Tensor, num_classes: int, num_templates: int) -> Tensor:
    """Mean over templates of normalised class-major features ``[C*K, D]``, renormalised: ``[C, D]``."""
    feats = F.normalize(features.float(), dim=-1).view(num_classes, num_templates, -1)
    return F.normalize(feats.mean(dim=1), dim=-1)


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
    """``prompts -> features`` with a model and tokenizer, as NegLabel mining takes it.

    ``fingerprint()`` identifies the model's weights (for caching mined negatives).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        device: torch.device | str = "cpu",
        batch_size: int = DEFAULT_TEXT_BATCH_SIZE,
        *,
        autocast_dtype: torch.dtype | None = None,
        progress: bool | str = False,
    ) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.batch_size, self.autocast_dtype, self.progress = batch_size, autocast_dtype, progress
        self._fingerprint: str | None = None

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        return encode_texts(
            self.model,
            self.tokenizer,
            prompts,
            self.device,
            self.batch_size,
            autocast_dtype=self.autocast_dtype,
            progress=self.progress,
        )

    def fingerprint(self) -> str:
        """``model_fingerprint(model)``, computed once per encoder (weights are assumed fixed)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint


# Not read by encode_text: the image tower and the logit scale/bias. Leaving them out keeps the
# NegLabel mining cache valid across trials that differ only in temperature (logit_scale).
_NOT_TEXT = ("visual.", "logit_scale", "logit_bias")


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of the text tower's weights (hex): what
    text features, and so mined negatives, depend on."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        if name.startswith(_NOT_TEXT):
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
