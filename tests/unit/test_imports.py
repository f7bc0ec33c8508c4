"""The shape of the code: model_lib imports one way, at module top. (The layers between
packages: import-linter's contracts in pyproject.toml, run by `make lint`. The torch-free
modules and the service imported for real, without torch (and the service without
pandas): tests/model/test_module_isolation.py.)"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter

import pytest

from catdog_runtime.processes import ROOT
from tests.modules import LAYERS, MODEL_LIB, TORCH_FREE


def model_lib_imports(name: str) -> tuple[set[str], list[int]]:
    """(model_lib modules `name` imports, line numbers of imports below module level)."""
    tree = ast.parse((ROOT / "model_lib" / f"{name}.py").read_text())
    imported, nested = set(), []
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if id(node) not in top_level:
            nested.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "model_lib":
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("model_lib."):
            imported.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            imported |= {
                a.name.split(".")[1] for a in node.names if a.name.startswith("model_lib.")
            }
    return imported, nested


def test_model_lib_has_no_import_cycle_and_imports_only_at_module_top():
    graph, nested = {}, {}
    for name in MODEL_LIB:
        graph[name], lines = model_lib_imports(name)
        if lines:
            nested[name] = lines
    assert nested == {}, f"imports inside functions (module:lines): {nested}"
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        pytest.fail(f"import cycle: {cycle.args[1]}")
    assert set(order) == set(MODEL_LIB)
    for index, layer in enumerate(LAYERS):
        above = set(LAYERS[index + 1 :]) & graph[layer]
        assert not above, f"{layer} imports {above}, which sit above it"
    for name in TORCH_FREE:
        assert not graph[name] & set(LAYERS), f"{name} imports the training stack"


def test_each_module_of_the_training_stack_is_there_because_it_imports_torch():
    """LAYERS is the list of torch users: each imports torch or a module below it."""
    for index, layer in enumerate(LAYERS):
        tree = ast.parse((ROOT / "model_lib" / f"{layer}.py").read_text())
        imports_torch = any(
            (isinstance(node, ast.Import) and any(a.name == "torch" for a in node.names))
            or (isinstance(node, ast.ImportFrom) and node.module == "torch")
            for node in tree.body
        )
        below = set(LAYERS[:index]) & model_lib_imports(layer)[0]
        assert imports_torch or below, f"{layer} uses no torch: move it to the torch-free part"


def top_level_names(path) -> set[str]:
    """What `from <module> import name` can take from this file: its top-level
    definitions, assignments and imports."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_name_imported_from_model_lib_exists():
    """Scripts (loop demo, screenshots, traffic) have no test that imports them: a name
    moved between model_lib modules would break them only when a user runs them."""
    defined = {name: top_level_names(ROOT / "model_lib" / f"{name}.py") for name in MODEL_LIB}
    missing = []
    for folder in ("catdog_runtime", "flows", "bench", "bento", "model_lib", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                module = getattr(node, "module", None) or ""
                if not (isinstance(node, ast.ImportFrom) and module.startswith("model_lib.")):
                    continue
                source = module.split(".")[1]
                missing += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {alias.name} from {module}"
                    for alias in node.names
                    if alias.name not in defined.get(source, set())
                ]
    assert missing == []
