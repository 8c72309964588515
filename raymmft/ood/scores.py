"""Post-hoc OoD scores (docs/method.md, "Post-hoc OoD scores"). Higher means more in-distribution.

Each score is a pure function of tensors. The registry ``SCORES`` gives every score one call form,

    SCORES[name](image_features, id_text_features, neg_text_features, **params) -> [N] scores

so the evaluator can compute any score by name (as OpenOOD's postprocessors are looked up). With
``f`` and ``T`` L2-normalised, the scores read the cosines ``f . T_c`` at three scales:

- MSP: the model's own logits, ``logit_scale * f . T_c`` (``logit_scale = exp(model.logit_scale)``,
  the scale the model was trained with; the evaluator passes the current model's);
- MCM: its own softmax temperature, ``f . T_c / mcm_temperature`` (1 in Ming et al., 2022);
- max-logit, energy and NegLabel: the score temperature, ``f . T_c / temperature`` (0.01).

Scores are computed in float32 (float64 if the inputs are float64) and returned on the input device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from raymmft.errors import ConfigError
from raymmft.ood.neglabel import setup_neglabel

DEFAULT_TEMPERATURE = 0.01
DEFAULT_MCM_TEMPERATURE = 1.0  # Ming et al., 2022: tau = 1 on cosine similarities
DEFAULT_BATCH_SIZE = 1024


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_2d(name: str, t: Tensor) -> None:
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def _normalise(t: Tensor, dtype: torch.dtype) -> Tensor:
    return F.normalize(t.to(dtype), dim=-1)


def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel): ``max_c softmax(logits)_c``."""
    return torch.softmax(logits.to(_compute_dtype(logits)), dim=-1).amax(dim=-1)


def max_logit_score(logits: Tensor) -> Tensor:
    """Maximum logit (Hendrycks et al., 2022): ``max_c logits_c``."""
    return logits.to(_compute_dtype(logits)).amax(dim=-1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy (Liu et al., 2020): ``T * logsumexp_c(logits_c / T)``."""
    _check_temperature(temperature)
    logits = logits.to(_compute_dtype(logits))
    return temperature * torch.logsumexp(logits / temperature, dim=-1)


def clip_logits(
    image_features: Tensor, id_text_features: Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> Tensor:
    """CLIP logits ``f @ T^T / t`` of L2-normalised image and class-text features, ``[N, C]``."""
    _check_2d("image_features", image_features)
    _check_2d("id_text_features", id_text_features)
    _check_temperature(temperature)
    dtype = _compute_dtype(image_features, id_text_features)
    f, t = _normalise(image_features, dtype), _normalise(id_text_features, dtype)
    return f @ t.T.to(f.device) / temperature


def mcm_score(
    image_features: Tensor, id_text_features: Tensor, temperature: float = DEFAULT_MCM_TEMPERATURE
) -> Tensor:
    """Maximum concept matching (Ming et al., NeurIPS 2022, eq. 3):
    ``max_c softmax_c(cos(f, T_c) / tau)``, with MCM's own ``tau`` (1 in the paper), not the model's
    logit scale: MSP on the model's logits is ``clip_msp_score``."""
    return msp_score(clip_logits(image_features, id_text_features, temperature))


def clip_msp_score(image_features: Tensor, id_text_features: Tensor, logit_scale: float) -> Tensor:
    """MSP of CLIP's own logits: ``max_c softmax_c(logit_scale * cos(f, T_c))``, ``logit_scale`` the
    model's ``exp(model.logit_scale)`` (1 / its learned temperature)."""
    logit_scale = float(logit_scale)
    _check_temperature(logit_scale, "logit_scale")
    return msp_score(clip_logits(image_features, id_text_features, 1.0) * logit_scale)


def _logsumexp_(x: Tensor) -> Tensor:
    """``logsumexp`` over the last dim of finite ``x``, overwriting ``x``: one pass over the largest
    matrix of an evaluation instead of ``torch.logsumexp``'s temporaries (half the score's time)."""
    top = x.amax(dim=-1, keepdim=True)
    return x.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))


