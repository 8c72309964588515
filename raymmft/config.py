"""The configuration schema: typed, validated sections (pydantic), validated once and then only
read (every section is frozen).

Sections: ``model``, ``data``, ``train``, ``eval``, ``search``, ``resources``, ``storage``. Any field
of a trial can be searched: ``search.space`` maps dotted field paths (``train.lam``) to a
distribution (``raymmft.search_space``). Relative local paths (datasets, classnames files, the
NegLabel corpus file, weights, storage) are made absolute against the ``base_dir`` given to
``validate_config`` (the command's working directory), where they enter. Reading the YAML file and
``--set`` is ``raymmft.config_file``; what trials report and the objectives are
``raymmft.objectives``.
"""

from __future__ import annotations

import os
import typing
from typing import Annotated, Any, Literal

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
from raymmft.data.spec import BASE_DIR
from raymmft.errors import ConfigError, StorageError
from raymmft.objectives import OOD_METRICS, Objectives, reported_metrics
from raymmft.ood.corpus import check_categories
from raymmft.search_space import Distribution, distributions_of, set_path
from raymmft.storage import Location, check_name, resolve_local
from raymmft.text import check_template

# A prompt template: exactly one "{}" where the class name (or NegLabel word) goes.
Template = Annotated[str, AfterValidator(check_template)]
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
# NegLabel corpora known by name (raymmft.neglabel_corpus); any other value is a word file
NAMED_CORPORA = ("wordnet", "world")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
__all__ = ["OOD_METRICS", "Config", "validate_config"]


def local_path(value: str | None, info: ValidationInfo) -> str | None:
    """``value`` made absolute against the validation's ``BASE_DIR`` (when it has one)."""
    if value is None:
        return None
    return resolve_local(value, (info.context or {}).get(BASE_DIR))


class _Section(BaseModel):
    # every float is finite: .inf and .nan are refused wherever a number is read
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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


