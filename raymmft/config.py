"""One YAML file → validated, typed configuration (pydantic).

Sections: ``model``, ``data``, ``train``, ``eval``, ``search``, ``resources``, ``storage``. Any field
can be searched: ``search.space`` maps dotted field paths (``train.lam``) to a distribution
(``{loguniform: [1e-4, 1e-1]}``, ``uniform``, ``choice``, ``randint``) or a fixed value.
``--set a.b=value`` overrides a field from the command line (the value is parsed as YAML).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raymmft.data import DataConfig
from raymmft.errors import ConfigError, StorageError
from raymmft.ood.corpus import check_categories
from raymmft.storage import Location, check_name
from raymmft.text import check_template

# A prompt template: exactly one "{}" where the class name (or NegLabel word) goes.
Template = Annotated[str, AfterValidator(check_template)]
# what an evaluation measures per OoD set and score (docs/method.md, "Metrics")
OOD_METRICS: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out")
# what every report of a trial carries besides the evaluation (raymmft.loop)
TRAINING_METRICS: tuple[str, ...] = (
    "epoch",
    "step",
    "world_size",
    "train_loss",
    "train_contrastive",
    "train_regularizer",
    "lr",
    "logit_scale",
    "images_per_s",
    "train_skipped",
    "time/train_s",
    "time/eval_s",
    "time/checkpoint_s",
    "time/startup_s",
)
# CLIP clamps the learned logit scale 1/tau to [1, 100] after every step (as open_clip's training
# does); a temperature outside [0.01, 1] would be changed without a word, so it is refused.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0
# a seed is what every generator takes: torch, numpy and Python's random all accept [0, 2**32)
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# the sections that belong to the whole search, not to one trial: they cannot be searched
NOT_SEARCHABLE = ("search", "storage")
# validation context of one candidate value of a searched field (Config._check_searched)
CANDIDATE = "raymmft.candidate"


class _Section(BaseModel):
    # every float is finite: .inf and .nan are refused wherever a number is read
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, v, info):
        """``epochs: true`` would be read as 1 (pydantic's lax mode): a number field takes
        numbers."""
        if isinstance(v, bool):
            annotation = cls.model_fields[info.field_name].annotation
            takes = set(typing.get_args(annotation)) or {annotation}
            if bool not in takes and takes & {int, float}:
                raise ValueError(f"must be a number, got {str(v).lower()}")
        return v


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


def check_seed(value: int, flag: str) -> int:
    """A seed given by a command-line flag, by the rule of the config's ``Seed`` fields."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be in [0, 2**32 - 1], got {value}")
    return value


def _first_repeat(items: list) -> Any:
    """The first item that comes again later in ``items`` (``None`` when each is there once)."""
    return next((x for i, x in enumerate(items) if x in items[:i]), None)


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
    def _in_clamp_range(cls, v):
        if v is not None and not MIN_TEMPERATURE <= v <= MAX_TEMPERATURE:
            raise ValueError(
                f"must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE:g}] (CLIP clamps the logit scale "
                f"1/tau to [1, 100]), got {v}"
            )
        return v


class TrainConfig(_Section):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch over all workers")
    lr: float = 1e-3
    weight_decay: float = Field(0.1, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    lam: float = Field(0.0, description="CMA weight lambda; 0 is FLYP")
    template: Template = "a photo of a {}."
    augment: bool = Field(True, description="the model's train transform (random crops) vs eval")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap an epoch (quick runs)")
    seed: Seed = 0

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


class NegLabelConfig(_Section):
    """NegLabel (Jiang et al., ICLR 2024; docs/method.md): mining the negative labels and scoring
    with them. The one declaration of these parameters: mining, scoring, ``raymmft evaluate``'s
    flags and preflight all read this section."""

    corpus: str = Field(
        "wordnet",
        description="'wordnet', 'world' (the built-in world's concepts), 'world+wordnet[:N]', or "
        "a text file with one word per line",
    )
    eta: float = Field(
        0.95, ge=0, le=1, description="quantile of a word's similarities to the ID classes"
    )
    keep_fraction: float = Field(
        0.15, gt=0, le=1, description="fraction of nouns and of adjectives kept (least ID-like)"
    )
    max_negatives: int | None = Field(None, ge=1, description="cap on the kept words")
    ngroups: int = Field(1, ge=1, description="grouping: score against g groups, averaged")
    exclude_categories: list[str] = Field([], description="WordNet categories, e.g. noun.animal")
    noun_template: Template = "a photo of a {}."
    adj_template: Template = "This is a {} photo."
    remine_each_eval: bool = Field(False, description="mine again with the current model each time")
    seed: Seed = Field(0, description="seed of the grouping shuffle")

    @field_validator("exclude_categories")
    @classmethod
    def _known_categories(cls, v):
        try:
            check_categories(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v


def _check_score(name: str) -> str:
    from raymmft.ood.scores import SCORES  # the registry is the list of score names

    if name not in SCORES:
        raise ValueError(f"unknown OoD score '{name}' (known: {', '.join(sorted(SCORES))})")
    return name


ScoreName = Annotated[str, AfterValidator(_check_score)]


class EvalConfig(_Section):
    scores: list[ScoreName] = Field(["neglabel", "mcm", "msp", "energy"], min_length=1)
    ood_score: ScoreName = Field("neglabel", description="the score that defines ood_auroc")
    temperature: float = Field(
        0.01, gt=0, description="t in f.T / t of the scores on cosine logits (energy, max_logit, neglabel)"
    )
    mcm_temperature: float = Field(
        1.0, gt=0, description="MCM's own softmax temperature (1.0 as in Ming et al., 2022)"
    )
    templates: list[Template] = Field(["a photo of a {}."], min_length=1)
    every_n_epochs: int = Field(1, ge=1)
    batch_size: int = Field(256, ge=1)
    neglabel: NegLabelConfig = NegLabelConfig()

    @field_validator("scores")
    @classmethod
    def _each_score_once(cls, v):
        twice = _first_repeat(v)
        if twice is not None:
            raise ValueError(f"score '{twice}' given twice")
        return v

    @model_validator(mode="after")
    def _primary_is_computed(self):
        if self.ood_score not in self.scores:
            self.scores = [*self.scores, self.ood_score]
        return self

    @property
    def score_params(self) -> dict[str, Any]:
        """The parameters every score may take (each takes the ones it declares)."""
        return {
            "temperature": self.temperature,
            "mcm_temperature": self.mcm_temperature,
            "ngroups": self.neglabel.ngroups,
            "seed": self.neglabel.seed,
        }


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
    seed: Seed = 0
    optuna_storage: str | None = Field(
        None,
        description="an Optuna RDB URL (sqlite:///..., postgresql://...) for the study; default: "
        "<experiment>/optuna.journal on local or shared storage, none on object storage",
    )

    @field_validator("optuna_storage")
    @classmethod
    def _rdb_url(cls, v):
        if v is not None and "://" not in v:
            raise ValueError(f"must be an RDB URL such as sqlite:///study.db, got {v!r}")
        return v

    @field_validator("space")
    @classmethod
    def _check_space(cls, space):
        if not space:
            raise ValueError("search space is empty: give at least one field to search")
        out = {}
        for key, spec in space.items():
            dist = Distribution.parse(key, spec)
            out[key] = spec if dist is None else {dist.name: list(dist.args)}
        return out

    @property
    def distributions(self) -> dict[str, Distribution]:
        """``{dotted.field: Distribution}`` of the searched fields (fixed values left out)."""
        out = {k: Distribution.parse(k, v) for k, v in self.space.items()}
        return {k: d for k, d in out.items() if d is not None}

    @model_validator(mode="after")
    def _points_cover_space(self):
        searched = set(self.distributions)
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
        twice = _first_repeat([o.metric for o in v])
        if twice is not None:
            raise ValueError(f"metric '{twice}' given twice")
        return v


class ResourcesConfig(_Section):
    num_workers: int = Field(2, ge=1, description="Ray Train workers per trial")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    max_failures: int = Field(1, ge=0, description="worker-group restarts per trial")

    @model_validator(mode="after")
    def _gpu_share(self):
        if self.use_gpu and not self.gpus_per_worker > 0:
            raise ValueError(
                f"resources.use_gpu is true but resources.gpus_per_worker is "
                f"{self.gpus_per_worker}; give each worker a GPU share > 0, or set use_gpu: false"
            )
        return self


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
    def _cross_checks(self, info: ValidationInfo):
        ood_metrics = {o.metric for o in self.search.objectives} | {self.search.asha.metric}
        needs_ood = any(m.startswith("ood_") or m == "score" for m in ood_metrics)
        if needs_ood and not self.data.ood_val:
            raise ValueError(
                "data.ood_val is empty but the search objective needs OoD validation sets "
                "(ood_auroc); add at least one OoD validation set"
            )
        for key in self.search.space:
            _check_field_path(self, key)
            if key.split(".")[0] in NOT_SEARCHABLE:
                raise ValueError(
                    f"search.space: '{key}' cannot be searched: the {key.split('.')[0]} section "
                    "belongs to the whole search, not to one trial"
                )
        known = self.reported_metrics()
        checked = [
            (f"search.objectives[{i}].metric", o.metric)
            for i, o in enumerate(self.search.objectives)
        ]
        if self.search.scheduler == "asha":
            checked.append(("search.asha.metric", self.search.asha.metric))
        for where, metric in checked:
            if metric not in known:
                some = ["id_acc", "ood_auroc", "score", "ood_fpr95"]
                some += sorted(m for m in known if m.count("/") == 2)[:1]
                raise ValueError(
                    f"{where}: '{metric}' is not a metric trials report (e.g. {', '.join(some)}, "
                    f"or any key of a trial's result.json)"
                )
        if (info.context or {}).get(CANDIDATE):
            return self  # one value of a searched field, being checked (_check_searched)
        for key, spec in self.search.space.items():
            dist = Distribution.parse(key, spec) or Distribution("fixed", (spec,))
            self._check_searched(key, dist)
        self._check_initial_points()
        return self

    def _check_searched(self, key: str, dist: Distribution) -> None:
        """Every value ``dist`` can give at its extremes validates as the field it searches."""
        *parents, leaf = key.split(".")
        owner: Any = self
        for part in parents:
            owner = getattr(owner, part)
        annotation = type(owner).model_fields[leaf].annotation
        value = getattr(owner, leaf)
        if isinstance(value, BaseModel):
            first = next(iter(type(value).model_fields))
            raise ValueError(
                f"search.space: '{key}' is a section, not a field; search its fields (e.g. "
                f"{key}.{first})"
            )
        takes = set(typing.get_args(annotation)) or {annotation}
        if int in takes and float not in takes and dist.name != "fixed" and not dist.integer:
            raise ValueError(
                f"search.space: {key}: {dist.name} gives non-integer values but {key} takes "
                f"integers; use randint or choice"
            )
        for candidate in dist.extremes():
            refusal = self._refusal(key, candidate)
            if refusal is not None:
                gives = (
                    f"the fixed value {candidate!r} is refused:"
                    if dist.name == "fixed"
                    else f"{dist.name} {list(dist.args)} can give {candidate!r}, but"
                )
                raise ValueError(f"search.space: {key}: {gives} {refusal}")

    def _check_initial_points(self) -> None:
        """Every initial point lies in its fields' distributions and validates as a trial."""
        space = self.search.distributions
        for i, point in enumerate(self.search.initial_points):
            for key, value in point.items():
                dist = space[key]
                if not dist.contains(value):
                    raise ValueError(
                        f"search.initial_points[{i}]: {key} = {value!r} is outside its "
                        f"distribution {{{dist.name}: {list(dist.args)}}}"
                    )
                refusal = self._refusal(key, value)
                if refusal is not None:
                    raise ValueError(f"search.initial_points[{i}]: {key} = {value!r}: {refusal}")

    def _refusal(self, key: str, value: Any) -> str | None:
        """Why this config with ``key`` set to ``value`` does not validate (``"field: reason"``),
        or ``None``."""
        raw = self.to_dict()
        set_path(raw, key, value)
        raw["search"] = {**raw.get("search", {}), "space": {key: value}, "initial_points": []}
        try:
            Config.model_validate(raw, context={CANDIDATE: True})
        except ValidationError as err:
            loc, msg = describe_error(err)
            return f"{loc}: {msg}"
        return None

    def reported_metrics(self) -> set[str]:
        """The names of what every trial reports (``raymmft.loop``): the training figures, the
        time budget, and every evaluation metric of the configured scores and OoD val sets."""
        from raymmft.data.spec import set_names

        names = set_names(self.data.ood_val)
        out = set(TRAINING_METRICS) | {"id_acc", "modality_gap", "score"}
        for metric in OOD_METRICS:
            out |= {f"ood_{metric}", *(f"ood_{metric}/{n}" for n in names)}
            for score in self.eval.scores:
                out |= {f"{score}/ood_{metric}", *(f"{score}/ood_{metric}/{n}" for n in names)}
        return out

    def to_dict(self) -> dict:
        """Plain data that validates back into the same config (what travels to Ray workers).

        Only explicitly set fields are kept: dataset specs reject options that do not apply to
        their kind, so defaults of other kinds must not be written out.
        """
        return self.model_dump(mode="json", exclude_unset=True)


def _check_field_path(cfg: BaseModel, path: str) -> None:
    node: Any = cfg
    for part in path.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise ValueError(f"search.space: '{path}' is not a config field")
        node = getattr(node, part)


def describe_error(err: ValidationError) -> tuple[str, str]:
    """The first error of a validation as ``(field, message)``: ``eval.scores[1]`` and what is
    wrong, with the value given when the message does not say it already."""
    first = err.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required field missing"
    elif first["type"] != "value_error" and not isinstance(value, (dict, list, BaseModel)):
        msg = f"{msg}, got {value!r}"
    return loc, msg


def _format_error(source: str, err: ValidationError) -> str:
    loc, msg = describe_error(err)
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
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"--set {key}: cannot parse value {value!r} as YAML: {problem}"
            ) from None
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last one without a word). Merge keys (``<<: *anchor``) still override as YAML says."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the safe loader's own check says what is wrong
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' given twice in one mapping", key_node.start_mark
                )
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


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
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}, column {column})"
        ) from None
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)
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


