"""Bad input in the datasets: a missing path, an empty class folder, an image that cannot be read
(corrupt, or null in a parquet file), a classnames file that does not fit or repeats a name, an ID
set of one class, an ID validation set with other classes. Each through the real CLI, with the
exact one-line message and exit status 2, and nothing written before the error."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_input import EVALUATE, _config, _error, _run
from PIL import Image


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


def test_an_id_set_of_one_class(tmp_path, capsys):
    one = _image_folder(tmp_path / "one", ["cat"], per_class=2)
    ood = "builtin:shapes?split=test&classes=far_ood&per_class=2"
    argv = ["evaluate", "--arch", "raymmft-tiny", "--id", f"imagefolder:{one}", "--ood", ood]
    assert _error(capsys, argv) == (
        f"--id 'imagefolder:{one}' has 1 class (cat); an ID set needs at least 2 (classification "
        "and the contrastive loss compare classes)"
    )
    path = _config(tmp_path, data={"id_train": f"imagefolder:{one}"})
    assert _error(capsys, ["search", str(path)]) == (
        f"data.id_train (imagefolder:{one}) has 1 class (cat); an ID set needs at least 2 "
        "(classification and the contrastive loss compare classes)"
    )


@pytest.mark.parametrize("val_classes", [["cat", "cow"], ["cat", "cow", "dog"]])
def test_an_id_validation_set_with_other_classes(tmp_path, capsys, val_classes):
    train = _image_folder(tmp_path / "train", ["cat", "dog"], per_class=2)
    val = _image_folder(tmp_path / "val", val_classes, per_class=2)
    data = {"id_train": f"imagefolder:{train}", "id_val": f"imagefolder:{val}"}
    path = _config(tmp_path, data=data, train={"batch_size": 2})
    shown = ", ".join(val_classes)
    assert _error(capsys, ["search", str(path)]) == (
        f"data.id_val (imagefolder:{val}) has the classes [{shown}] but data.id_train has "
        "[cat, dog]: the ID validation set needs the same classes in the same order (give both "
        "the same classnames_file)"
    )
    assert not (tmp_path / "results").exists()


def test_a_parquet_image_that_is_null(tmp_path, capsys):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    (tmp_path / "pq").mkdir()
    images = pa.array([buf.getvalue(), None], pa.binary())
    pq.write_table(pa.table({"image": images, "label": [0, 1]}), tmp_path / "pq" / "a.parquet")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    spec = f"parquet:{tmp_path / 'pq'}?classnames_file={tmp_path / 'names.txt'}&name=p"
    argv = ["evaluate", *EVALUATE[:4], "--ood", spec, "--scores", "mcm", "--no-progress"]
    assert _error(capsys, argv) == f"cannot read image {tmp_path / 'pq'}#1: no image bytes (null)"


def test_a_classnames_file_that_repeats_a_name(tmp_path, capsys):
    folder = tmp_path / "folder"
    for c in ("a", "b", "c"):
        (folder / c).mkdir(parents=True)
        __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / c / "0.png")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\ncat\n")
    spec = {"uri": f"imagefolder:{folder}", "classnames_file": str(names)}
    path = _config(
        tmp_path,
        data={"id_train": spec, "id_val": "builtin:shapes?split=val&classes=id&per_class=1"},
    )
    assert (
        _error(capsys, ["search", str(path)])
        == f"classnames file {names}: 'cat' is listed twice (lines 1 and 3)"
    )
