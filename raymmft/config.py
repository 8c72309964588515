"""One YAML file → validated, typed configuration (pydantic).

Sections: ``model``, ``data``, ``train``, ``eval``, ``search``, ``resources``, ``storage``. Any field
can be searched: ``search.space`` maps dotted field paths (``train.lam``) to a distribution
(``{loguniform: [1e-4, 1e-1]}``, ``uniform``, ``choice``, ``randint``) or a fixed value.
``--set a.b=value`` overrides a field from the command line (the value is parsed as YAML).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raymmft.data import DataConfig
from raymmft.errors import ConfigError, StorageError
from raymmft.storage import Location, check_name

SCORE_NAMES = ("energy", "max_logit", "mcm", "msp", "neglabel")
DISTRIBUTIONS = ("loguniform", "uniform", "choice", "randint", "quniform")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    arch: str = "raymmft-tiny"
    pretrained: str | None = Field(
        None, description="None (random init), an open_clip tag, or a local weights file"
    )
    temperature: float | None = Field(
        0.07, description="initial tau; logit_scale = log(1/tau); None keeps the weights' value"
    )
    learn_temperature: bool = True

    @field_validator("temperature")
    @classmethod
    def _positive(cls, v):
        if v is not None and not v > 0:
            raise ValueError(f"must be > 0, got {v}")
        return v


class TrainConfig(_Section):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch over all workers")
    lr: float = 1e-3
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    lam: float = Field(0.0, description="CMA weight lambda; 0 is FLYP")
    template: str = "a photo of a {}."
    augment: bool = Field(True, description="the model's train transform (random crops) vs eval")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap an epoch (quick runs)")
    log_every_steps: int = Field(10, ge=1)
    seed: int = 0

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v):
        if not v > 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

    @field_validator("lam")
    @classmethod
    def _lam_nonnegative(cls, v):
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @field_validator("template")
    @classmethod
    def _one_slot(cls, v):
        if v.count("{}") != 1:
            raise ValueError(f"must contain exactly one '{{}}', got {v!r}")
        return v


class NegLabelConfig(_Section):
    corpus: str = Field(
        "wordnet", description="'wordnet', 'world' (built-in world concepts), or a file"
    )
    eta: float = Field(0.95, gt=0, le=1)
    keep_fraction: float = Field(0.15, gt=0, le=1)
    max_negatives: int | None = Field(None, ge=1)
    ngroups: int = Field(1, ge=1)
    exclude_categories: list[str] = []
    remine_each_eval: bool = False
    seed: int = 0


class EvalConfig(_Section):
    scores: list[str] = ["neglabel", "mcm", "msp", "energy"]
    ood_score: str = Field("neglabel", description="the score that defines ood_auroc")
    temperature: float = Field(0.01, gt=0)
    templates: list[str] = ["a photo of a {}."]
    every_n_epochs: int = Field(1, ge=1)
    batch_size: int = Field(256, ge=1)
    neglabel: NegLabelConfig = NegLabelConfig()

    @field_validator("scores")
    @classmethod
    def _known_scores(cls, v):
        for name in v:
            if name not in SCORE_NAMES:
                raise ValueError(f"unknown OoD score '{name}' (known: {', '.join(SCORE_NAMES)})")
        if not v:
            raise ValueError("at least one score is needed")
        return v

    @model_validator(mode="after")
    def _primary_is_computed(self):
        if self.ood_score not in SCORE_NAMES:
            raise ValueError(
                f"ood_score: unknown OoD score '{self.ood_score}' (known: {', '.join(SCORE_NAMES)})"
            )
        if self.ood_score not in self.scores:
            self.scores = [*self.scores, self.ood_score]
        return self


class Objective(_Section):
    metric: str
    mode: Literal["max", "min"] = "max"


class AshaConfig(_Section):
    metric: str = "score"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SearchConfig(_Section):
    space: dict[str, Any] = {
        "train.lam": {"loguniform": [1e-4, 1e-1]},
        "model.temperature": {"uniform": [0.01, 0.1]},
        "train.lr": {"loguniform": [1e-4, 3e-3]},
    }
    initial_points: list[dict[str, Any]] = Field(
        [],
        description="configurations tried first, e.g. the paper's defaults: {train.lam: 0.001, ...}",
    )
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    scheduler: Literal["asha", "fifo"] = "asha"
    objectives: list[Objective] = [Objective(metric="id_acc"), Objective(metric="ood_auroc")]
    score_weight: float = Field(
        0.5, ge=0, description="w in score = ood_auroc + w * id_acc (ASHA's scalar)"
    )
    asha: AshaConfig = AshaConfig()
    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="None: derived from the cluster"
    )
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _check_space(cls, space):
        if not space:
            raise ValueError("search space is empty: give at least one field to search")
        for key, spec in space.items():
            _check_distribution(key, spec)
        return space

    @model_validator(mode="after")
    def _points_cover_space(self):
        searched = {k for k, v in self.space.items() if isinstance(v, dict)}
        for i, point in enumerate(self.initial_points):
            if set(point) != searched:
                raise ValueError(
                    f"initial_points[{i}] must give exactly the searched fields "
                    f"{sorted(searched)}, got {sorted(point)}"
                )
        return self

    @field_validator("objectives")
    @classmethod
    def _some_objective(cls, v):
        if not v:
            raise ValueError("at least one objective is needed")
        return v


class ResourcesConfig(_Section):
    num_workers: int = Field(2, ge=1, description="Ray Train workers per trial")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    max_failures: int = Field(1, ge=0, description="worker-group restarts per trial")


class StorageConfig(_Section):
    path: str = Field(
        "./raymmft_results", description="a local path or a URI: s3://, gs://, file:// (pyarrow.fs)"
    )
    shared: bool = Field(
        False, description="a local path that is the same shared filesystem (NFS) on every node"
    )
    name: str | None = Field(None, description="experiment name; default: from the config file")

    @field_validator("path")
    @classmethod
    def _location(cls, v):
        try:  # a URI that cannot be parsed fails here, not on the cluster
            Location.parse(v)
        except StorageError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("name")
    @classmethod
    def _one_segment(cls, v):
        return v if v is None else check_name(v)

    @property
    def location(self) -> Location:
        """Where experiments are kept (local paths made absolute)."""
        return Location.parse(self.path)

    @property
    def experiment(self) -> Location:
        """This experiment's directory: ``<path>/<name>``, scheme and query kept."""
        if self.name is None:
            raise ConfigError("storage.name is not set")
        return self.location.join(self.name)