def check_searchable(cfg: Config, overrides: list[str] | None) -> None:
    """What a search needs beyond a valid config: a distribution to draw from, and no ``--set`` on
    a field it draws (``raymmft train`` runs the fixed values and needs neither)."""
    if not cfg.search.distributions:
        raise ConfigError(
            f"search.space gives only fixed values ({', '.join(cfg.search.space)}): give at least "
            "one field a distribution ({uniform: [low, high]}, {choice: [...]}, ...), or run the "
            "fixed values with raymmft train"
        )
    check_not_searched(cfg, overrides)


def check_not_searched(cfg: Config, overrides: list[str] | None) -> None:
    """A search draws its searched fields: a ``--set`` on one would be overridden without a word,
    so it is an error that names the field (``raymmft train`` uses the fixed values, and allows it)."""
    searched = list(cfg.search.distributions)
    for key, _ in parse_overrides(overrides):
        if any(key == s or s.startswith(key + ".") or key.startswith(s + ".") for s in searched):
            raise ConfigError(
                f"--set {key}: the field is searched (search.space); give its range there, or "
                f"drop it from search.space to fix its value"
            )


EXPERIMENT_CONFIG_FILE = "raymmft_config.json"


def load_experiment_config(experiment: str | Location) -> Config:
    """The config saved in an experiment directory (a local path or a URI), with its storage
    pointing at that directory (``raymmft.results.experiment.check_resumable`` first finds out
    that the directory is a started search that may be resumed)."""
    import json

    try:
        exp = Location.parse(experiment)
        raw = json.loads(exp.join(EXPERIMENT_CONFIG_FILE).read_text())
    except StorageError as exc:
        raise ConfigError(f"cannot resume {experiment}: {exc}") from None
    except json.JSONDecodeError as exc:
        path = exp.join(EXPERIMENT_CONFIG_FILE)
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    cfg = validate_config(raw, str(exp.join(EXPERIMENT_CONFIG_FILE)))
    cfg.storage.path = exp.parent.uri
    cfg.storage.name = exp.name
    return cfg


def apply_trial_params(cfg: Config, params: dict[str, Any]) -> Config:
    """The configuration of one trial: ``cfg`` with the sampled ``{dotted.path: value}`` set."""
    raw = cfg.to_dict()
    for key, value in params.items():
        set_path(raw, key, value)
    return validate_config(raw, "trial parameters")
