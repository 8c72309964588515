"""Config loading: the demo and ImageNet configs validate; each bad input gets its exact one-line
message from the CLI with exit status 2, before Ray starts."""

from pathlib import Path

import pytest
import yaml

from raymmft.cli import main
from raymmft.config import apply_trial_params
from raymmft.config_file import load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "demo.yaml"


def test_search_space_files_validate():
    files = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert {f.name for f in files} >= {
        "demo.yaml",
        "imagenet_vitb16_mos.yaml",
        "imagenet_vitb16_openood.yaml",
    }
    for f in files:
        cfg = load_config(f)
        assert cfg.storage.name == f.stem
        assert cfg.search.space, f
    paper = load_config(ROOT / "search_spaces" / "imagenet_vitb16_mos.yaml")
    assert paper.model.arch == "ViT-B-16" and paper.model.pretrained == "openai"
    assert paper.resources.num_workers == 8 and paper.resources.use_gpu
    assert {s.name for s in paper.data.ood_test} == {"iNaturalist", "SUN", "Places", "Textures"}


def test_overrides_and_trial_params():
    cfg = load_config(DEMO, ["train.lr=2e-4", "search.num_samples=3", "data.num_workers=1"])
    assert cfg.train.lr == 2e-4 and cfg.search.num_samples == 3 and cfg.data.num_workers == 1
    trial = apply_trial_params(cfg, {"train.lam": 0.25, "model.temperature": 0.03})
    assert trial.train.lam == 0.25 and trial.model.temperature == 0.03
    assert cfg.train.lam == 0.0, "the base config is not modified"
    assert parse_overrides(["a.b=[1, 2]"]) == [("a.b", [1, 2])]


def _write(tmp_path, mutate=None, text=None):
    path = tmp_path / "bad.yaml"
    if text is None:
        raw = yaml.safe_load(DEMO.read_text())
        mutate(raw)
        text = yaml.safe_dump(raw)
    path.write_text(text)
    return path


