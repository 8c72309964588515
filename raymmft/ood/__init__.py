"""OoD detection: post-hoc scores, metrics, NegLabel mining and embedding extraction.

Pure functions of tensors; nothing here imports Ray.
"""

from raymmft.ood.metrics import accuracy, aupr_in, aupr_out, auroc, fpr_at_tpr, ood_metrics
from raymmft.ood.scores import (
    SCORES,
    energy_score,
    get_score,
    max_logit_score,
    mcm_score,
    msp_score,
    neglabel_score,
)

__all__ = [
    "SCORES",
    "accuracy",
    "aupr_in",
    "aupr_out",
    "auroc",
    "energy_score",
    "fpr_at_tpr",
    "get_score",
    "max_logit_score",
    "mcm_score",
    "msp_score",
    "neglabel_score",
    "ood_metrics",
]
