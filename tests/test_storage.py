"""``raymmft.storage``: locations are joined on the URI's path with scheme and query kept, mapped
back from the filesystem paths Ray reports, and opened through pyarrow (local here; S3 over the
wire in test_object_storage.py)."""

import pytest

from raymmft.config import validate_config
from raymmft.errors import ConfigError, StorageError
from raymmft.storage import Location, check_name

QUERY = "endpoint_override=127.0.0.1:9000&scheme=http"


def test_join_keeps_scheme_and_query():
    base = Location.parse(f"s3://bucket/exp?{QUERY}")
    joined = base.join("demo", "train_runs/abc")
    assert joined.uri == f"s3://bucket/exp/demo/train_runs/abc?{QUERY}"
    assert (joined.scheme, joined.netloc, joined.path) == (
        "s3",
        "bucket",
        "/exp/demo/train_runs/abc",
    )
    assert joined.name == "abc" and joined.parent.parent.name == "demo"
    assert joined.parent.parent.parent == base
    assert Location.parse("gs://b/p/").join("x").uri == "gs://b/p/x"
    assert Location.parse("s3://bucket").join("exp").uri == "s3://bucket/exp"


@pytest.mark.parametrize("part", ["..", ".", "", "a/../b", "/abs"])
def test_join_refuses_what_is_not_a_relative_path(part):
    with pytest.raises(StorageError, match="not a relative path"):
        Location.parse("s3://bucket/exp").join(part)


def test_local_paths_are_absolute_and_file_uris_stay_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = Location.parse("results")
    assert local.uri == str(tmp_path / "results") and local.is_local
    assert local.join("demo").local_path == tmp_path / "results" / "demo"
    uri = Location.parse(f"file://{tmp_path}/a/../b")
    assert uri.uri == f"file://{tmp_path}/b" and uri.is_local and uri.fs_path == str(tmp_path / "b")
    with pytest.raises(StorageError, match=r"names a host; use file:///abs/path$"):
        Location.parse("file://relative/x")


def test_filesystem_paths_map_back_to_locations(tmp_path):
    uri = Location.parse(f"file://{tmp_path}/exp")
    back = uri.with_fs_path(f"{tmp_path}/exp/train_runs/t1/checkpoint_0")
    assert back.uri == f"file://{tmp_path}/exp/train_runs/t1/checkpoint_0"
    local = Location.parse(tmp_path / "exp")
    assert local.with_fs_path(f"{tmp_path}/exp/x") == local.join("x")
    assert local.with_fs_path("s3://bucket/k").uri == "s3://bucket/k"  # a URI is parsed as is


def test_local_reads_writes_and_listing(tmp_path):
    exp = Location.parse(f"file://{tmp_path}/exp")
    assert not exp.exists()
    exp.join("a", "b.txt").write_text("hello")
    assert exp.is_dir() and exp.join("a").is_dir() and exp.join("a", "b.txt").is_file()
    assert exp.join("a", "b.txt").read_text() == "hello"
    assert sorted(exp.join("a").children()) == ["b.txt"]  # no temporary file left behind
    exp.join("a", "b.txt").write_text("again")
    assert (tmp_path / "exp" / "a" / "b.txt").read_text() == "again"
    with pytest.raises(StorageError, match=r"^not found: file://.*/exp/missing$"):
        exp.join("missing").read_bytes()


def test_secrets_in_the_query_never_reach_messages():
    loc = Location.parse("s3://b/p?access_key=AKIA1&secret_key=s3cr3t&region=eu-west-1")
    assert "s3cr3t" not in str(loc) and "AKIA1" not in str(loc) and "region=eu-west-1" in str(loc)
    assert "s3cr3t" in loc.uri  # the real URI still opens the filesystem


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "experiment name is empty"),
        ("../x", "experiment name '../x' contains a path separator; give a name, not a path"),
        ("/abs/x", "experiment name '/abs/x' contains a path separator; give a name, not a path"),
        ("..", "experiment name '..' is not a name"),
        ("x" * 256, "experiment name is 256 bytes long; at most 255 are allowed"),
        ("é" * 128, "experiment name is 256 bytes long; at most 255 are allowed"),
    ],
)
def test_experiment_name_is_one_segment(name, message):
    with pytest.raises(ValueError) as err:
        check_name(name)
    assert str(err.value) == message
    raw = {
        "data": {"id_train": "builtin:digits?split=train", "id_val": "builtin:digits?split=val"},
        "search": {"objectives": [{"metric": "id_acc"}], "asha": {"metric": "id_acc"}},
        "storage": {"name": name},
    }
    with pytest.raises(ConfigError) as err:
        validate_config(raw, "c.yaml")
    assert str(err.value) == f"c.yaml: storage.name: {message}"
    assert check_name("x" * 255) == "x" * 255
