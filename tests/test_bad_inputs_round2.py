"""Bad input, round two: one test per root cause, through the real CLI, with the exact one-line
message and exit status 2 (a failed run: 1), and nothing written or run before the error.

1. resume loads Tune's pickled state: only a started experiment that only you can write;
2. weights that fail to load, whatever the way;
3. numbers that are not finite or outside their range; --set on a searched field;
4. search-space values checked up front against their field;
5. resources that can never be granted; an unreachable cluster;
6. paths checked where they enter, before the work;
7. other silent acceptances: an empty --name, a non-empty parquet output folder, a duplicated
   class name."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from raymmft.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "model": {"arch": "raymmft-tiny", "temperature": 0.05},
    "data": {
        "id_train": "builtin:shapes?split=train&classes=id&per_class=2",
        "id_val": "builtin:shapes?split=val&classes=id&per_class=1",
        "ood_val": ["builtin:shapes?split=val&classes=far_ood&per_class=4&name=far"],
    },
    "train": {"epochs": 1, "batch_size": 12},
    "eval": {"scores": ["mcm"], "ood_score": "mcm"},
    "search": {"space": {"train.lam": {"uniform": [0.0, 1.0]}}, "num_samples": 1},
    "resources": {"num_workers": 1, "cpus_per_worker": 1},
}


def _config(tmp_path: Path, **sections) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    raw["storage"] = {"path": str(tmp_path / "results"), **raw.get("storage", {})}
    path = tmp_path / "sbase.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _error(capsys, argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").rstrip("\n")


# ---------------------------------------------------------------- 1. resume


class Planted:
    """A pickle that, when loaded, creates a marker file (what a hostile tuner.pkl could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _planted_experiment(tmp_path: Path, *, with_state: bool) -> tuple[Path, Path]:
    exp = tmp_path / "results" / "planted"
    exp.mkdir(parents=True)
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    (exp / "raymmft_config.json").write_text(__import__("json").dumps(cfg))
    marker = tmp_path / "payload-ran"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(Planted(marker)))
    if with_state:
        (exp / "experiment_state-2026-12-01_00-00-00.json").write_text('{"trial_data": []}')
    return exp, marker


def test_resume_refuses_a_folder_without_tune_state(tmp_path, capsys):
    exp, marker = _planted_experiment(tmp_path, with_state=False)
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == (
        f"cannot resume {exp}: it holds no Tune experiment state (experiment_state-*.json): "
        "not a search that has started"
    )
    assert not marker.exists()


def test_resume_refuses_an_experiment_others_can_write(tmp_path, capsys):
    exp, marker = _planted_experiment(tmp_path, with_state=True)
    os.chmod(exp / "tuner.pkl", 0o666)
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == (
        f"cannot resume {exp}: {exp / 'tuner.pkl'} can be written by other users (mode 0o666); "
        "resume loads Tune's pickled state, so it resumes only an experiment no one else can "
        "change (chmod -R go-w)"
    )
    os.chmod(exp / "tuner.pkl", 0o644)
    os.chmod(exp, 0o777)
    assert "can be written by other users (mode 0o777)" in _error(
        capsys, ["search", "--resume", str(exp)]
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    "state, reason",
    [
        (
            '{"trial_data": [',
            "cannot be read (Expecting value: line 1 column 17 (char 16)); the file is damaged",
        ),
        ("[1, 2]", "holds no trial list; the file is damaged, or from another Ray version"),
        (
            '{"trial_data": [["only one half"]]}',
            "holds a trial entry Tune did not write (not enough values to unpack (expected 2, "
            "got 1)); the file is damaged, or from another Ray version",
        ),
    ],
)
def test_resume_refuses_a_damaged_tune_state(tmp_path, capsys, state, reason):
    """A state file cut off by a killed driver (or not Tune's) is refused before Ray starts."""
    import ray

    exp, marker = _planted_experiment(tmp_path, with_state=True)
    name = "experiment_state-2026-12-02_00-00-00.json"  # the newest: the one Tune restores
    (exp / name).write_text(state)
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg == f"cannot resume {exp}: its Tune state {name} {reason}"
    assert not marker.exists() and not ray.is_initialized()


