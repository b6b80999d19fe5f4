"""The package's layers: data flows down, nothing flows up, no import cycles.

    kernels, utils            (no imports from the package)
    layers                    -> kernels
    models                    -> layers, kernels
    data                      -> models, layers, kernels  (tokenizers for text pipelines)
    evaluation, convert       -> models, layers, kernels
    training                  -> data, models, layers, kernels
    shapes                    -> data, evaluation, models, layers, kernels
    keras_tipsv2/__init__, visualize: the public entry points, anything.
"""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_tipsv2")
BOTTOM = {"kernels", "utils"}
ALLOWED = {
    "kernels": set(),
    "utils": set(),
    "layers": {"kernels", "utils"},
    "models": {"layers", "kernels", "utils"},
    "training": {"data", "models", "layers", "kernels", "utils"},
    "evaluation": {"models", "layers", "kernels", "utils"},
    "data": {"models", "layers", "kernels", "utils"},
    "convert": {"models", "layers", "kernels", "utils"},
    "shapes": {"data", "evaluation", "models", "layers", "kernels", "utils"},
}


def _modules():
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                yield ".".join(["keras_tipsv2", *parts]), path


def _imports(path, module):
    """Every keras_tipsv2 module `path` imports, at any depth of the file."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not path.endswith("__init__.py"):
                    package = package[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("keras_tipsv2.")}


def _package(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = dict(_modules())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_flow_down(module):
    package = _package(module)
    if package not in ALLOWED:  # keras_tipsv2/__init__, visualize: entry points
        return
    for imported in _imports(MODULES[module], module):
        target = _package(imported)
        assert target == package or target in ALLOWED[package], (
            f"{module} imports {imported}: {package}/ may import only from "
            f"{sorted(ALLOWED[package])}"
        )


def test_no_module_import_cycles():
    graph = {
        module: {i for i in _imports(path, module) if i in MODULES and i != module}
        for module, path in MODULES.items()
    }
    # A package's __init__ importing its own modules is not a cycle.
    for module in graph:
        graph[module] = {i for i in graph[module] if not module.startswith(i + ".")}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