class Config(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _cross_checks(self):
        ood_metrics = {o.metric for o in self.search.objectives} | {self.search.asha.metric}
        needs_ood = any(m.startswith("ood_") or m == "score" for m in ood_metrics)
        if needs_ood and not self.data.ood_val:
            raise ValueError(
                "data.ood_val is empty but the search objective needs OoD validation sets "
                "(ood_auroc); add at least one OoD validation set"
            )
        for key in self.search.space:
            _check_field_path(self, key)
        return self

    def to_dict(self) -> dict:
        """Plain data that validates back into the same config (what travels to Ray workers).

        Only explicitly set fields are kept: dataset specs reject options that do not apply to
        their kind, so defaults of other kinds must not be written out.
        """
        return self.model_dump(mode="json", exclude_unset=True)


def _check_distribution(key: str, spec: Any) -> None:
    """A search-space entry is a fixed value or ``{dist: args}``."""
    if not isinstance(spec, dict):
        return
    if len(spec) != 1:
        raise ValueError(f"{key}: give one distribution, got {sorted(spec)}")
    ((dist, args),) = spec.items()
    if dist not in DISTRIBUTIONS:
        raise ValueError(
            f"{key}: unknown distribution '{dist}' (known: {', '.join(DISTRIBUTIONS)})"
        )
    if dist == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"{key}: choice needs a non-empty list")
        return
    if not (isinstance(args, list) and len(args) in (2, 3) and all(_is_number(a) for a in args)):
        raise ValueError(f"{key}: {dist} needs [low, high], got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ValueError(f"{key}: {dist} needs low < high, got [{low}, {high}]")
    if dist == "loguniform" and low <= 0:
        raise ValueError(f"{key}: loguniform needs low > 0, got {low}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_field_path(cfg: BaseModel, path: str) -> None:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ValueError(f"search.space: '{path}' is not a config field")
        node = getattr(node, part)


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required field missing"
    elif "input" in first and first["type"].endswith(("_type", "_parsing", "literal_error")):
        msg = f"{msg}, got {first['input']!r}"
    return f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"


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


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.lr=1e-4", ...]`` → ``[("train.lr", 0.0001), ...]`` (values parsed as YAML)."""
    out = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects FIELD=VALUE, got '{item}'")
        try:
            out.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {value!r}: {exc}") from exc
    return out


def validate_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_config(
    path: str | Path, overrides: list[str] | None = None, *, fields: dict[str, Any] | None = None
) -> Config:
    """Read a YAML config, apply ``--set`` overrides and ``fields`` (``{dotted.field: value}``
    from dedicated flags such as ``--name``), validate; errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error at{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for key, value in [*parse_overrides(overrides), *(fields or {}).items()]:
        set_path(raw, key, value)
    cfg = validate_config(raw, str(path))
    if cfg.storage.name is None:
        cfg.storage.name = path.stem
    return cfg


EXPERIMENT_CONFIG_FILE = "raymmft_config.json"


def load_experiment_config(experiment: str | Location) -> Config:
    """The config saved in an experiment directory (a local path or a URI), with its storage
    pointing at that directory."""
    import json

    try:
        exp = Location.parse(experiment)
        path = exp.join(EXPERIMENT_CONFIG_FILE)
        found = path.is_file()
    except StorageError as exc:
        raise ConfigError(f"cannot resume {experiment}: {exc}") from None
    if not found:
        raise ConfigError(
            f"cannot resume {experiment}: no {EXPERIMENT_CONFIG_FILE} there (not a raymmft experiment)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    cfg = validate_config(raw, str(path))
    cfg.storage.path = exp.parent.uri
    cfg.storage.name = exp.name
    return cfg


def apply_trial_params(cfg: Config, params: dict[str, Any]) -> Config:
    """The configuration of one trial: ``cfg`` with the sampled ``{dotted.path: value}`` set."""
    raw = cfg.to_dict()
    for key, value in params.items():
        set_path(raw, key, value)
    return validate_config(raw, "trial parameters")