def neglabel_score(
    image_features: Tensor,
    id_text_features: Tensor,
    neg_text_features: Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    ngroups: int = 1,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Tensor:
    """NegLabel score (Jiang et al., ICLR 2024) with grouping.

    For one group of negatives ``N_1..N_M``::

        S(f) = sum_k exp(f.T_k/t) / (sum_k exp(f.T_k/t) + sum_m exp(f.N_m/t))
             = sigmoid(logsumexp_k(f.T_k/t) - logsumexp_m(f.N_m/t))

    (the second form is what is computed: stable in log space). Grouping: the negatives are shuffled
    with ``torch.Generator().manual_seed(seed)``, split into ``ngroups`` groups of ``M // ngroups``
    (the remainder is dropped), and the score is the mean of the ``ngroups`` group scores. With
    ``ngroups=1`` no shuffle is needed and all negatives are used. Images are processed
    ``batch_size`` at a time, so memory holds one ``[batch_size, M]`` similarity matrix.
    """
    _check_2d("neg_text_features", neg_text_features)
    num_neg = neg_text_features.shape[0]
    if not isinstance(ngroups, int) or ngroups < 1:
        raise ValueError(f"ngroups must be a positive integer, got {ngroups!r}")
    if num_neg < ngroups:
        raise ValueError(
            f"neglabel needs at least ngroups={ngroups} negative labels, got {num_neg}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_2d("image_features", image_features)
    _check_2d("id_text_features", id_text_features)
    _check_temperature(temperature)
    dtype = _compute_dtype(image_features, id_text_features, neg_text_features)
    device = image_features.device
    pos = _normalise(id_text_features, dtype).to(device)
    neg = _normalise(neg_text_features, dtype).to(device)
    group_size = num_neg // ngroups
    if ngroups > 1:
        perm = torch.randperm(num_neg, generator=torch.Generator().manual_seed(seed))
        neg = neg[perm[: ngroups * group_size].to(device)]
    neg_t = neg.T.contiguous()
    out = []
    for start in range(0, image_features.shape[0], batch_size):
        # 1/t scales the [b, D] features, not the [b, M] similarities
        f = _normalise(image_features[start : start + batch_size], dtype) / temperature
        lse_pos = torch.logsumexp(f @ pos.T, dim=-1)  # [b]
        sims_neg = (f @ neg_t).view(f.shape[0], ngroups, group_size)
        lse_neg = _logsumexp_(sims_neg)  # [b, g]
        out.append(torch.sigmoid(lse_pos[:, None] - lse_neg).mean(dim=-1))
    if not out:
        return torch.empty(0, dtype=dtype, device=device)
    return torch.cat(out)


# --- registry --------------------------------------------------------------------------------------


# what a score may need that no config default stands for: named in the error when it is missing
INPUT_NAMES = {
    "neg_text_features": "negative text features",
    "logit_scale": "the model's logit scale (logit_scale = exp(model.logit_scale))",
}


@dataclass
class ScoreContext:
    """What a score's setup may use, once per run, before the first evaluation: the evaluation
    settings (the config's ``EvalConfig``), the ID class names, a text encoder of the *starting*
    model, a word corpus, negatives mined earlier (a search's preparation step), a cache
    location, and where progress lines go."""

    settings: Any
    classnames: list[str]
    encode: Callable[..., Tensor]
    corpus: Any = None
    negatives: Any = None
    cache: Any = None
    out: Callable[[str], None] | None = print


@dataclass(frozen=True)
class OodScore:
    """A registered OoD score, looked up by name (as OpenOOD's postprocessors are).

    ``fn(image_features, id_text_features, **inputs, **params) -> [N] scores`` where ``params`` are
    the settings it declares (a subset of ``EvalConfig.score_params``) and ``inputs`` come from its
    ``setup``: a score that needs preparation (NegLabel's negatives) has a ``setup(context)`` that
    returns an object with ``inputs(encode) -> dict`` (per evaluation, for the current model) and
    ``info() -> dict``. ``required`` are the ``params`` with no default (MSP's ``logit_scale``: the
    model's, which only the caller knows).
    """

    name: str
    fn: Callable[..., Tensor]
    params: tuple[str, ...]
    inputs: tuple[str, ...] = ()  # what its setup provides, e.g. neg_text_features
    required: tuple[str, ...] = ()  # params that must be given
    setup: Callable[[ScoreContext], Any] | None = None
    description: str = field(default="", compare=False)

    def __call__(
        self, image_features: Tensor, id_text_features: Tensor, **kwargs: object
    ) -> Tensor:
        unknown = sorted(set(kwargs) - set(self.params) - set(self.inputs))
        if unknown:
            raise ConfigError(
                f"unknown parameter '{unknown[0]}' for OoD score '{self.name}' "
                f"(known: {', '.join(sorted(self.params))})"
            )
        for name in (*self.inputs, *self.required):
            if kwargs.get(name) is None:
                raise ConfigError(f"OoD score '{self.name}' needs {INPUT_NAMES[name]}")
        return self.fn(image_features, id_text_features, **kwargs)

    def call_with(
        self,
        image_features: Tensor,
        id_text_features: Tensor,
        params: Mapping[str, object],
        inputs: Mapping[str, Tensor] | None = None,
    ) -> Tensor:
        """Call with the entries of ``params`` this score declares and its setup's ``inputs``."""
        own = {k: v for k, v in params.items() if k in self.params}
        return self(image_features, id_text_features, **(inputs or {}), **own)


def _msp(f, t, logit_scale=None):
    return clip_msp_score(f, t, logit_scale)


def _max_logit(f, t, temperature=DEFAULT_TEMPERATURE):
    return max_logit_score(clip_logits(f, t, temperature))


def _energy(f, t, temperature=DEFAULT_TEMPERATURE):
    return energy_score(clip_logits(f, t, temperature), 1.0)


def _mcm(f, t, mcm_temperature=DEFAULT_MCM_TEMPERATURE):
    return mcm_score(f, t, mcm_temperature)


def _neglabel(f, t, neg_text_features, temperature=DEFAULT_TEMPERATURE, ngroups=1, seed=0):
    return neglabel_score(f, t, neg_text_features, temperature, ngroups, seed)


SCORES: dict[str, OodScore] = {
    s.name: s
    for s in (
        OodScore(
            "msp",
            _msp,
            ("logit_scale",),
            required=("logit_scale",),
            description="max softmax of the model's logits (its learned logit scale)",
        ),
        OodScore("max_logit", _max_logit, ("temperature",), description="max CLIP logit"),
        OodScore("energy", _energy, ("temperature",), description="logsumexp of the CLIP logits"),
        OodScore(
            "mcm",
            _mcm,
            ("mcm_temperature",),
            description="maximum concept matching: max softmax of cosines / mcm_temperature",
        ),
        OodScore(
            "neglabel",
            _neglabel,
            ("temperature", "ngroups", "seed"),
            inputs=("neg_text_features",),
            setup=setup_neglabel,
            description="NegLabel with negative labels mined from a word corpus",
        ),
    )
}


def get_score(name: str) -> OodScore:
    """The registered score called ``name``; an unknown name is a ``ConfigError``."""
    try:
        return SCORES[name]
    except KeyError:
        raise ConfigError(
            f"unknown OoD score '{name}' (known: {', '.join(sorted(SCORES))})"
        ) from None
