"""``raymmft evaluate`` end to end on a random tiny model and generated data, and its bad inputs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from raymmft.commands import evaluate as command
from raymmft.errors import ConfigError, ModelError

ID = "builtin:shapes?split=test&classes=id&per_class=3"
NEAR = "builtin:shapes?split=test&classes=near_ood&per_class=1&name=near"
FAR = "builtin:shapes?split=test&classes=far_ood&per_class=3&name=far"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="raymmft evaluate")
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def _base(tmp_path, *extra: str) -> list[str]:
    return [
        "--arch",
        "raymmft-tiny",
        "--id",
        ID,
        "--ood",
        NEAR,
        "--ood",
        FAR,
        "--device",
        "cpu",
        "--seed",
        "3",
        "--neg-corpus",
        "world",
        "--neg-keep-fraction",
        "0.25",
        "--neg-cache",
        str(tmp_path / "cache"),
        "--no-progress",
        *extra,
    ]


def test_evaluate_command_table_and_json_equal_library(tmp_path, capsys):
    out = tmp_path / "res" / "results.json"
    argv = _base(
        tmp_path, "--scores", "neglabel,mcm,energy", "--neg-ngroups", "2", "--out", str(out)
    )
    assert command.run(_args(*argv)) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())

    # the same embeddings, computed here with the library functions
    from raymmft.config import NegLabelConfig
    from raymmft.data import build_loader, open_dataset
    from raymmft.model import build_model
    from raymmft.ood.embed import TextEncoder, class_text_features, encode_images
    from raymmft.ood.metrics import accuracy, ood_metrics
    from raymmft.ood.neglabel import mine_negative_labels
    from raymmft.ood.scores import clip_logits, energy_score, mcm_score, neglabel_score
    from raymmft.world.corpus import world_corpus

    torch.manual_seed(3)
    bundle = build_model("raymmft-tiny")
    model, tok = bundle.model, bundle.tokenizer
    id_set = open_dataset(ID, bundle.preprocess_eval)
    classes = id_set.classnames
    id_f, labels, _ = encode_images(model, build_loader(id_set, 64, shuffle=False, seed=0))
    ood_f = {
        name: encode_images(
            model,
            build_loader(
                open_dataset(spec, bundle.preprocess_eval, id_classnames=classes),
                64,
                shuffle=False,
                seed=0,
            ),
        )[0]
        for name, spec in (("near", NEAR), ("far", FAR))
    }
    encode = TextEncoder(model, tok)
    text = class_text_features(encode, classes, ["a photo of a {}."])
    settings = NegLabelConfig(keep_fraction=0.25)
    neg = mine_negative_labels(encode, classes, world_corpus("world"), settings)
    assert len(neg) == int(88 * 0.25) == saved["num_negatives"]

    def scores(f):
        return {
            "neglabel": neglabel_score(f, text, neg.features, 0.01, ngroups=2, seed=0),
            "mcm": mcm_score(f, text, 1.0),  # MCM's own temperature, eval.mcm_temperature
            "energy": energy_score(clip_logits(f, text, 0.01), 1.0),
        }

    id_s = scores(id_f)
    assert saved["id_accuracy"] == pytest.approx(
        accuracy(clip_logits(id_f, text), labels), abs=1e-12
    )
    assert saved["num_id"] == 36 and saved["num_classes"] == 12
    assert saved["primary_score"] == "neglabel" and saved["scores"] == ["neglabel", "mcm", "energy"]
    f_mean = id_f.double().mean(0) - text.double().mean(0)
    assert saved["modality_gap"] == pytest.approx(float(f_mean.norm()), rel=1e-6)
    for name, feats in ood_f.items():
        assert saved["ood"][name]["num_samples"] == feats.shape[0]
        ood_s = scores(feats)
        for score in id_s:
            expected = ood_metrics(id_s[score], ood_s[score])
            for metric, value in expected.items():
                assert saved["ood"][name]["metrics"][score][metric] == pytest.approx(
                    value, abs=1e-6
                )
    for score in id_s:
        for metric in ("auroc", "fpr95"):
            per_set = [saved["ood"][n]["metrics"][score][metric] for n in ("near", "far")]
            assert saved["mean"][score][metric] == pytest.approx(np.mean(per_set))
    assert saved["ood_sets"] == {
        "near": NEAR.replace("&name=near", ""),
        "far": FAR.replace("&name=far", ""),
    }
    assert saved["eval"]["neglabel"]["ngroups"] == 2 and saved["model"]["arch"] == "raymmft-tiny"

    # the printed table carries the same numbers
    assert f"ID accuracy: {100 * saved['id_accuracy']:.2f} %" in printed
    lines = printed.splitlines()
    start = lines.index("score: neglabel (primary)")
    near_row = next(line for line in lines[start:] if line.startswith("near "))
    m = saved["ood"]["near"]["metrics"]["neglabel"]
    assert near_row.split()[2:] == [
        f"{100 * m[k]:.2f}" for k in ("auroc", "fpr95", "aupr_in", "aupr_out")
    ]
    mean_row = next(line for line in lines[start:] if line.startswith("mean "))
    assert mean_row.split()[1] == f"{100 * saved['mean']['neglabel']['auroc']:.2f}"
    assert f"wrote {out}" in printed


def test_checkpoint_mines_with_start_model_and_reencodes(tmp_path, capsys):
    from raymmft.model import build_model

    torch.manual_seed(3)
    start = build_model("raymmft-tiny").model
    tuned = build_model("raymmft-tiny").model  # other random weights stand in for fine-tuning
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": tuned.state_dict(), "arch": "raymmft-tiny"}, ckpt)
    out_ckpt, out_start = tmp_path / "ckpt.json", tmp_path / "start.json"
    argv = _base(tmp_path, "--scores", "neglabel", "--batch-size", "16")
    assert command.run(_args(*argv, "--checkpoint", str(ckpt), "--out", str(out_ckpt))) == 0
    assert command.run(_args(*argv, "--out", str(out_start))) == 0
    # both runs mined with the start model: one cache entry, used twice
    assert len(list((tmp_path / "cache").glob("neglabel-*.pt"))) == 1
    a, b = json.loads(out_ckpt.read_text()), json.loads(out_start.read_text())
    assert a["model"]["checkpoint"] == str(ckpt) and a["num_negatives"] == b["num_negatives"] == 22
    assert a["ood"]["far"]["metrics"] != b["ood"]["far"]["metrics"]  # other weights, other scores
    del start

    # --compare-start: the paired difference checkpoint - start, both evaluated in one run
    out_delta = tmp_path / "delta.json"
    boot = ["--bootstrap", "100", "--compare-start", "--out", str(out_delta)]
    assert command.run(_args(*argv, "--checkpoint", str(ckpt), *boot)) == 0
    c = json.loads(out_delta.read_text())
    assert c["ood"] == {
        k: {**v, "metrics_ci95": c["ood"][k]["metrics_ci95"]} for k, v in a["ood"].items()
    }
    delta = c["delta_vs_reference"]
    assert delta["reference"] == "start"
    assert delta["id_accuracy"]["value"] == pytest.approx(a["id_accuracy"] - b["id_accuracy"])
    for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"):
        got = delta["mean"]["neglabel"][metric]
        assert got["value"] == pytest.approx(
            a["mean"]["neglabel"][metric] - b["mean"]["neglabel"][metric], abs=1e-12
        )
        assert got["ci95"][0] <= got["ci95"][1]
    assert "delta vs start" in capsys.readouterr().out


def test_bootstrap_intervals_equal_the_library_on_the_same_model(tmp_path, capsys):
    from raymmft.config import EvalConfig
    from raymmft.data import open_dataset
    from raymmft.evaluation import Evaluator
    from raymmft.model import build_model

    out = tmp_path / "res.json"
    argv = _base(tmp_path, "--scores", "mcm,msp", "--batch-size", "16", "--out", str(out))
    assert command.run(_args(*argv, "--bootstrap", "150", "--bootstrap-seed", "9")) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())

    torch.manual_seed(3)
    bundle = build_model("raymmft-tiny")
    id_set = open_dataset(ID, bundle.preprocess_eval)
    classes = list(id_set.classnames)
    ood = {
        name: open_dataset(spec, bundle.preprocess_eval, id_classnames=classes)
        for name, spec in (("near", NEAR), ("far", FAR))
    }
    settings = EvalConfig(scores=["mcm", "msp"], ood_score="mcm", batch_size=16)
    result = Evaluator(settings, bundle, classes, id_set, ood, out=None).evaluate(bundle.model)
    ci = result.add_intervals(150, 9)
    assert saved["bootstrap"]["resamples"] == 150 and saved["bootstrap"]["seed"] == 9
    assert saved["id_accuracy_ci95"] == pytest.approx(list(ci.id_accuracy), abs=1e-12)
    assert saved["logit_scale"] == pytest.approx(float(bundle.model.logit_scale.detach().exp()))
    for name in ("near", "far"):
        for score in ("mcm", "msp"):
            for metric, (low, high) in ci.per_set[name][score].items():
                got = saved["ood"][name]["metrics_ci95"][score][metric]
                assert got == pytest.approx([low, high], abs=1e-6)
    assert saved["mean_ci95"]["msp"]["auroc"] == pytest.approx(
        list(ci.mean["msp"]["auroc"]), abs=1e-6
    )
    low, high = saved["id_accuracy_ci95"]
    assert (
        f"ID accuracy: {100 * saved['id_accuracy']:.2f} [{100 * low:.2f}, {100 * high:.2f}] %"
        in printed
    )


@pytest.mark.parametrize(
    "extra,error,message",
    [
        (
            ["--scores", "mcm,odin"],
            ConfigError,
            "--scores: unknown OoD score 'odin' (known: energy, max_logit, mcm, msp, neglabel)",
        ),
        (
            ["--primary-score", "knn"],
            ConfigError,
            "--primary-score: unknown OoD score 'knn' (known: energy, max_logit, mcm, msp, neglabel)",
        ),
        (
            ["--template", "a photo"],
            ConfigError,
            "--template: must contain exactly one '{}', got 'a photo'",
        ),
        (
            ["--ood", NEAR],
            ConfigError,
            "--ood: OoD set 'near' given twice (name them with name=...)",
        ),
        (
            ["--neg-exclude", "noun.animals"],
            ConfigError,
            "--neg-exclude: unknown WordNet category 'noun.animals' (known: noun.Tops,",
        ),
        (
            ["--neg-keep-fraction", "0"],
            ConfigError,
            "--neg-keep-fraction: Input should be greater than 0, got 0.0",
        ),
        (
            ["--temperature", "-1"],
            ConfigError,
            "--temperature: Input should be greater than 0, got -1.0",
        ),
        (
            ["--checkpoint", "/nonexistent/ckpt.pt"],
            ModelError,
            "checkpoint file not found: /nonexistent/ckpt.pt",
        ),
        (
            ["--bootstrap", "50"],
            ConfigError,
            "--bootstrap: need at least 100 resamples, got 50 (0 turns the intervals off)",
        ),
        (
            ["--bootstrap", "-1"],
            ConfigError,
            "--bootstrap: need at least 100 resamples, got -1 (0 turns the intervals off)",
        ),
        (
            ["--bootstrap", "1000", "--bootstrap-seed", "-2"],
            ConfigError,
            "--bootstrap-seed must be in [0, 2**32 - 1], got -2",
        ),
        (
            ["--bootstrap", "1000", "--compare-start"],
            ConfigError,
            "--compare-start: needs --checkpoint (the model compared with the start) and "
            "--bootstrap N",
        ),
    ],
)
def test_bad_arguments(tmp_path, extra, error, message):
    with pytest.raises(error) as info:
        command.run(_args(*_base(tmp_path, *extra)))
    assert str(info.value).startswith(message)


def test_bad_dataset_spec(tmp_path):
    argv = _base(tmp_path)
    argv[argv.index(NEAR)] = "builtin:planes?split=test"
    with pytest.raises(ConfigError) as info:
        command.run(_args(*argv))
    assert str(info.value).startswith("--ood 'builtin:planes?split=test': ")
    assert "unknown builtin dataset 'planes'" in str(info.value)
