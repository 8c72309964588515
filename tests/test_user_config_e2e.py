"""A config a user writes, in their own folder, through the CLI and real Ray (issue 22): no
``storage``, ``resources``, ``eval`` or ``train`` section; relative data and corpus paths; the
search's own objectives (ID accuracy up, FPR95 down) in the front, the choice, ``best.yaml`` and
the page; WiSE-FT candidates (``eval.interpolation``, issue 24) at alpha 0 (the zero-shot model)
and 0.5, which ``raymmft evaluate --interpolate`` reproduces; and a search in which every trial
diverges, which exits 1, retries nothing and prints one line per trial."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from raymmft.data import shapes

pytestmark = pytest.mark.ray

ID_CONCEPTS = shapes.DEFAULT_ID_CONCEPTS[:6]
OOD_CONCEPTS = shapes.FAR_OOD_CLASSES[:2]

USER_CONFIG = """\
# written by hand: no storage, resources, eval or train section
model: {arch: raymmft-tiny}
data:
  id_train: "imagefolder:data/images?split=train"
  id_val: "imagefolder:data/images?split=val"
  ood_val: [imagefolder:data/ood]
  num_workers: 1  # a loader process per Ray worker (from a fork server)
search:
  space:
    train.lam: {uniform: [0.0, 1.0]}
    train.lr: {loguniform: [1.0e-4, 1.0e-3]}
  objectives: [{metric: id_acc}, {metric: ood_fpr95, mode: min}]
  num_samples: 2