@pytest.mark.ray
def test_resume_of_a_damaged_tuner_pkl_is_one_line(tmp_path):
    exp, _ = _planted_experiment(tmp_path, with_state=True)
    (exp / "tuner.pkl").write_bytes(b"\x80\x05\x95")  # cut off while written
    before = sorted(p.name for p in exp.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "raymmft.cli", "search", "--resume", str(exp)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: cannot resume {exp}: Tune's pickled state (tuner.pkl) cannot be read "
        "(UnpicklingError: pickle data was truncated); the file is damaged"
    )
    assert "Traceback" not in result.stderr
    assert (exp / "tuner.pkl").read_bytes() == b"\x80\x05\x95"
    assert set(before) <= {p.name for p in exp.iterdir()}  # nothing of it removed


def test_resume_refuses_an_experiment_of_another_user(tmp_path, capsys, monkeypatch):
    exp, marker = _planted_experiment(tmp_path, with_state=True)
    if os.geteuid() == 0:  # give the file to another user
        os.chown(exp / "tuner.pkl", 4242, 4242)
        owner = 4242
    else:  # only root can give a file away: be another user instead, for the files made here
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)
        owner = real
    msg = _error(capsys, ["search", "--resume", str(exp)])
    assert msg.startswith(f"cannot resume {exp}: ") and not marker.exists()
    if owner == 4242:
        assert msg.startswith(
            f"cannot resume {exp}: {exp / 'tuner.pkl'} belongs to another user (uid 4242)"
        )
    else:  # the folder itself is the first item checked
        assert msg.startswith(f"cannot resume {exp}: {exp} belongs to another user (uid {owner})")


# ---------------------------------------------------------------- 2. weights


def _weights(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


def _tiny_state(**changes):
    from raymmft.model import build_model

    torch.manual_seed(0)
    state = build_model("raymmft-tiny").model.state_dict()
    return {**state, **changes}


EVALUATE = ["--arch", "raymmft-tiny", "--id", "builtin:shapes?split=test&classes=id&per_class=1"]
EVALUATE += ["--ood", "builtin:shapes?split=test&classes=far_ood&per_class=2", "--scores", "mcm"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "random.pt",
            os.urandom(512),
            "cannot load pretrained weights {p}: not a PyTorch state dict file (",
        ),
        ("empty.pt", b"", "cannot load pretrained weights {p}: the file is empty"),
        ("dict.pt", {}, "pretrained weights {p} hold no tensors"),
        ("list.pt", [1, 2, 3], "pretrained weights {p} hold a list, not a state dict"),
        (
            "garbage.safetensors",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage",
            "cannot load pretrained weights {p}: not a safetensors file (",
        ),
    ],
)
def test_weights_that_do_not_load(tmp_path, capsys, name, content, message):
    path = _weights(tmp_path, name, content)
    msg = _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(path)])
    assert msg.startswith(message.format(p=path)), msg


def test_weights_in_a_torchscript_archive(tmp_path, capsys):
    """OpenAI's original checkpoints are TorchScript archives: the error says how to convert one."""
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    assert _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(path)]) == (
        f"cannot load pretrained weights {path}: a TorchScript archive (OpenAI's original "
        "checkpoint format), which open_clip reads only through open_clip.load_openai_model; "
        "save its state dict once and give that file (README, Pretrained weights)"
    )


def test_weights_of_another_architecture(tmp_path, capsys):
    from raymmft.model import build_model

    small = _weights(tmp_path, "small.pt", build_model("raymmft-small").model.state_dict())
    msg = _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(small)])
    assert msg.startswith(f"pretrained weights {small} do not fit raymmft-tiny: ")
    assert "mismatched" in msg and "e.g. '" in msg


