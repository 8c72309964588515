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
