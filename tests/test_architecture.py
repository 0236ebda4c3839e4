"""The package's layering (docs/architecture.md), read from the source.

Static checks, no Keras needed: which module imports which (deferred imports
included, imports for type checkers only excluded), where TensorFlow, JAX,
torch and Keras internals are touched, and that importing keras_prune or
its command line does not import Keras (which would fix the backend).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_prune"

# docs/architecture.md's rows, bottom first: a module may import modules of
# lower rows only (the app's arrows are rows of APP_LAYERS).
LAYERS = [
    {"_backend", "_keras", "_validation", "_files", "_tfevents"},
    {"_layer_copy"},
    {
        "masks",
        "model_class",
        "selection",
        "schedules",
        "registry",
        "_forward_pass",
        "sparsity_distribution",
        "structured.flatten",
        "structured.blocks",
        "structured.heads",
    },
    {"global_pruning", "structured.graph", "structured.importance"},
    {"wrapper", "structured.channel_mask"},
    {"policy"},
    {"prune", "report", "saving", "structured.shrink"},
    {"callbacks", "kps", "sensitivity", "structured.prune_channels"},
    {"runtimes", "tfmot"},
    {"__init__"},
]
APP_LAYERS = [
    {"compare.results", "compare.stats", "compare.datasets", "compare.task"},
    {"compare.plots", "compare.experiment"},
    {"compare.cli"},
]
PRIVATE_KERAS = (
    "keras.src",
    "_flatten_layers",
    "_get_call_context",
    "_trainable_variables",
    "_non_trainable_variables",
    "_call_has_training_arg",
    "_track_variable",
    "._layout",
    "._layers",
    "._tracker",
    "_query_dense",
    "_key_dense",
    "_value_dense",
    "._gate_dense",  # and as a name: (KerasHub's "feedforward_gate_dense" is public)
    '"_gate_dense"',
    "._output_dense",  # (KerasHub's blocks name a sublayer "feedforward_output_dense")
    "_inbound_nodes",
    "_outbound_nodes",
    "_keras_history",
    "_nodes_by_depth",
    "._functional",
    "_run_through_graph",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        found[name] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def _imports(path: Path) -> set[str]:
    """Every keras_prune module `path` imports, at any depth of the code."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    names = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = _modules()
    return {
        name.removeprefix("keras_prune.")
        for name in names
        if name.startswith("keras_prune.") and name.removeprefix("keras_prune.") in modules
    }


def _row(name: str, layers: list[set[str]]) -> int:
    return next(i for i, row in enumerate(layers) if name in row)


def test_every_module_is_in_a_layer():
    listed = set().union(
        *LAYERS, *APP_LAYERS, {"__main__", "compare.__init__", "structured.__init__"}
    )
    assert set(_modules()) == listed


@pytest.mark.parametrize("name", sorted(set().union(*LAYERS)))
def test_library_modules_import_only_lower_layers(name):
    row = _row(name, LAYERS)
    for imported in _imports(_modules()[name]):
        assert not imported.startswith("compare"), f"{name} imports the app ({imported})"
        assert _row(imported, LAYERS) < row or name == "__init__", f"{name} imports {imported}"


@pytest.mark.parametrize("name", sorted(set().union(*APP_LAYERS)))
def test_app_modules_import_only_lower_layers(name):
    row = _row(name, APP_LAYERS)
    for imported in _imports(_modules()[name]):
        if imported.startswith("compare"):
            assert _row(imported, APP_LAYERS) < row, f"{name} imports {imported}"


def test_the_import_graph_has_no_cycle():
    graph = {name: _imports(path) for name, path in _modules().items()}
    done: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, "import cycle: " + " -> ".join((*stack, name))
        if name in done:
            return
        for imported in graph.get(name, ()):
            visit(imported, (*stack, name))
        done.add(name)

    for name in graph:
        visit(name, ())


@pytest.mark.parametrize("name", sorted(_modules()))
def test_backends_and_keras_internals_have_one_door_each(name):
    source = _modules()[name].read_text()
    tree = ast.parse(source)
    imported = {
        alias.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for alias in n.names
    }
    imported |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }
    if name != "_backend":
        assert not imported & {"tensorflow", "jax", "torch"}, name
    if name != "_keras":
        code = "\n".join(line.split("#")[0] for line in source.splitlines())
        used = [word for word in PRIVATE_KERAS if word in code]
        assert not used, f"{name} uses Keras internals {used}; go through keras_prune._keras"


@pytest.mark.parametrize(
    "statement",
    ["import keras_prune", "from keras_prune.compare import cli", "import keras_prune.__main__"],
)
def test_importing_the_package_or_its_cli_does_not_import_keras(statement):
    code = f"import sys; {statement}; print('keras' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