def test_weights_that_are_not_finite(tmp_path, capsys):
    nan = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in _tiny_state().items()
    }
    path = _weights(tmp_path, "nan.pt", nan)
    msg = _error(capsys, ["evaluate", *EVALUATE, "--pretrained", str(path)])
    assert msg.startswith(f"pretrained weights {path} hold non-finite values (NaN or inf) in ")


def test_search_tries_the_weights_before_any_trial(tmp_path, capsys):
    good = _weights(tmp_path, "good.pt", _tiny_state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    path = _config(tmp_path, model={"pretrained": str(truncated)})
    msg = _error(capsys, ["search", str(path)])
    assert msg.startswith(f"cannot load pretrained weights {truncated}: ")
    assert not (tmp_path / "results" / "sbase").exists()


# ---------------------------------------------------------------- 3. numbers


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=.inf", "train.lr: Input should be a finite number, got inf"),
        ("train.lam=.inf", "train.lam: Input should be a finite number, got inf"),
        ("train.lam=.nan", "train.lam: Input should be a finite number, got nan"),
        ("eval.temperature=.inf", "eval.temperature: Input should be a finite number, got inf"),
        (
            "model.temperature=1e6",
            "model.temperature: must be in [0.01, 1] (CLIP clamps the logit scale 1/tau to "
            "[1, 100]), got 1000000.0",
        ),
        (
            "model.temperature=1e-12",
            "model.temperature: must be in [0.01, 1] (CLIP clamps the logit scale 1/tau to "
            "[1, 100]), got 1e-12",
        ),
        (
            "search.objectives=[{metric: id_acc, weight: .nan}]",
            "search.objectives[0].weight: Input should be a finite number, got nan",
        ),
        # YAML's true is not 1: pydantic's lax mode would read it so
        ("train.epochs=true", "train.epochs: must be a number, got true"),
        ("eval.temperature=false", "eval.temperature: must be a number, got false"),
        ("train.seed=-1", "train.seed: Input should be greater than or equal to 0, got -1"),
        (
            "train.seed=1180591620717411303424",  # 2**70: no generator takes it
            "train.seed: Input should be less than or equal to 4294967295, got "
            "1180591620717411303424",
        ),
        ("eval.scores=[mcm, energy, mcm]", "eval.scores: score 'mcm' given twice"),
        (
            "search.objectives=[{metric: id_acc}, {metric: id_acc, mode: min}]",
            "search.objectives: metric 'id_acc' given twice",
        ),
    ],
)
def test_numbers_and_lists_of_the_wrong_kind(tmp_path, capsys, override, message):
    path = _config(tmp_path)
    assert _error(capsys, ["train", str(path), "--set", override]) == f"{path}: {message}"


def test_set_on_a_searched_field_is_an_error(tmp_path, capsys):
    path = _config(tmp_path)
    msg = _error(capsys, ["search", str(path), "--set", "train.lam=.nan"])
    assert msg == f"{path}: train.lam: Input should be a finite number, got nan"
    msg = _error(capsys, ["search", str(path), "--set", "train.lam=0.5"])
    assert msg == (
        "--set train.lam: the field is searched (search.space); give its range there, or drop "
        "it from search.space to fix its value"
    )


def test_seeds_of_the_commands_are_checked_like_the_configs(tmp_path, capsys):
    assert _error(capsys, ["evaluate", *EVALUATE, "--seed", "-1"]) == (
        "--seed must be in [0, 2**32 - 1], got -1"
    )
    assert _error(capsys, ["pretrain-world", "--out", str(tmp_path / "w.pt"), "--seed", "-3"]) == (
        "--seed must be in [0, 2**32 - 1], got -3"
    )


