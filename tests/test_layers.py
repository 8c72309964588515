"""The package's structure: a static import graph without cycles, layers that import only downward,
a core that runs without Ray, and a results layer (``raymmft report``) that loads neither torch
nor Ray."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raymmft"

# lowest first: a module may import its own layer and the ones before it
LAYERS = {
    "core": (
        "raymmft.errors",
        "raymmft.faults",
        "raymmft.storage",
        "raymmft.lease",
        "raymmft.progress",
        "raymmft.text",
        "raymmft.objectives",
        "raymmft.search_space",
        "raymmft.config",
        "raymmft.config_file",
        "raymmft.model",
        "raymmft.losses",
        "raymmft.text_tower",
        "raymmft.distributed",
        "raymmft.interpolation",
        "raymmft.checkpoint",
        "raymmft.finetune",
        "raymmft.evaluation",
        "raymmft.data",
        "raymmft.ood",
    ),
    "results": ("raymmft.results",),
    "run": (
        "raymmft.loop",
        "raymmft.prepare",
        "raymmft.preflight",
        "raymmft.neglabel_corpus",
        "raymmft.tensorboard_log",
        "raymmft.world",
    ),
    "ray": (
        "raymmft.worker",
        "raymmft.trial",
        "raymmft.searcher",
        "raymmft.search",
        "raymmft.cluster",
    ),
    "commands": ("raymmft.cli", "raymmft.commands", "raymmft"),
}
ORDER = list(LAYERS)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def layer_of(module: str) -> str:
    best = max(
        (
            (prefix, layer)
            for layer, prefixes in LAYERS.items()
            for prefix in prefixes
            if module == prefix or module.startswith(prefix + ".")
        ),
        key=lambda p: len(p[0]),
    )
    return best[1]


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every raymmft module ``module`` imports, wherever the import statement is (functions
    included), except under ``if TYPE_CHECKING:``. ``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module (Python then also runs ``pkg/__init__``, which is not counted)."""
    tree = ast.parse(path.read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts if path.name == "__init__.py" else parts[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            out |= subs
            if len(subs) < len(node.names) and target in known:
                out.add(target)
    return out - {module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(m, p, set(found)) for m, p in found.items()}


def test_static_import_graph_has_no_cycle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert len(graph) > 40


def test_every_module_imports_only_its_layer_and_below(graph):
    wrong = [
        f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if ORDER.index(layer_of(d)) > ORDER.index(layer_of(m))
    ]
    assert wrong == []


def test_the_core_never_imports_the_world(graph):
    core = [m for m in graph if layer_of(m) == "core"]
    assert not [(m, d) for m in core for d in graph[m] if d.startswith("raymmft.world")]


def _fresh(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter importing torch and open_clip
def test_the_core_imports_without_ray(graph):
    core = sorted(m for m in graph if layer_of(m) == "core")
    loaded = _fresh(
        "import importlib, json, sys\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))"
    )
    assert "torch" in loaded and "raymmft" in loaded  # it did import the core
    assert "ray" not in loaded


def test_the_report_loads_neither_torch_nor_ray(tmp_path):
    from test_report import make_experiment

    exp = make_experiment(tmp_path)
    loaded = _fresh(
        "import json, sys\n"
        "from raymmft.cli import main\n"
        f"assert main(['report', {str(exp)!r}]) == 0\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))"
    )
    assert (exp / "report" / "trials.parquet").is_file()
    assert "pyarrow" in loaded and "matplotlib" in loaded
    assert "torch" not in loaded and "ray" not in loaded
