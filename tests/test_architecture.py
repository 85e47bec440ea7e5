"""The package's imports flow one way: export, tasks -> inference -> models -> modules -> errors
(criterions sit beside tasks and may use models and modules). A function-local import of
nar_refine is how a cycle hides, so there is none."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nar_refine"
# layer of each subpackage: a module may import only from layers strictly below its own
LAYER = {"errors": 0, "compat": 0.5, "dictionaries": 0.7, "modules": 1, "input_checks": 1,
         "training_checks": 1, "models": 2, "inference": 3, "criterions": 3, "export": 3.5,
         "tasks": 4, "hub": 5, "__init__": 6}


def layer_of(module_parts):
    return LAYER[module_parts[0]] if module_parts else LAYER["__init__"]


def nar_imports(tree):
    """(node, ['models', 'lanmt', ...]) for every import of nar_refine in a module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nar_refine"):
            yield node, node.module.split(".")[1:] or [alias.name for alias in node.names][:1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nar_refine."):
                    yield node, alias.name.split(".")[1:]


def test_imports_flow_one_way_and_none_hides_in_a_function():
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("").parts
        own = layer_of(rel if rel[-1] != "__init__" or len(rel) > 1 else ())
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node, target in nar_imports(tree):
            where = f"{path.relative_to(PKG.parent)}:{node.lineno}"
            if id(node) in local:
                problems.append(f"{where}: function-local import of nar_refine.{'.'.join(target)}")
            same_package = target[0] == rel[0]
            if not same_package and layer_of(target) >= own:
                problems.append(f"{where}: {rel[0]} (layer {own}) imports {target[0]} "
                                f"(layer {layer_of(target)})")
    assert not problems, "\n".join(problems)


def test_the_error_type_lives_at_the_bottom():
    from nar_refine.errors import NARConfigError
    from nar_refine.tasks.nar_translation import NARConfigError as from_task

    assert from_task is NARConfigError and issubclass(NARConfigError, ValueError)