"""


def _write_folder(root: Path, concepts, per_class: int) -> None:
    for concept in concepts:
        folder = root / concept.replace(" ", "_")
        folder.mkdir(parents=True)
        for k, image in enumerate(shapes.class_images(concept, "train", 0, per_class)):
            Image.fromarray(image).save(folder / f"{k}.png")


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "raymmft.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def user_search(tmp_path_factory):
    """The user's folder: their config, their images, their word list; the search is started
    from there with relative paths only."""
    home = tmp_path_factory.mktemp("user")
    _write_folder(home / "data" / "images", ID_CONCEPTS, 20)
    _write_folder(home / "data" / "ood", OOD_CONCEPTS, 12)
    words = ["banana", "violin", "glacier", "teapot", "tractor", "lantern", "pebble", "kettle"]
    (home / "data" / "words.txt").write_text("\n".join(words * 4) + "\n")
    (home / "mine.yaml").write_text(USER_CONFIG)
    flags = ["--set", "eval.neglabel.corpus=data/words.txt"]
    flags += ["--set", "eval.interpolation=[0.0, 0.5]"]
    run = _cli(["search", "mine.yaml", *flags], home)
    return run, home / "raymmft_results" / "mine"


def test_a_users_minimal_config_runs_and_every_trial_finishes(user_search):
    run, exp = user_search
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    trials = [r for r in rows if not r["baseline"] and r["alpha"] == 1.0]
    assert len(trials) == 2
    assert {r["stop_reason"] for r in trials} == {"completed"}
    saved = json.loads((exp / "raymmft_config.json").read_text())
    # the saved config is whole and absolute: every trial read the user's files
    assert saved["data"]["id_train"]["uri"] == f"imagefolder:{exp.parents[1] / 'data' / 'images'}"
    assert saved["eval"]["neglabel"]["corpus"] == str(exp.parents[1] / "data" / "words.txt")
    assert saved["storage"] == {
        "path": str(exp.parent),
        "shared": False,
        "name": "mine",
    }
    assert saved["resources"]["num_workers"] == 2 and saved["train"]["epochs"] == 2


def test_front_choice_best_yaml_and_page_follow_the_searchs_objectives(user_search):
    run, exp = user_search
    assert run.returncode == 0, run.stderr[-3000:]
    import pyarrow.parquet as pq

    from raymmft.objectives import Goal, Objectives

    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    goals = Objectives([Goal("id_acc"), Goal("ood_fpr95", "min")])
    front = {rows[i]["trial_id"] for i in goals.front(rows)}
    assert {r["trial_id"] for r in rows if r["pareto"]} == front
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["trial_id"] in front
    best_score = max(goals.score(r) for r in rows if r["trial_id"] in front)
    assert goals.score(chosen[0]) == pytest.approx(best_score)
    assert chosen[0]["score"] == pytest.approx(chosen[0]["id_acc"] - chosen[0]["ood_fpr95"])
    assert "Pareto front of id_acc (max), ood_fpr95 (min)" in run.stdout
    page = (exp / "report" / "index.html").read_text()
    assert "id_acc (max), ood_fpr95 (min)" in page
    assert "<code>id_acc - ood_fpr95</code>" in page
    best = yaml.safe_load((exp / "report" / "best.yaml").read_text())
    trials = [r for r in rows if not r["baseline"]]
    best_trial = trials[goals.choose(trials)]
    assert best["train"]["lr"] == best_trial["param.train.lr"]
    # the TensorBoard layout charts these objectives
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = exp / "tensorboard" / trials[0]["trial_id"]
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    layout = events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    assert b"ood_fpr95 (min)" in layout and b"score = id_acc - ood_fpr95" in layout


def test_every_trial_has_candidates_at_each_alpha_and_alpha_0_is_the_zero_shot_model(
    user_search,
):
    run, exp = user_search
    assert run.returncode == 0, run.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    base = next(r for r in rows if r["baseline"])
    trials = [r["trial_id"] for r in rows if not r["baseline"] and r["alpha"] == 1.0]
    for trial in trials:
        alphas = sorted(r["alpha"] for r in rows if r.get("trial") == trial)
        assert alphas == [0.0, 0.5, 1.0]
        zero = next(r for r in rows if r["trial_id"] == f"{trial}@0")
        for metric in ("id_acc", "ood_auroc", "ood_fpr95", "modality_gap"):
            assert zero[metric] == pytest.approx(base[metric], abs=1e-6), metric
    # the page's Pareto plot and table hold them too
    page = (exp / "report" / "index.html").read_text()
    assert f"{trials[0]}@0.5" in page


def test_evaluate_interpolate_reproduces_the_half_way_candidate(user_search):
    run, exp = user_search
    assert run.returncode == 0, run.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(exp / "report" / "trials.parquet").to_pylist()
    half = next(r for r in rows if r.get("alpha") == 0.5)
    home = exp.parents[1]
    out = home / "half.json"
    evaluated = _cli(
        [
            "evaluate",
            "--arch",
            "raymmft-tiny",
            "--checkpoint",
            half["checkpoint_path"],
            "--interpolate",
            "0.5",
            "--id",
            "imagefolder:data/images?split=val",
            "--ood",
            "imagefolder:data/ood",
            "--neg-corpus",
            "data/words.txt",
            "--out",
            str(out),
            "--no-progress",
        ],
        home,
    )
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["id_accuracy"] == pytest.approx(half["id_acc"], abs=1e-6)
    assert result["mean"]["neglabel"]["auroc"] == pytest.approx(half["ood_auroc"], abs=1e-6)
    assert result["mean"]["neglabel"]["fpr95"] == pytest.approx(half["ood_fpr95"], abs=1e-6)


DIVERGING = """\
model: {arch: raymmft-tiny}
data:
  id_train: "builtin:shapes?split=train&classes=id&per_class=8"
  id_val: "builtin:shapes?split=val&classes=id&per_class=2"
  ood_val: ["builtin:shapes?split=val&classes=far_ood&per_class=4"]
train: {epochs: 1, batch_size: 32}
eval: {scores: [mcm], ood_score: mcm}
search:
  space: {train.lr: {loguniform: [1.0e6, 1.0e7]}}
  num_samples: 2
resources: {num_workers: 1}  # the two trials at once on two cores
"""


def test_a_search_where_every_trial_diverges_exits_1_without_retries(tmp_path):
    (tmp_path / "nan.yaml").write_text(DIVERGING)
    run = _cli(["search", "nan.yaml"], tmp_path)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    failed = [ln for ln in run.stdout.splitlines() if ln.startswith("trial ") and " failed: " in ln]
    assert len(failed) == 2
    for line in failed:
        assert "NonFiniteLossError: non-finite loss" in line
    assert "restart" not in run.stdout
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial of the search finished (2 failed; the first, trial ")
    assert "NonFiniteLossError" in last and last.endswith("has its traceback")
    exp = tmp_path / "raymmft_results" / "nan"
    for error in exp.glob("trial_driver_*/error.txt"):
        assert "NonFiniteLossError" in error.read_text()
    states = sorted(exp.glob("experiment_state-*.json"))
    trials = json.loads(states[-1].read_text())["trial_data"]
    assert len(trials) == 2