# ---------------------------------------------------------------- 4. search space


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"train.schedule": {"loguniform": [1, 10]}},
            "search.space: train.schedule: loguniform [1, 10] can give 1, but train.schedule: "
            "Input should be 'cosine' or 'constant', got 1",
        ),
        (
            {"train.epochs": {"loguniform": [1, 10]}},
            "search.space: train.epochs: loguniform gives non-integer values but train.epochs "
            "takes integers; use randint or choice",
        ),
        (
            {"train.lr": {"uniform": [-1, 1]}},
            "search.space: train.lr: uniform [-1, 1] can give -1, but train.lr: must be > 0, got -1.0",
        ),
        (
            {"train": {"choice": [{"lr": 0.1}]}},
            "search.space: 'train' is a section, not a field; search its fields (e.g. train.epochs)",
        ),
        (
            {"eval.templates": {"choice": [["no slot here"]]}},
            "search.space: eval.templates: choice [['no slot here']] can give ['no slot here'], "
            "but eval.templates[0]: must contain exactly one '{}', got 'no slot here'",
        ),
    ],
)
def test_every_value_a_space_can_give_is_checked(tmp_path, capsys, space, message):
    path = _config(tmp_path, search={"space": space})
    assert _error(capsys, ["search", str(path)]) == f"{path}: {message}"


@pytest.mark.parametrize(
    "search, message",
    [
        (
            {"space": {"train.lam": {"uniform": [0, 1]}, "train.lr": -1}},
            "search.space: train.lr: the fixed value -1 is refused: train.lr: must be > 0, got -1.0",
        ),
        (
            {"space": {"train.lam": {"uniform": [0, 1]}, "search.num_samples": {"choice": [1, 2]}}},
            "search.space: 'search.num_samples' cannot be searched: the search section belongs to "
            "the whole search, not to one trial",
        ),
        (
            {"space": {"train.lam": {"uniform": [0, 1]}}, "initial_points": [{"train.lam": 2}]},
            "search.initial_points[0]: train.lam = 2 is outside its distribution {uniform: [0, 1]}",
        ),
        (
            {
                "space": {"train.epochs": {"choice": [1, 2]}},
                "initial_points": [{"train.epochs": 3}],
            },
            "search.initial_points[0]: train.epochs = 3 is outside its distribution "
            "{choice: [1, 2]}",
        ),
    ],
)
def test_space_values_points_and_rungs_are_checked(tmp_path, capsys, search, message):
    path = _config(tmp_path, search=search)
    assert _error(capsys, ["search", str(path)]) == f"{path}: {message}"


def test_a_grace_period_past_the_last_report_is_stated(tmp_path, capsys):
    """A quick run (``--set train.epochs=1``) of a config whose ASHA waits 3 evaluations runs,
    and says that ASHA stops nothing, instead of clamping without a word."""
    from raymmft.config_file import load_config
    from raymmft.search import trial_scheduler

    cfg = load_config(_config(tmp_path, search={"asha": {"grace_period": 3}}))
    scheduler = trial_scheduler(cfg)
    assert scheduler._max_t == 1
    assert capsys.readouterr().out == (
        "note: search.asha.grace_period is 3 evaluations but a trial reports 1 (train.epochs 1, "
        "eval.every_n_epochs 1): ASHA stops no trial in this search\n"
    )


def test_a_space_of_fixed_values_only_is_not_a_search(tmp_path, capsys):
    path = _config(tmp_path, search={"space": {"train.lam": 0.5}})
    assert _error(capsys, ["search", str(path)]) == (
        "search.space gives only fixed values (train.lam): give at least one field a "
        "distribution ({uniform: [low, high]}, {choice: [...]}, ...), or run the fixed values "
        "with raymmft train"
    )


