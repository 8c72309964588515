"""What the bad-input tests (tests/test_input_*.py) share: two configs to break (the demo search
space and a small one-trial search) and the CLI runs that return its one-line error."""

from __future__ import annotations

from pathlib import Path

import yaml

from raymmft.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())


def _run(tmp_path, capsys, mutate, *extra) -> str:
    """`raymmft search` on the demo config changed by ``mutate``: its one-line error (exit 2)."""
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
    """SMALL with ``sections`` merged in, written to ``tmp_path / "sbase.yaml"``."""
    raw = yaml.safe_load(yaml.safe_dump(SMALL))
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    raw["storage"] = {"path": str(tmp_path / "results"), **raw.get("storage", {})}
    path = tmp_path / "sbase.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _error(capsys, argv: list[str], code: int = 2) -> str:
    """The CLI's one-line error for ``argv``, which must exit with ``code``."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").rstrip("\n")


EVALUATE = ["--arch", "raymmft-tiny", "--id", "builtin:shapes?split=test&classes=id&per_class=1"]
EVALUATE += ["--ood", "builtin:shapes?split=test&classes=far_ood&per_class=2", "--scores", "mcm"]
