"""The search-space language of a config: ``search.space`` maps dotted field paths
(``train.lam``) to a distribution or a fixed value, and this module is its one home. It parses a
distribution (``Distribution.parse``), checks a value against it, and converts it to Ray Tune's
samplers (``tune_param_space``) and to Optuna's distributions (``Distribution.to_optuna``).

Distributions: ``{loguniform: [low, high]}``, ``{uniform: [low, high]}``,
``{quniform: [low, high, q]}``, ``{randint: [low, high]}`` (high excluded, as Tune's) and
``{choice: [v1, v2, ...]}``; anything else is a fixed value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from raymmft.errors import ConfigError


@dataclass(frozen=True)
class Distribution:
    """One searched field's distribution, as the config writes it: ``{loguniform: [low, high]}``,
    ``{uniform: [low, high]}``, ``{quniform: [low, high, q]}``, ``{randint: [low, high]}`` (high
    excluded, as Tune's) or ``{choice: [v1, v2, ...]}``."""

    name: str
    args: tuple

    NAMES = ("loguniform", "uniform", "choice", "randint", "quniform")

    @classmethod
    def parse(cls, key: str, spec: Any) -> Distribution | None:
        """The distribution of ``spec``; ``None`` when ``spec`` is a fixed value."""
        if not isinstance(spec, dict):
            return None
        if len(spec) != 1:
            raise ValueError(f"{key}: give one distribution, got {sorted(spec)}")
        ((name, args),) = spec.items()
        if name not in cls.NAMES:
            raise ValueError(
                f"{key}: unknown distribution '{name}' (known: {', '.join(cls.NAMES)})"
            )
        if name == "choice":
            if not isinstance(args, list) or not args:
                raise ValueError(f"{key}: choice needs a non-empty list")
            return cls(name, tuple(args))
        count = "[low, high, q]" if name == "quniform" else "[low, high]"
        sizes = (2, 3) if name == "quniform" else (2,)
        if isinstance(args, list):  # YAML reads 1e-4 (no dot) as a string; pydantic takes it too
            args = [_number_text(a) for a in args]
        if not (isinstance(args, list) and len(args) in sizes and all(map(_is_number, args))):
            raise ValueError(f"{key}: {name} needs {count} (finite numbers), got {args!r}")
        low, high = args[0], args[1]
        if not low < high:
            raise ValueError(f"{key}: {name} needs low < high, got [{low}, {high}]")
        if name == "loguniform" and low <= 0:
            raise ValueError(f"{key}: loguniform needs low > 0, got {low}")
        if name == "randint" and not all(float(a).is_integer() for a in args):
            raise ValueError(f"{key}: randint needs integer bounds, got {args!r}")
        if name == "quniform" and len(args) == 3 and not args[2] > 0:
            raise ValueError(f"{key}: quniform needs q > 0, got {args[2]}")
        return cls(name, tuple(args))

    @property
    def integer(self) -> bool:
        """Whether every value it gives is an integer (an int field takes nothing else)."""
        if self.name == "randint":
            return True
        return self.name in ("choice", "fixed") and all(
            isinstance(v, int) and not isinstance(v, bool) for v in self.args
        )

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one the distribution can give (an initial point must be)."""
        if self.name in ("choice", "fixed"):
            return value in self.args
        value = _number_text(value)
        if not _is_number(value):
            return False
        if self.name == "randint":
            return float(value).is_integer() and self.args[0] <= value < self.args[1]
        return self.args[0] <= value <= self.args[1]

    def extremes(self) -> list:
        """The values that bound what it can give: both bounds, or every choice (``randint``'s
        largest is ``high - 1``)."""
        if self.name in ("choice", "fixed"):
            return list(self.args)
        if self.name == "randint":
            return [int(self.args[0]), int(self.args[1]) - 1]
        return [self.args[0], self.args[1]]

    def to_tune(self):
        """This distribution as a Ray Tune sampler."""
        from ray import tune

        a = self.args
        if self.name == "loguniform":
            return tune.loguniform(a[0], a[1])
        if self.name == "uniform":
            return tune.uniform(a[0], a[1])
        if self.name == "quniform":
            return tune.quniform(a[0], a[1], a[2] if len(a) > 2 else 1.0)
        if self.name == "randint":
            return tune.randint(int(a[0]), int(a[1]))
        return tune.choice(list(a))

    def to_optuna(self):
        """This distribution as an Optuna distribution (what a study's trials are told it was;
        ``quniform``'s grid is Tune's, so Optuna sees its range)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        a = self.args
        if self.name == "choice":
            return CategoricalDistribution(list(a))
        if self.name == "randint":
            return IntDistribution(int(a[0]), int(a[1]) - 1)
        return FloatDistribution(a[0], a[1], log=self.name == "loguniform")


def distributions_of(space: dict[str, Any]) -> dict[str, Distribution]:
    """``{dotted.field: Distribution}`` of a ``search.space`` (fixed values left out)."""
    out = {k: Distribution.parse(k, v) for k, v in space.items()}
    return {k: d for k, d in out.items() if d is not None}


def tune_param_space(space: dict[str, Any]) -> dict:
    """Tune's nested param space (``{"train": {"lam": tune.loguniform(...)}}``) of a
    ``search.space``; a fixed value stays as it is."""
    out: dict = {}
    for key, spec in space.items():
        dist = Distribution.parse(key, spec)
        set_path(out, key, spec if dist is None else dist.to_tune())
    return out


def optuna_name(key: str) -> str:
    """The name Tune's ``OptunaSearch`` gives the parameter of a dotted field (``train/lam``)."""
    return key.replace(".", "/")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number_text(x: Any) -> Any:
    """``"1e-4"`` → ``0.0001``: a string that spells a number is that number; anything else is
    returned as it is (and refused by the caller)."""
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return x
    return x


def flatten_fields(d: dict | None, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lam": 0.1}}`` → ``{"train.lam": 0.1}`` (the inverse of ``set_path``)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def set_path(raw: dict, path: str, value: Any) -> None:
    """Set ``raw['a']['b'] = value`` for ``path = 'a.b'``, creating sections as needed."""
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{path}': '{part}' is not a section")
        node = child
    node[leaf] = value
