"""Issue 26 item 3: a checkpoint is two files, the weights (``model.pt``, what an evaluation
reads) and the rest of the training state (``train_state.pt``, AdamW's moments included); an
evaluation reads only the first, a resumed run both; older single-file checkpoints load."""

import pytest
import torch

from raymmft import checkpoint as ckpt
from raymmft.config import TrainConfig
from raymmft.errors import ModelError
from raymmft.finetune import FineTuner
from raymmft.model import build_model
from raymmft.text import tokenize_class_prompts
from raymmft.text_tower import TrainingForward


def _trained_state():
    bundle = build_model("raymmft-tiny", None)
    tokens = tokenize_class_prompts(bundle.tokenizer, ["cat", "dog"])
    tuner = FineTuner(
        TrainingForward(bundle.model),
        tokens,
        TrainConfig(batch_size=4),
        total_steps=2,
        device=torch.device("cpu"),
        autocast_dtype=None,
    )
    tuner.train_step(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
    return bundle, {**tuner.state_dict("raymmft-tiny"), "reports": [{"epoch": 1, "id_acc": 0.5}]}


def test_the_weights_and_the_training_state_are_two_files_and_evaluation_reads_one(
    tmp_path, monkeypatch
):
    bundle, state = _trained_state()
    ckpt.save_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "train_state.pt"]
    weights = (tmp_path / "model.pt").stat().st_size
    rest = (tmp_path / "train_state.pt").stat().st_size
    assert rest > 1.9 * weights  # AdamW keeps two moments per weight: what evaluation skips
    read = []
    real = ckpt.read_torch_file
    monkeypatch.setattr(
        ckpt, "read_torch_file", lambda loc, *a: read.append(loc.name) or real(loc, *a)
    )
    ckpt.load_weights(bundle.model, str(tmp_path), arch="raymmft-tiny")
    assert read == ["model.pt"]
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, state["model"][key]), key
    read.clear()
    loaded = ckpt.load_state(str(tmp_path))
    assert read == ["model.pt", "train_state.pt"]
    assert set(loaded) == set(state)
    assert loaded["reports"] == state["reports"] and loaded["step"] == state["step"]
    for key, value in state["optimizer"]["state"][0].items():
        assert torch.equal(loaded["optimizer"]["state"][0][key], value)


def test_an_older_single_file_checkpoint_still_loads(tmp_path):
    bundle, state = _trained_state()
    torch.save(state, tmp_path / "state.pt")
    assert set(ckpt.load_state(str(tmp_path))) == set(state)
    ckpt.load_weights(bundle.model, str(tmp_path), arch="raymmft-tiny")


def test_a_local_checkpoint_is_mapped_not_copied_and_a_legacy_file_is_read_whole(tmp_path):
    bundle, state = _trained_state()
    ckpt.save_state(state, tmp_path)
    model_file = (tmp_path / "model.pt").resolve()
    loaded = ckpt.read_torch_file(str(tmp_path / "model.pt"))
    maps = open("/proc/self/maps").read()
    assert str(model_file) in maps  # the tensors are the file's pages: no private copy
    assert torch.equal(loaded["model"]["logit_scale"], state["model"]["logit_scale"])
    del loaded
    legacy = tmp_path / "legacy.pt"
    torch.save({"model": state["model"]}, legacy, _use_new_zipfile_serialization=False)
    read = ckpt.read_torch_file(str(legacy))
    assert str(legacy.resolve()) not in open("/proc/self/maps").read()
    for key, value in state["model"].items():
        assert torch.equal(read["model"][key], value), key


def test_an_empty_or_cut_checkpoint_is_named_with_what_is_wrong(tmp_path):
    bundle, state = _trained_state()
    ckpt.save_state(state, tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ModelError) as caught:
        ckpt.load_weights(bundle.model, str(tmp_path), arch="raymmft-tiny")
    assert str(caught.value) == f"cannot read checkpoint {tmp_path / 'model.pt'}: the file is empty"
    ckpt.save_state(state, tmp_path)
    whole = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelError, match=rf"^cannot read checkpoint {tmp_path / 'model.pt'}: \S"):
        ckpt.load_weights(bundle.model, str(tmp_path), arch="raymmft-tiny")
