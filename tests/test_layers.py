"""provision/ is layered: a package imports only from the layers below it, and no module
imports itself back through others (function-level imports included). This test is the
map of the layers; a new package or provider gets its line here."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Lower layers never import higher ones; packages in the same layer never import each other.
LAYERS = [
    {"errors"},
    {"files", "yamlmarks", "yamltext"},
    {"userdata", "image"},          # what a user-data means; the machine image
    {"spec"},                       # the cluster file -> typed model
    {"pki"},                        # the cluster's CA and certificates
    {"render", "apply", "machine", "box"},
    {"providers"},                  # local processes, nspawn, vagrant
    {"cli"},
]
# The one upward import: a provider owns its default network and network rule, and the
# cluster model asks the PROVIDERS table for them (the table imports a provider's module
# only when that provider is asked for).
ALLOWED_UPWARD = {("provision.spec.build", "provision.providers")}
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def _modules(top: str) -> dict[str, Path]:
    found = {}
    for path in (REPO / top).rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph(top: str) -> dict[str, set[str]]:
    modules = _modules(top)
    return {name: {i for i in _imports(path, name) if i in modules and i != name}
            for name, path in modules.items()}


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_provision_package_has_a_layer():
    packages = {_package(m) for m in _modules("provision") if m != "provision"}
    assert packages <= set(LAYER_OF), f"give these a layer: {sorted(packages - set(LAYER_OF))}"


def test_provision_packages_import_only_lower_layers():
    wrong = []
    for module, imported in _graph("provision").items():
        if module == "provision":
            continue
        mine = LAYER_OF[_package(module)]
        for other in imported:
            theirs = _package(other)
            if other == "provision" or theirs == _package(module):
                continue
            if (module, other) in ALLOWED_UPWARD:
                continue
            if LAYER_OF[theirs] >= mine:
                wrong.append(f"{module} imports {other}")
    assert not wrong, "\n".join(sorted(wrong))


def test_fleetd_never_imports_provision():
    wrong = [f"{m} imports {i}" for m, path in _modules("fleetd").items()
             for i in _imports(path, m) if i == "provision" or i.startswith("provision.")]
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules():
    for top in ("provision", "fleetd"):
        graph = _graph(top)
        # A package's __init__ re-exporting its own modules is not a cycle worth naming.
        graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
        assert not _cycles(graph), f"{top}: import cycles {_cycles(graph)}"
