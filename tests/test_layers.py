"""provision/ is layered: a package imports only from the layers below it, and no module
imports itself back through others (function-level imports included). This test is the
map of the layers; a new package or provider gets its line here."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Lower layers never import higher ones; packages in the same layer never import each other.
LAYERS = [
    {"errors"},
    {"files", "signals", "yamlmarks", "yamltext"},
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


def _imported(node: ast.AST, package: str) -> set[str]:
    """What an import statement names (a `from X import y` names X and X.y); else nothing."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
    return {base} | {f"{base}.{alias.name}" for alias in node.names}


def _package_of(path: Path, module: str) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


@functools.cache
def _imports(path: Path, module: str) -> set[str]:
    package = _package_of(path, module)
    return set().union(*(_imported(node, package)
                         for node in ast.walk(ast.parse(path.read_text()))))


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


# -- what a module may import from outside the project ------------------------------------

@functools.cache
def _imports_on_load(path: Path, module: str) -> set[str]:
    """The imports that run when the module is imported (function bodies skipped)."""
    package = _package_of(path, module)
    names: set[str] = set()
    pending = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= _imported(node, package)
        else:
            pending.extend(ast.iter_child_nodes(node))
    return names


@functools.cache
def _project_modules() -> dict[str, Path]:
    return {**_modules("provision"), **_modules("fleetd")}


@functools.cache
def _loaded_imports() -> dict[str, set[str]]:
    return {m: _imports_on_load(p, m) for m, p in _project_modules().items()}


def _importers_of(top_level: str) -> set[str]:
    """Project modules that import `top_level` (or one of its submodules) anywhere."""
    return {module for module, path in _project_modules().items()
            if any(i == top_level or i.startswith(top_level + ".")
                   for i in _imports(path, module))}


# etcd is spoken by fleetd/registry/ alone; these are the exceptions, each with its reason.
ETCD3_OUTSIDE_REGISTRY = {
    # A per-member health probe: a fresh client bound to ONE member's endpoint (the
    # registry's client fails over between members, which would hide the member's state).
    "provision.providers.local.health",
    # etcd's cluster membership API (member remove + add for `node reset`): cluster
    # administration, which fleet's registry has no business doing.
    "provision.providers.local.membership",
}


def test_only_the_registry_imports_etcd3():
    outside = {m for m in _importers_of("etcd3") if not m.startswith("fleetd.registry.")}
    assert outside == ETCD3_OUTSIDE_REGISTRY, (
        f"etcd3 imported outside fleetd/registry/: {sorted(outside - ETCD3_OUTSIDE_REGISTRY)}; "
        "go through fleetd.registry (or list the module here with its reason); "
        f"no longer importing it: {sorted(ETCD3_OUTSIDE_REGISTRY - outside)}")


# Decision code: data in, data out. Importing one of these must not load an I/O library,
# neither itself nor through the project modules it imports when loaded.
PURE_PACKAGES = ("provision.spec", "provision.userdata", "fleetd.unit")
PURE_MODULES = ("provision.apply.desired", "provision.apply.planner",
                "provision.apply.convergence", "provision.apply.report",
                "fleetd.engine.scheduler", "fleetd.agent.reconcile")
IMPURE = ("etcd3", "pydbus", "subprocess", "socket", "threading")


def _pure_modules() -> list[str]:
    modules = _project_modules()
    found = [m for m in modules for p in PURE_PACKAGES if m == p or m.startswith(p + ".")]
    assert all(m in modules for m in PURE_MODULES), "a pure module moved: update PURE_MODULES"
    return sorted(found + list(PURE_MODULES))


def _impure_import_chains(start: str) -> list[str]:
    modules = _project_modules()
    loaded = _loaded_imports()
    # The module's own imports count wherever they are written; the modules it loads count
    # for what they import on load.
    own = _imports(modules[start], start)
    found = [f"{start} imports {i}" for i in own if i.split(".")[0] in IMPURE]
    came_from: dict[str, str] = {start: ""}
    pending = [start]
    while pending:
        module = pending.pop()
        for name in loaded[module] | (own if module == start else set()):
            parts = name.split(".")
            for candidate in (".".join(parts[:n]) for n in range(1, len(parts) + 1)):
                if candidate in modules and candidate not in came_from:
                    came_from[candidate] = module
                    pending.append(candidate)
        if module != start:
            for name in loaded[module]:
                if name.split(".")[0] in IMPURE:
                    chain, at = [module], module
                    while came_from[at]:
                        at = came_from[at]
                        chain.append(at)
                    found.append(f"{name} <- " + " <- ".join(chain))
    return found


def test_pure_modules_import_no_io_library():
    wrong = [chain for module in _pure_modules() for chain in _impure_import_chains(module)]
    assert not wrong, "\n".join(sorted(set(wrong)))


# fleetd's HTTP API is spoken by fleetd/fleetctl/ (its client; provision's apply uses that
# client too). Other HTTP clients in the project talk to something else, and say what.
HTTP_CLIENTS_ELSEWHERE = {
    "fleetd.announce.checks": "the announced service's own HTTP health check",
    "provision.render.discovery": "the public etcd discovery service's token request",
    "provision.providers.local.discovery": "a discovery etcd's v2 keys for a token cluster",
    "provision.providers.local.supervisor": "a node etcd's /v2/stats/self, whether it is up",
    "provision.providers.nspawn.leader": "each etcd member's /v3/maintenance/status: leader?",
}


def test_only_fleetctl_speaks_http_to_fleetd():
    users = _importers_of("http.client") | _importers_of("urllib.request")
    outside = {m for m in users if not m.startswith("fleetd.fleetctl.")}
    assert outside == set(HTTP_CLIENTS_ELSEWHERE), (
        f"HTTP clients outside fleetd/fleetctl/: {sorted(outside - set(HTTP_CLIENTS_ELSEWHERE))};"
        " talk to fleetd through fleetd.fleetctl.client (or list the module here with what "
        f"it talks to); no longer HTTP clients: {sorted(set(HTTP_CLIENTS_ELSEWHERE) - outside)}")
