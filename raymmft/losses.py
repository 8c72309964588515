"""The CMA loss (docs/method.md, "The CMA loss"): symmetric CLIP cross-entropy plus the cross-modal alignment term.

For logits ``L = s * f_img @ f_txt^T`` (features L2-normalised, ``s = 1 / tau``)::

    CE_img = CE(L, arange(B))          CE_txt = CE(L^T, arange(B))
    R_img  = mean_i(-logsumexp_j L[i, j])
    R_txt  = mean_i(-logsumexp_j L^T[i, j])
    loss   = (CE_img + lam * R_img) / 2 + (CE_txt + lam * R_txt) / 2

``lam = 0`` is the plain symmetric CLIP (FLYP) loss.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


class CMALossOutput(NamedTuple):
    """The loss and its two parts, ``loss = contrastive + lam * regularizer``."""

    loss: torch.Tensor
    contrastive: torch.Tensor
    regularizer: torch.Tensor


def cma_loss_parts(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float | torch.Tensor,
    lam: float,
) -> CMALossOutput:
    """CMA loss of one (global) batch of B (image, text) pairs, with its parts."""
    if image_features.shape != text_features.shape:
        raise ValueError(
            f"image and text features must have the same shape, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    # float32 even under autocast: logsumexp over a large batch is precision-sensitive.
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    logits_per_image = logit_scale * image_features @ text_features.T
    logits_per_text = logits_per_image.T
    labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    contrastive = (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    ) / 2
    regularizer = (
        -(
            torch.logsumexp(logits_per_image, dim=1).mean()
            + torch.logsumexp(logits_per_text, dim=1).mean()
        )
        / 2
    )
    return CMALossOutput(contrastive + lam * regularizer, contrastive, regularizer)


def cma_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float | torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Scalar CMA loss (docs/method.md, "The CMA loss"); features are L2-normalised inside."""
    return cma_loss_parts(image_features, text_features, logit_scale, lam).loss


class _AllGatherWithGrad(torch.autograd.Function):
    """``cat(all_gather(x))`` along dim 0; backward sums the incoming gradients over the workers
    and returns this worker's slice. Public collectives only (``torch.distributed.nn.all_gather``,
    which does the same, is deprecated in torch 2.14)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce writes in place; autograd owns `grad`
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_features(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather both feature batches across workers (equal batch sizes), keeping the autograd
    graph.

    Backward sums the incoming gradients, so every worker's local features receive the gradient of
    the (identical) global loss from all workers; DDP's gradient averaging then yields exactly the
    single-process gradient of the global batch.
    """
    if world_size == 1:
        return image_features, text_features
    return _AllGatherWithGrad.apply(image_features), _AllGatherWithGrad.apply(text_features)


class CMALoss(torch.nn.Module):
    """CMA loss on the global batch of a data-parallel job.

    Each of ``world_size`` workers passes its local features; they are gathered with gradient so
    that the loss, and after DDP's averaging the update, do not depend on the number of workers.
    """

    def __init__(self, lam: float, world_size: int = 1):
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"world_size={world_size} needs an initialised torch.distributed group"
            )
        self.lam = lam
        self.world_size = world_size

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: float | torch.Tensor,
    ) -> CMALossOutput:
        all_image, all_text = gather_features(image_features, text_features, self.world_size)
        return cma_loss_parts(all_image, all_text, logit_scale, self.lam)