BAD = {
    "unknown_field": (
        lambda r: r["train"].update(lrr=0.1),
        "train.lrr: unknown field",
    ),
    "wrong_type": (
        lambda r: r["train"].update(epochs="many"),
        "train.epochs: Input should be a valid integer, unable to parse string as an integer, got 'many'",
    ),
    "zero_lr": (lambda r: r["train"].update(lr=0), "train.lr: must be > 0, got 0.0"),
    "negative_tau": (
        lambda r: r["model"].update(temperature=-0.1),
        "model.temperature: must be in [0.01, 1] (CLIP clamps the logit scale 1/tau to [1, 100]), "
        "got -0.1",
    ),
    "negative_lam": (lambda r: r["train"].update(lam=-1), "train.lam: must be >= 0, got -1.0"),
    "empty_space": (
        lambda r: r["search"].update(space={}),
        "search.space: search space is empty: give at least one field to search",
    ),
    "loguniform_low_ge_high": (
        lambda r: r["search"].update(space={"train.lam": {"loguniform": [0.1, 0.01]}}),
        "search.space: train.lam: loguniform needs low < high, got [0.1, 0.01]",
    ),
    "loguniform_nonpositive": (
        lambda r: r["search"].update(space={"train.lam": {"loguniform": [0, 0.01]}}),
        "search.space: train.lam: loguniform needs low > 0, got 0",
    ),
    "unknown_distribution": (
        lambda r: r["search"].update(space={"train.lam": {"normal": [0, 1]}}),
        "search.space: train.lam: unknown distribution 'normal' (known: loguniform, uniform, choice, randint, quniform)",
    ),
    "space_not_a_field": (
        lambda r: r["search"].update(space={"train.lambda": {"uniform": [0, 1]}}),
        "search.space: 'train.lambda' is not a config field",
    ),
    "unknown_sampler": (
        lambda r: r["search"].update(sampler="cmaes"),
        "search.sampler: Input should be 'tpe', 'nsga2' or 'random', got 'cmaes'",
    ),
    "unknown_scheduler": (
        lambda r: r["search"].update(scheduler="pbt"),
        "search.scheduler: Input should be 'asha' or 'fifo', got 'pbt'",
    ),
    "unknown_score": (
        lambda r: r["eval"].update(scores=["neglabel", "odin"]),
        "eval.scores[1]: unknown OoD score 'odin' (known: energy, max_logit, mcm, msp, neglabel)",
    ),
    "no_ood_val": (
        lambda r: r["data"].update(ood_val=[]),
        "data.ood_val is empty but the search objective needs OoD validation sets (ood_auroc); "
        "add at least one OoD validation set",
    ),
    "test_set_used_for_validation": (
        lambda r: r["data"].update(ood_test=[r["data"]["ood_val"][1]]),
        "data: ood_test[0] (builtin:shapes?split=val&classes=far_ood&per_class=50) overlaps ood_val[1] "
        "(builtin:shapes?split=val&classes=far_ood&per_class=50): scoring the search on OoD test images "
        "leaks them into the chosen configuration; use another split, seed or source",
    ),
    "unknown_dataset": (
        lambda r: r["data"].update(id_train="foo:bar"),
        "data.id_train.uri: unknown dataset 'foo:bar'; expected builtin:shapes, builtin:digits, "
        "imagefolder:PATH or parquet:URI",
    ),
    "initial_point_not_matching_space": (
        lambda r: r["search"].update(initial_points=[{"train.lam": 0.01}]),
        "search: initial_points[0] must give exactly the searched fields "
        "['model.temperature', 'train.lam', 'train.lr'], got ['train.lam']",
    ),
    "template_without_slot": (
        lambda r: r["train"].update(template="a photo"),
        "train.template: must contain exactly one '{}', got 'a photo'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exact_message(case, tmp_path, capsys):
    mutate, expected = BAD[case]
    path = _write(tmp_path, mutate)
    assert main(["search", str(path), "--storage", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: {expected}\n"
    assert not (tmp_path / "out").exists(), "nothing is started or written for a bad config"


def test_yaml_syntax_error(tmp_path, capsys):
    path = _write(tmp_path, text="train:\n  lr: [1, 2\n")
    assert main(["search", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}: YAML syntax error at line 3, column 1: "
        "expected ',' or ']', but got '<stream end>'\n"
    )


def test_missing_config_and_bad_override(tmp_path, capsys):
    assert main(["search", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"error: config file not found: {tmp_path / 'nope.yaml'}\n"
    assert main(["train", str(DEMO), "--set", "train.lr"]) == 2
    assert capsys.readouterr().err == "error: --set expects FIELD=VALUE, got 'train.lr'\n"


# ---------------------------------------------------------------- one straight path


MINIMAL = """\
model: {arch: raymmft-tiny}
data:
  id_train: imagefolder:data/train
  id_val: {uri: imagefolder:data/val, classnames_file: data/classes.txt}
  ood_val: [parquet:data/ood.parquet, "builtin:shapes?split=val&classes=far_ood"]
eval: {neglabel: {corpus: data/words.txt}}
search:
  space: {train.lam: {uniform: [0.0, 1.0]}}
"""


def test_relative_paths_are_resolved_where_they_enter(tmp_path, monkeypatch):
    """A config in the user's own folder: every relative path is made absolute against the
    working directory of the command, once, and stays so in the saved config and every trial."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "c.yaml").write_text(MINIMAL)
    monkeypatch.chdir(folder)
    cfg = load_config("c.yaml", ["model.pretrained=weights/start.pt"])
    d = folder / "data"
    assert cfg.data.id_train.uri == f"imagefolder:{d / 'train'}"
    assert cfg.data.id_val.classnames_file == str(d / "classes.txt")
    assert cfg.data.ood_val[0].uri == f"parquet:{d / 'ood.parquet'}"
    assert cfg.data.ood_val[1].uri == "builtin:shapes"
    assert cfg.eval.neglabel.corpus == str(d / "words.txt")
    assert cfg.model.pretrained == str(folder / "weights" / "start.pt")
    assert cfg.storage.path == str(folder / "raymmft_results") and cfg.storage.name == "c"
    # a tag, a named corpus and a URI are not paths
    tagged = load_config("c.yaml", ["model.pretrained=openai", "eval.neglabel.corpus=wordnet"])
    assert tagged.model.pretrained == "openai" and tagged.eval.neglabel.corpus == "wordnet"
    s3 = load_config("c.yaml", ["storage.path=s3://bucket/exp"])
    assert s3.storage.path == "s3://bucket/exp"
    # a trial's config (validated elsewhere, no base directory) keeps the absolute paths
    monkeypatch.chdir(tmp_path)
    trial = apply_trial_params(cfg, {"train.lam": 0.5})
    assert trial.data.id_train.uri == f"imagefolder:{d / 'train'}"
    assert trial.eval.neglabel.corpus == str(d / "words.txt")


def test_the_saved_config_holds_every_default_and_validates_back(tmp_path, monkeypatch):
    from raymmft.config import Config, validate_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(MINIMAL)
    cfg = load_config("c.yaml")
    saved = cfg.to_dict()
    # defaults are written out: a later change of a default does not change this experiment
    assert saved["train"]["lr"] == 1e-3 and saved["train"]["epochs"] == 2
    assert saved["resources"]["num_workers"] == 2
    assert saved["search"]["objectives"] == [
        {"metric": "id_acc", "mode": "max", "weight": 0.5},
        {"metric": "ood_auroc", "mode": "max", "weight": 1.0},
    ]
    assert saved["eval"]["mcm_temperature"] == 1.0
    # a dataset spec writes its own kind's options only (another kind's would be refused)
    assert "image_size" not in saved["data"]["id_train"] and "split" in saved["data"]["id_train"]
    assert "val_fraction" not in saved["data"]["ood_val"][1]
    again = validate_config(saved)
    assert again == cfg
    assert str(again.data.ood_val[1]) == "builtin:shapes?split=val&classes=far_ood"
    assert set(Config.model_fields) <= set(saved)


def test_the_config_is_frozen_after_validation(tmp_path, monkeypatch):
    from pydantic import ValidationError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(MINIMAL)
    cfg = load_config("c.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.storage.name = "other"


def test_score_weight_is_replaced_by_objective_weights(tmp_path, capsys):
    path = _write(tmp_path, lambda r: r.setdefault("search", {}).update(score_weight=0.5))
    assert main(["search", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: search: score_weight is gone: give each objective a weight instead, "
        "e.g. objectives: [{metric: id_acc, weight: 0.5}, {metric: ood_auroc}]"
    )
