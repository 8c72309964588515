"""Bad input caught before any trial starts: model, data, batch and experiment errors through the
CLI, each with its exact one-line message and exit status 2 (config-file errors: test_config.py)."""

import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from raymmft.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())


def _image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    return root


def _folder_data(tmp_path: Path, id_train) -> dict:
    """A consistent data section around an ImageFolder ID train set."""
    val = tmp_path / "val"
    if not val.exists():
        _image_folder(val)
    return {
        "id_train": id_train,
        "id_val": f"imagefolder:{val}",
        "ood_val": ["builtin:shapes?split=val&classes=far_ood&per_class=5"],
        "ood_test": ["builtin:shapes?split=test&classes=far_ood&per_class=5"],
    }


def _run(tmp_path, capsys, mutate, *extra) -> str:
    raw = yaml.safe_load(yaml.safe_dump(DEMO))
    raw["storage"] = {"path": str(tmp_path / "results")}
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["search", str(path), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "results" / "bad").exists(), "nothing written for a bad input"
    return err.removeprefix("error: ").rstrip("\n")


def test_unknown_architecture(tmp_path, capsys):
    msg = _run(tmp_path, capsys, lambda r: r["model"].update(arch="ViT-Q-99"))
    assert msg.startswith("unknown architecture 'ViT-Q-99' (built-in: ")


def test_missing_pretrained_file(tmp_path, capsys):
    missing = tmp_path / "weights" / "vit.pt"
    msg = _run(tmp_path, capsys, lambda r: r["model"].update(pretrained=str(missing)))
    assert msg == f"pretrained weights file not found: {missing}"


def test_missing_data_path(tmp_path, capsys):
    missing = tmp_path / "imagenet" / "train"
    data = _folder_data(tmp_path, {"uri": f"imagefolder:{missing}"})
    msg = _run(tmp_path, capsys, lambda r: r.update(data=data))
    assert msg == f"dataset path does not exist: {missing}"


def test_empty_class_folder(tmp_path, capsys):
    root = _image_folder(tmp_path / "train")
    (root / "emu").mkdir()
    data = _folder_data(tmp_path, f"imagefolder:{root}")
    msg = _run(tmp_path, capsys, lambda r: r.update(data=data))
    assert msg == f"empty class folder: {root / 'emu'}"


def test_corrupt_image(tmp_path, capsys):
    root = _image_folder(tmp_path / "train")
    (root / "dog" / "9.png").write_bytes(b"not a png")
    data = _folder_data(tmp_path, f"imagefolder:{root}")
    msg = _run(tmp_path, capsys, lambda r: r.update(data=data))
    assert msg.startswith(f"cannot read image {root / 'dog' / '9.png'}: ")


def test_classname_count_mismatch(tmp_path, capsys):
    root = _image_folder(tmp_path / "train")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nemu\n")
    data = _folder_data(tmp_path, {"uri": f"imagefolder:{root}", "classnames_file": str(names)})
    msg = _run(tmp_path, capsys, lambda r: r.update(data=data))
    assert msg == f"classnames file {names} has 3 names but {root} has 2 class folders"


def test_batch_not_divisible_by_workers(tmp_path, capsys):
    def mutate(r):
        r["train"]["batch_size"] = 61
        r["resources"]["num_workers"] = 2

    msg = _run(tmp_path, capsys, mutate)
    assert msg == "global batch size 61 is not divisible by 2 workers; use a positive multiple of 2"


def test_batch_larger_than_train_set(tmp_path, capsys):
    msg = _run(tmp_path, capsys, lambda r: r["train"].update(batch_size=5000))
    assert msg.startswith("train.batch_size 5000 is larger than the ID train set (720 images in ")


def test_more_cpus_than_the_machine_has(tmp_path, capsys):
    cpus = os.cpu_count()
    msg = _run(
        tmp_path, capsys, lambda r: r["resources"].update(num_workers=4, cpus_per_worker=cpus)
    )
    assert msg == (
        f"a trial needs {4 * cpus} CPU (resources.num_workers=4 x cpus_per_worker) but the cluster "
        f"has {cpus}; lower resources.num_workers or resources.cpus_per_worker"
    )


def test_existing_experiment_is_never_overwritten(tmp_path, capsys):
    exp = tmp_path / "results" / "bad"
    exp.mkdir(parents=True)
    (exp / "keep.txt").write_text("results of an earlier search")
    raw = {**DEMO, "storage": {"path": str(tmp_path / "results")}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: experiment 'bad' already exists in {tmp_path / 'results'}; "
        f"use --resume {exp} to continue it or --name to start another\n"
    )
    assert (exp / "keep.txt").read_text() == "results of an earlier search"


def test_resume_errors(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot resume {tmp_path / 'nope'}: no raymmft_config.json there "
        "(not a raymmft experiment)\n"
    )
    assert main(["search", "cfg.yaml", "--resume", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: --resume takes the experiment's saved config: drop CONFIG, --set, --name and --storage\n"
    )
    assert main(["search"]) == 2
    assert capsys.readouterr().err == "error: give a CONFIG file, or --resume EXPERIMENT\n"


@pytest.mark.parametrize("command", ["search", "train"])
def test_unknown_pretrained_tag(tmp_path, capsys, command):
    raw = {**DEMO, "model": {"arch": "raymmft-tiny", "pretrained": "laion9b"}}
    raw["storage"] = {"path": str(tmp_path / "results")}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main([command, str(path)]) == 2
    assert capsys.readouterr().err.startswith(
        "error: unknown pretrained tag 'laion9b' for raymmft-tiny (known tags: "
    )


def test_unwritable_storage(tmp_path, capsys):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results directory should go")
    storage = blocker / "results"
    raw = {**DEMO, "storage": {"path": str(storage)}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["search", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"error: storage '{storage}' is not writable (Not a directory); give a directory you can "
        "write to with --storage or storage.path\n"
    )
    assert blocker.read_text() == "a file where the results directory should go"