def check_seed(value: int, flag: str) -> int:
    """A seed given by a command-line flag, by the rule of the config's ``Seed`` fields."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{flag} must be in [0, 2**32 - 1], got {value}")
    return value


def _first_repeat(items: list) -> Any:
    """The first item that comes again later in ``items`` (``None`` when each is there once)."""
    return next((x for i, x in enumerate(items) if x in items[:i]), None)


class ModelConfig(_Section):
    arch: str = Field(
        "raymmft-tiny", description="an open_clip architecture (ViT-B-16, ...) or a raymmft one"
    )
    pretrained: str | None = Field(
        None, description="None (random init), an open_clip tag, or a local weights file"
    )
    temperature: float | None = Field(
        0.07, description="initial tau; logit_scale = log(1/tau); None keeps the weights' value"
    )
    learn_temperature: bool = Field(True, description="train the logit scale with the weights")
    interpolate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="WiSE-FT: the weights evaluated at the end are (1 - a) * start + a * trained "
        "(None: the trained weights); best.yaml sets it when the choice is interpolated",
    )

    @field_validator("pretrained")
    @classmethod
    def _weights_file_absolute(cls, v, info: ValidationInfo):
        """A weights file (a path, or a name with a weights suffix) is made absolute; a tag is not
        a path."""
        if v is None or (os.sep not in v and not v.endswith(WEIGHT_SUFFIXES)):
            return v
        return local_path(v, info)

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
    epochs: int = Field(2, ge=1, description="passes over the ID train set per trial")
    batch_size: int = Field(64, ge=1, description="global batch over all workers")
    lr: float = Field(1e-3, description="AdamW peak learning rate")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps before the schedule")
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="learning-rate schedule after warm-up"
    )
    lam: float = Field(0.0, description="CMA weight lambda; 0 is FLYP")
    template: Template = Field(
        "a photo of a {}.", description="the class prompt of a training pair, one {}"
    )
    augment: bool = Field(True, description="the model's train transform (random crops) vs eval")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision of the forward pass"
    )
    grad_checkpointing: bool = Field(False, description="trade compute for activation memory")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap an epoch (quick runs)")
    seed: Seed = Field(0, description="seed of the start, the data order and the augmentation")

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
    noun_template: Template = Field("a photo of a {}.", description="prompt of a noun")
    adj_template: Template = Field("This is a {} photo.", description="prompt of an adjective")
    remine_each_eval: bool = Field(False, description="mine again with the current model each time")
    seed: Seed = Field(0, description="seed of the grouping shuffle")

    @field_validator("corpus")
    @classmethod
    def _word_file_absolute(cls, v, info: ValidationInfo):
        if v.split("+")[0].split(":")[0] in NAMED_CORPORA:
            return v
        return local_path(v, info)

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
    scores: list[ScoreName] = Field(
        ["neglabel", "mcm", "msp", "energy"],
        min_length=1,
        description="post-hoc OoD scores computed at every evaluation (raymmft.ood.scores)",
    )
    ood_score: ScoreName = Field("neglabel", description="the score that defines ood_auroc")
    temperature: float = Field(
        0.01,
        gt=0,
        description="t in f.T / t of the scores on cosine logits (energy, max_logit, neglabel)",
    )
    mcm_temperature: float = Field(
        1.0, gt=0, description="MCM's own softmax temperature (1.0 as in Ming et al., 2022)"
    )
    templates: list[Template] = Field(
        ["a photo of a {}."], min_length=1, description="class prompts averaged at evaluation"
    )
    every_n_epochs: int = Field(1, ge=1, description="evaluate (and report) every n epochs")
    batch_size: int = Field(256, ge=1, description="images per evaluation batch")
    neglabel: NegLabelConfig = NegLabelConfig()
    interpolation: list[float] = Field(
        [],
        description="WiSE-FT: at every evaluation also evaluate (1 - a) * start + a * trial for "
        "each a (in [0, 1)); each (trial, a) is a candidate in the front and the choice",
    )
    bootstrap_resamples: int = Field(
        1000,
        ge=0,
        description="resamples of the 95 % bootstrap intervals on the chosen model's test-set "
        "evaluation (paired against the zero-shot model); 0: none",
    )

    @field_validator("interpolation")
    @classmethod
    def _alphas(cls, v):
        for a in v:
            if not 0 <= a < 1:
                raise ValueError(f"each alpha must be in [0, 1) (1 is the trial itself), got {a}")
        twice = _first_repeat(v)
        if twice is not None:
            raise ValueError(f"alpha {twice} given twice")
        return sorted(v)

    @field_validator("bootstrap_resamples")
    @classmethod
    def _enough_resamples(cls, v):
        from raymmft.ood.bootstrap import MIN_RESAMPLES

        if 0 < v < MIN_RESAMPLES:
            raise ValueError(f"need at least {MIN_RESAMPLES} resamples, got {v} (0: none)")
        return v

    @field_validator("scores")
    @classmethod
    def _each_score_once(cls, v):
        twice = _first_repeat(v)
        if twice is not None:
            raise ValueError(f"score '{twice}' given twice")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _primary_is_computed(cls, data, handler):
        """The score that defines ``ood_auroc`` is always computed (added after validation, so a
        bad name is refused as ``ood_score``)."""
        section = handler(data)
        if section.ood_score in section.scores:
            return section
        return section.model_copy(update={"scores": [*section.scores, section.ood_score]})

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
    metric: str = Field(description="a metric trials report (raymmft.objectives)")
    mode: Literal["max", "min"] = "max"
    weight: float = Field(
        1.0, ge=0, description="its weight in score = sum of weight * (+/-) metric over objectives"
    )


class AshaConfig(_Section):
    metric: str = Field("score", description="what ASHA compares trials on")
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1, description="evaluations before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="1/fraction of trials kept per rung")


class ConfirmConfig(_Section):
    """Confirmation over seeds: after the search, the ``top_k`` trials by score are trained again
    with ``seeds`` further values of ``train.seed``, and the choice is made on the mean over the
    seeds (the search's own run included)."""

    top_k: int = Field(0, ge=0, description="trials confirmed (0: no confirmation)")
    seeds: int = Field(2, ge=1, description="further seeds per confirmed trial")


class SearchConfig(_Section):
    space: dict[str, Any] = Field(
        {
            "train.lam": {"loguniform": [1e-4, 1e-1]},
            "model.temperature": {"uniform": [0.01, 0.1]},
            "train.lr": {"loguniform": [1e-4, 3e-3]},
        },
        description="dotted config field -> distribution or fixed value (raymmft.search_space)",
    )
    initial_points: list[dict[str, Any]] = Field(
        [],
        description="configurations tried first, e.g. the paper's defaults: {train.lam: 0.001, ...}",
    )
    sampler: Literal["tpe", "nsga2", "random"] = Field(
        "tpe", description="Optuna sampler (seeded with search.seed)"
    )
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="asha stops weak trials early; fifo runs every trial to the end"
    )
    objectives: list[Objective] = Field(
        [Objective(metric="id_acc", weight=0.5), Objective(metric="ood_auroc")],
        description="what Optuna optimises, the Pareto front and the choice are on; the default "
        "score is ood_auroc + 0.5 * id_acc",
    )
    asha: AshaConfig = AshaConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    num_samples: int = Field(4, ge=1, description="trials in the search")
    max_concurrent_trials: int | None = Field(
        None, ge=1, description="None: derived from the cluster"
    )
    seed: Seed = Field(0, description="seed of the sampler")
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

    @model_validator(mode="before")
    @classmethod
    def _score_weight_moved(cls, data):
        if isinstance(data, dict) and "score_weight" in data:
            raise ValueError(
                "score_weight is gone: give each objective a weight instead, e.g. "
                "objectives: [{metric: id_acc, weight: 0.5}, {metric: ood_auroc}]"
            )
        return data

    @property
    def distributions(self) -> dict[str, Distribution]:
        """``{dotted.field: Distribution}`` of the searched fields (fixed values left out)."""
        return distributions_of(self.space)

    @property
    def goals(self) -> Objectives:
        """The objectives as the one contract reads them (score, front, choice)."""
        return Objectives.of(self.objectives)

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
    use_gpu: bool = Field(False, description="one GPU share per worker (NCCL); else CPU (gloo)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu")
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
        "./raymmft_results",
        description="a local path (relative: to the working directory) or a URI: s3://, gs://, "
        "file:// (pyarrow.fs)",
        validate_default=True,
    )
    shared: bool = Field(
        False, description="a local path that is the same shared filesystem (NFS) on every node"
    )
    name: str | None = Field(None, description="experiment name; default: from the config file")

    @field_validator("path")
    @classmethod
    def _location(cls, v, info: ValidationInfo):
        try:  # a URI that cannot be parsed fails here, not on the cluster
            Location.parse(v)
        except StorageError as exc:
            raise ValueError(str(exc)) from None
        return local_path(v, info)

    @field_validator("name")
    @classmethod
    def _one_segment(cls, v):
        return v if v is None else check_name(v)

    @property
    def location(self) -> Location:
        """Where experiments are kept."""
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
        used = {o.metric for o in self.search.objectives}
        if self.search.scheduler == "asha" and self.search.asha.metric != "score":
            used.add(self.search.asha.metric)
        needs_ood = any(m.startswith("ood_") or "/ood_" in m for m in used)
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
        raw = self.model_dump(mode="json", exclude_unset=True)
        set_path(raw, key, value)
        raw["search"] = {**raw.get("search", {}), "space": {key: value}, "initial_points": []}
        try:
            Config.model_validate(raw, context={CANDIDATE: True})
        except ValidationError as err:
            loc, msg = describe_error(err)
            return f"{loc}: {msg}"
        return None

    def reported_metrics(self) -> set[str]:
        """The names of what every report of a trial carries (``raymmft.objectives``)."""
        from raymmft.data.spec import set_names

        return reported_metrics(
            self.eval.scores, set_names(self.data.ood_val), self.eval.interpolation
        )

    def to_dict(self) -> dict:
        """The whole config as plain data, defaults included (what an experiment saves): it
        validates back into the same config under any later defaults. (A dataset spec writes
        the options of its own kind only.)"""
        return self.model_dump(mode="json")


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


def validate_config(raw: dict, source: str = "config", *, base_dir: str | None = None) -> Config:
    """``raw`` validated as a ``Config``; relative local paths resolved against ``base_dir``
    (``None``: left as they are). A problem is one ``ConfigError`` line naming ``source`` and the
    field."""
    try:
        return Config.model_validate(raw, context={BASE_DIR: base_dir})
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def apply_trial_params(cfg: Config, params: dict[str, Any]) -> Config:
    """The configuration of one trial: ``cfg`` with the sampled ``{dotted.path: value}`` set
    (validated as a whole: a value can break a rule across fields)."""
    raw = cfg.to_dict()
    for key, value in params.items():
        set_path(raw, key, value)
    return validate_config(raw, "trial parameters")