def test_bounds_yaml_reads_as_strings_are_numbers(tmp_path):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; the config takes it as the number it spells,
    as it does for a plain field, and the space keeps numbers."""
    from raymmft.config_file import load_config

    text = (
        _config(tmp_path)
        .read_text()
        .replace("uniform:\n      - 0.0\n      - 1.0", "loguniform: [1e-4, 3e-1]")
    )
    assert "loguniform: [1e-4, 3e-1]" in text
    path = tmp_path / "strings.yaml"
    path.write_text(text + "\n")
    assert yaml.safe_load(text)["search"]["space"]["train.lam"] == {"loguniform": ["1e-4", "3e-1"]}
    cfg = load_config(path)
    assert cfg.search.space["train.lam"] == {"loguniform": [1e-4, 0.3]}
    dist = cfg.search.distributions["train.lam"]
    assert dist.extremes() == [1e-4, 0.3] and dist.contains(0.01) and not dist.contains(0.5)


def test_a_choice_of_architectures_is_checked_before_any_trial(tmp_path, capsys):
    space = {"model.arch": {"choice": ["raymmft-tiny", "not-an-arch"]}}
    path = _config(tmp_path, search={"space": space})
    msg = _error(capsys, ["search", str(path)])
    assert msg.startswith(
        "search.space: model.arch can be 'not-an-arch': unknown architecture 'not-an-arch'"
    )


def test_objectives_must_be_metrics_trials_report(tmp_path, capsys):
    path = _config(
        tmp_path,
        search={"objectives": [{"metric": "no_such_metric"}], "asha": {"metric": "id_acc"}},
    )
    msg = _error(capsys, ["search", str(path)])
    assert msg.startswith(
        f"{path}: search.objectives[0].metric: 'no_such_metric' is not a metric trials report "
        "(e.g. id_acc, ood_auroc, score, ood_fpr95, "
    )
    path = _config(tmp_path, search={"asha": {"metric": "ood_auroc/near"}})
    assert "search.asha.metric: 'ood_auroc/near' is not a metric" in _error(
        capsys, ["search", str(path)]
    )


@pytest.mark.parametrize("content", [None, "# nothing\n\n"])
def test_the_neglabel_corpus_is_resolved_before_any_trial(tmp_path, capsys, content):
    words = tmp_path / "words.txt"
    if content is not None:
        words.write_text(content)
    path = _config(
        tmp_path,
        eval={"scores": ["neglabel"], "ood_score": "neglabel", "neglabel": {"corpus": str(words)}},
    )
    msg = _error(capsys, ["search", str(path)])
    if content is None:
        assert msg.startswith(f"unknown NegLabel corpus '{words}' (known: wordnet, world, ")
    else:
        assert msg == f"NegLabel corpus file {words} holds no words (one word per line)"
    assert not (tmp_path / "results" / "sbase").exists()


# ---------------------------------------------------------------- 5. resources


def test_searched_resources_are_checked_over_their_range(tmp_path, capsys):
    cpus = os.cpu_count()
    space = {"train.lam": {"uniform": [0, 1]}, "resources.num_workers": {"choice": [1, 2 * cpus]}}
    path = _config(tmp_path, search={"space": space})
    started = time.time()
    msg = _error(capsys, ["search", str(path)])
    assert time.time() - started < 60
    assert msg == (
        f"a trial needs {2 * cpus} CPU (resources.num_workers={2 * cpus} x cpus_per_worker) but "
        f"the cluster has {cpus}; lower resources.num_workers or resources.cpus_per_worker"
    )


def test_gpus_without_gpus_per_worker(tmp_path, capsys):
    path = _config(tmp_path, resources={"use_gpu": True, "gpus_per_worker": 0})
    assert _error(capsys, ["search", str(path)]) == (
        f"{path}: resources: resources.use_gpu is true but resources.gpus_per_worker is 0.0; "
        "give each worker a GPU share > 0, or set use_gpu: false"
    )


@pytest.mark.parametrize("address", ["not a host", "127.0.0.1:99999", "head-node", ":6379"])
def test_an_address_that_is_not_one(tmp_path, capsys, address):
    import ray

    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--address", address]) == (
        f"--address {address!r}: expected 'auto', HOST:PORT or ray://HOST:PORT (a port in 1-65535)"
    )
    assert not ray.is_initialized()


def test_an_optuna_storage_that_cannot_be_opened(tmp_path, capsys):
    import ray

    path = _config(tmp_path, search={"optuna_storage": "nosuchdb://host/study"})
    assert _error(capsys, ["search", str(path)]) == (
        "search.optuna_storage 'nosuchdb://host/study': cannot open the study storage (Can't "
        "load plugin: sqlalchemy.dialects:nosuchdb)"
    )
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


@pytest.mark.slow  # a fresh interpreter through the CLI
def test_an_unreachable_cluster_fails_fast(tmp_path):
    path = _config(tmp_path)
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "raymmft.cli", "search", str(path), "--address", "127.0.0.1:1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.time() - started < 40
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot reach a Ray cluster at 127.0.0.1:1 (connection refused); start one with "
        "`ray start --head`, or leave out --address to start Ray here"
    )


# ---------------------------------------------------------------- 6. paths


def test_a_config_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    data = _config(tmp_path).read_bytes().replace(b"raymmft-tiny", b"raymmft-t\xffny")
    path.write_bytes(data)
    at = data.index(b"\xff")
    line, column = data[:at].count(b"\n") + 1, at - data[:at].rfind(b"\n")
    assert _error(capsys, ["search", str(path)]) == (
        f"{path}: not UTF-8 text (byte 0xff at line {line}, column {column})"
    )


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    from test_report import make_experiment

    exp = make_experiment(tmp_path / "e")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _error(capsys, ["report", str(exp), "--out", str(blocker)]) == (
        f"--out {blocker}: is a file, not a directory"
    )
    assert _error(capsys, ["report", str(exp), "--out", str(blocker / "sub")]) == (
        f"--out {blocker / 'sub'}: cannot create it ({blocker} is a file)"
    )
    started = time.time()
    assert _error(capsys, ["evaluate", *EVALUATE, "--out", str(tmp_path)]) == (
        f"--out {tmp_path}: is a directory, not a file"
    )
    assert _error(capsys, ["evaluate", *EVALUATE, "--out", str(blocker / "r.json")]) == (
        f"--out {blocker / 'r.json'}: cannot create it ({blocker} is a file)"
    )
    assert time.time() - started < 10, "refused before the evaluation ran"
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")
    assert _error(capsys, ["convert-parquet", str(folder), str(blocker)]) == (
        f"OUT {blocker}: is a file, not a directory"
    )


def test_a_key_given_twice_in_the_yaml(tmp_path, capsys):
    """PyYAML keeps the last of two equal keys without a word; the config refuses it."""
    path = _config(tmp_path)
    text = path.read_text()
    lines = text.splitlines()
    path.write_text(text + "model: {arch: raymmft-small}\n")
    assert _error(capsys, ["search", str(path)]) == (
        f"{path}: YAML syntax error at line {len(lines) + 1}, column 1: key 'model' given twice "
        "in one mapping"
    )
    merged = tmp_path / "merge.yaml"  # a merge key (<<) still overrides, as YAML says
    merged.write_text(
        "base: &b {arch: raymmft-tiny, temperature: 0.05}\nmodel: {<<: *b, temperature: 0.1}\n"
    )
    from raymmft.config_file import UniqueKeyLoader

    assert yaml.load(merged.read_text(), Loader=UniqueKeyLoader)["model"]["temperature"] == 0.1


def test_a_set_value_that_is_not_yaml(tmp_path, capsys):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--set", "train.lr=[1"]) == (
        "--set train.lr: cannot parse value '[1' as YAML: expected ',' or ']', but got "
        "'<stream end>'"
    )


def test_more_outputs_and_options_checked_before_the_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert _error(capsys, ["compare-world", "--out", str(tmp_path), "--lams", "0"]) == (
        f"--out {tmp_path}: is a directory, not a file"
    )
    assert _error(capsys, ["compare-world", "--threads", "0"]) == "--threads must be >= 1, got 0"
    assert _error(capsys, ["evaluate", *EVALUATE, "--neg-cache", str(blocker)]) == (
        f"--neg-cache {blocker}: is a file, not a directory"
    )
    assert _error(capsys, ["evaluate", *EVALUATE, "--device", "tpu"]) == (
        "--device 'tpu': expected auto, cpu, cuda, cuda:N or mps"
    )
    if not torch.cuda.is_available():
        assert _error(capsys, ["evaluate", *EVALUATE, "--device", "cuda:1"]) == (
            "--device cuda:1: no CUDA GPU is visible here; use --device cpu"
        )
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")
    inside = folder / "shards"
    assert _error(capsys, ["convert-parquet", str(folder), str(inside)]) == (
        f"OUT {inside} is inside ROOT {folder}: the shards would become a class folder of the "
        "ImageFolder; write them elsewhere"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["cat"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["evaluate", *EVALUATE, "--batch-size", "abc"],
            "raymmft evaluate: argument --batch-size: invalid int value: 'abc' (see raymmft "
            "evaluate --help)",
        ),
        (
            ["evaluate", "--arch", "raymmft-tiny", "--id", "builtin:shapes"],
            "raymmft evaluate: the following arguments are required: --ood (see raymmft "
            "evaluate --help)",
        ),
        (
            ["search", "--set"],
            "raymmft search: argument --set: expected one argument (see raymmft search --help)",
        ),
    ],
)
def test_a_flag_the_parser_refuses_is_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_name_too_long_for_a_file(tmp_path, capsys):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--name", "x" * 300]) == (
        "--name: experiment name is 300 bytes long; at most 255 are allowed"
    )


# ---------------------------------------------------------------- 7. other silent acceptances


def test_an_empty_name(tmp_path, capsys):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--name", ""]) == "--name: experiment name is empty"


@pytest.mark.parametrize(
    "name, message",
    [
        ("   ", "experiment name '   ' starts or ends with white space"),
        (" demo", "experiment name ' demo' starts or ends with white space"),
        ("a\nb", "experiment name 'a\\nb' contains a control character ('\\n')"),
        ("a\x00b", "experiment name 'a\\x00b' contains a control character ('\\x00')"),
    ],
)
def test_a_name_that_is_blank_or_holds_control_characters(tmp_path, capsys, name, message):
    path = _config(tmp_path)
    assert _error(capsys, ["search", str(path), "--name", name]) == f"--name: {message}"


def _image_folder(root: Path, classes) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(2):
            __import__("PIL.Image").Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(
                root / c / f"{i}.png"
            )
    return root


def test_an_id_set_of_one_class(tmp_path, capsys):
    one = _image_folder(tmp_path / "one", ["cat"])
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
    train = _image_folder(tmp_path / "train", ["cat", "dog"])
    val = _image_folder(tmp_path / "val", val_classes)
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


def test_convert_parquet_refuses_a_folder_that_holds_other_files(tmp_path, capsys):
    folder = tmp_path / "folder"
    (folder / "cat").mkdir(parents=True)
    __import__("PIL.Image").Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _error(capsys, ["convert-parquet", str(folder), str(out)]) == (
        f"OUT {out}: the directory is not empty (it holds notes.txt); give a new or empty one"
    )
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


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


@pytest.mark.ray
def test_a_failed_training_run_is_one_line_and_exit_1(tmp_path):
    """A run that starts and fails (lr 1e4 diverges to a NaN loss) is not a traceback."""
    path = _config(tmp_path, train={"epochs": 3, "lr": 1.0e4}, search={"space": {"train.seed": 0}})
    result = subprocess.run(
        [sys.executable, "-m", "raymmft.cli", "train", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    # the weights diverge: a NaN loss, or NaN logits at the first evaluation
    assert errors[0].startswith("error: training failed: worker rank 0: ")
    assert "NaN" in errors[0] or "nan" in errors[0]
