"""Weight interpolation toward the starting model (WiSE-FT, Wortsman et al., CVPR 2022):

    theta_alpha = (1 - alpha) * theta_start + alpha * theta_trial

over every floating-point entry of the state dict (both towers, the projections, the logit scale);
integer buffers are the trial's. alpha = 0 is the starting model and alpha = 1 the trial, exactly
(bit for bit, not through the arithmetic). Pure PyTorch: no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def interpolate_state(
    start: Mapping[str, torch.Tensor], trial: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * trial`` of two state dicts of one architecture, computed in
    float32 (float64 for float64 entries) and cast back to each entry's dtype, on the trial's
    devices. Raises ``ValueError`` for ``alpha`` outside [0, 1] or state dicts that differ in keys
    or shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if set(start) != set(trial):
        only = sorted(set(start) ^ set(trial))[:3]
        raise ValueError(f"the state dicts differ in their entries, e.g. {only}")
    out = {}
    for key, theta in trial.items():
        first = start[key]
        if first.shape != theta.shape:
            raise ValueError(
                f"{key}: shape {tuple(first.shape)} at the start, {tuple(theta.shape)} in the trial"
            )
        if alpha == 1.0 or not theta.is_floating_point():
            out[key] = theta.detach().clone()
        elif alpha == 0.0:
            out[key] = first.detach().to(device=theta.device, dtype=theta.dtype, copy=True)
        else:
            wide = torch.float64 if theta.dtype == torch.float64 else torch.float32
            a, b = first.detach().to(theta.device, wide), theta.detach().to(wide)
            out[key] = torch.lerp(a, b, alpha).to(theta.dtype)
    return out


def starting_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state on the CPU: the starting weights, held once per worker."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
