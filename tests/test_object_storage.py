"""Object storage over the real S3 wire protocol (a local moto_server, pyarrow's and boto3's S3
clients over HTTP): locations, the report, checkpoints, the NegLabel cache, and the checks that keep
an experiment in a bucket from being overwritten or resumed when it is not there. No Ray here; the
searches on S3 are in test_object_storage_e2e.py."""

import json

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from test_report import TRIALS, make_experiment

from raymmft.checkpoint import load_state, load_weights, save_state
from raymmft.cli import main
from raymmft.config import NegLabelConfig
from raymmft.results.report import write_report
from raymmft.storage import Location


@pytest.fixture()
def s3_env(s3, monkeypatch):
    """Credentials in the environment; the endpoint only in the URIs the test builds."""
    for key, value in s3.env.items():
        if key not in ("AWS_ENDPOINT_URL", "S3_ENDPOINT"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return s3


def test_locations_read_write_and_list_in_the_bucket(s3_env):
    exp = Location.parse(s3_env.uri("unit/exp", query=True))
    assert not exp.exists()
    exp.join("raymmft_config.json").write_text('{"a": 1}')
    exp.join("train_runs", "t1", "checkpoint_0", "state.pt").write_bytes(b"\x00\x01")
    keys = s3_env.keys("unit/exp/")
    assert set(keys) == {
        "unit/exp/raymmft_config.json",
        "unit/exp/train_runs/t1/checkpoint_0/state.pt",
    }
    assert exp.is_dir() and exp.join("raymmft_config.json").is_file()
    assert json.loads(exp.join("raymmft_config.json").read_text()) == {"a": 1}
    assert sorted(exp.children()) == ["raymmft_config.json", "train_runs"]
    # Ray reports paths on the filesystem: "bucket/key", no scheme, no query
    ckpt = exp.with_fs_path("raymmft/unit/exp/train_runs/t1/checkpoint_0")
    assert ckpt.uri == s3_env.uri("unit/exp/train_runs/t1/checkpoint_0", query=True)
    assert ckpt.join("state.pt").read_bytes() == b"\x00\x01"


def test_checkpoints_load_back_from_the_bucket(s3_env, tmp_path):
    model = torch.nn.Linear(3, 2)
    save_state({"arch": "lin", "model": model.state_dict(), "epoch": 2}, tmp_path)
    remote = Location.parse(s3_env.uri("unit/ckpt/checkpoint_1", query=True))
    remote.upload_dir(tmp_path)
    state = load_state(remote)  # the directory, as Ray reports a checkpoint
    assert state["epoch"] == 2 and torch.equal(state["model"]["weight"], model.weight.detach())
    other = torch.nn.Linear(3, 2)
    load_weights(other, remote.uri, arch="lin")
    assert torch.equal(other.weight, model.weight)


def test_report_of_an_experiment_in_the_bucket(s3_env, tmp_path):
    local = make_experiment(tmp_path)
    exp = Location.parse(s3_env.uri("unit/report-exp", query=True))
    exp.upload_dir(local)
    paths = write_report(exp)
    assert paths.trials_parquet == str(exp.join("report", "trials.parquet"))
    keys = s3_env.keys("unit/report-exp/report/")
    names = ("trials.parquet", "pareto.png", "curves.png", "time.png", "importance.png")
    names += ("best.yaml", "index.html")
    assert set(keys) == {f"unit/report-exp/report/{n}" for n in names}
    png = s3_env.client().get_object(Bucket="raymmft", Key="unit/report-exp/report/pareto.png")
    assert png["Body"].read()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pq.read_table(exp.join("report", "trials.parquet").fs_path, filesystem=exp.filesystem)
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(TRIALS)
    # checkpoints are found under the experiment in the bucket (it was written elsewhere)
    assert rows["aaaa0001"]["checkpoint_path"].startswith(
        s3_env.uri("unit/report-exp/train_runs/aaaa0001/checkpoint_")
    )
    assert paths.tensorboard_command == (
        f"S3_ENDPOINT={s3_env.endpoint} tensorboard --logdir s3://raymmft/unit/report-exp"
    )


def test_neglabel_cache_lives_in_the_bucket(s3_env):
    from raymmft.ood.neglabel import mine_negative_labels

    torch.manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(64, 8), dim=-1)

    class Encoder:
        calls = 0

        def __call__(self, prompts):
            Encoder.calls += len(prompts)
            return table[[hash(p) % 64 for p in prompts]]

        def fingerprint(self):
            return "fixed-model"

    cache = s3_env.uri("unit/cache", query=True)
    words = [f"word{i}" for i in range(40)]
    settings = NegLabelConfig()
    first = mine_negative_labels(Encoder(), ["cat", "dog"], words, settings, cache=cache)
    calls = Encoder.calls
    again = mine_negative_labels(Encoder(), ["cat", "dog"], words, settings, cache=cache)
    assert Encoder.calls == calls, "the second mining read the bucket instead of encoding"
    assert again.from_cache and not first.from_cache and again.words == first.words
    assert torch.equal(again.features, first.features)
    assert [k for k in s3_env.keys("unit/cache/") if k.endswith(".pt")]


def _search_config(tmp_path, storage: str) -> str:
    raw = {
        "data": {"id_train": "builtin:digits?split=train", "id_val": "builtin:digits?split=val"},
        "search": {"objectives": [{"metric": "id_acc"}], "asha": {"metric": "id_acc"}},
        "storage": {"path": storage, "name": "exists"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_existing_experiment_in_the_bucket_is_never_overwritten(s3_env, tmp_path, capsys):
    storage = s3_env.uri("unit/guarded", query=True)
    Location.parse(storage).join("exists", "tuner.pkl").write_bytes(b"earlier search")
    before = s3_env.keys("unit/guarded/")
    assert main(["search", _search_config(tmp_path, storage)]) == 2
    exp = s3_env.uri("unit/guarded/exists", query=True)
    assert capsys.readouterr().err == (
        f"error: experiment 'exists' already exists in {storage}; use --resume '{exp}' to "
        "continue it or --name to start another\n"
    )
    assert s3_env.keys("unit/guarded/") == before


def test_existing_file_uri_experiment_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "results" / "exists").mkdir(parents=True)
    (tmp_path / "results" / "exists" / "tuner.pkl").write_bytes(b"earlier search")
    storage = f"file://{tmp_path / 'results'}"
    assert main(["search", _search_config(tmp_path, storage)]) == 2
    assert capsys.readouterr().err == (
        f"error: experiment 'exists' already exists in {storage}; use --resume "
        f"{storage}/exists to continue it or --name to start another\n"
    )
    assert (tmp_path / "results" / "exists" / "tuner.pkl").read_bytes() == b"earlier search"
    assert sorted(p.name for p in (tmp_path / "results" / "exists").iterdir()) == ["tuner.pkl"]


def test_resume_of_a_missing_experiment_in_the_bucket_is_refused(s3_env, capsys):
    missing = s3_env.uri("unit/nothing-here", query=True)
    assert main(["search", "--resume", missing]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot resume {missing}: no raymmft_config.json there (not a raymmft experiment)\n"
    )
    assert not s3_env.keys("unit/nothing-here")


def test_report_command_on_a_missing_bucket_path_is_one_line(s3_env, capsys):
    missing = s3_env.uri("unit/absent", query=True)
    assert main(["report", missing]) == 2
    assert capsys.readouterr().err == f"error: experiment directory not found: {missing}\n"
