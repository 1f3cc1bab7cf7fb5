"""The packages are layered webapp -> evaluation -> finetune: imports run one way, none back (no cycle).

Every import is read from the source (function-level imports included, which hide cycles from Python itself).
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("finetune", "evaluation", "webapp")
# What each package may import from the project; anything else is an edge against the layering.
ALLOWED = {"finetune": set(), "evaluation": {"finetune"}, "webapp": {"finetune", "evaluation"}}


def imported_packages(path: Path) -> set[str]:
    """The project packages that the module at ``path`` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in PACKAGES)
    return found


def package_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]], int]:
    """(package -> packages it imports, (from, to) -> modules doing it, modules read)."""
    graph = {package: set() for package in PACKAGES}
    witnesses: dict[tuple[str, str], list[str]] = {}
    modules = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules += 1
            for target in imported_packages(path) - {package}:
                graph[package].add(target)
                witnesses.setdefault((package, target), []).append(str(path.relative_to(ROOT)))
    return graph, witnesses, modules


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as a path (first node repeated at the end), or [] when there is none."""

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, path + [node])
            if cycle:
                return cycle
        return []

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return []


def test_packages_import_one_way_only():
    graph, witnesses, modules = package_graph()
    assert modules > 50  # every module of the three packages was read
    against = {edge: where for edge, where in witnesses.items() if edge[1] not in ALLOWED[edge[0]]}
    assert not against, f"imports against the layering webapp -> evaluation -> finetune: {against}"
    assert find_cycle(graph) == []
    assert graph == {"finetune": set(), "evaluation": {"finetune"}, "webapp": {"finetune", "evaluation"}}


def test_the_cycle_finder_finds_a_hidden_function_level_cycle(tmp_path):
    """The check itself: a function-level import back up the layers is found and reported as a cycle."""
    module = tmp_path / "tasks.py"
    module.write_text("def score():\n    from evaluation.metrics import f1\n    return f1\n")
    assert imported_packages(module) == {"evaluation"}
    graph = {"finetune": {"evaluation"}, "evaluation": {"finetune"}, "webapp": {"evaluation"}}
    assert find_cycle(graph) == ["evaluation", "finetune", "evaluation"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules that the module at ``path`` imports anywhere in its body (``from package import module``
    counts as importing that module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def module_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    paths = {module_name(path, root): path for package in packages for path in (root / package).rglob("*.py")}
    return {name: imported_modules(path, set(paths)) - {name} for name, path in paths.items()}


def test_no_two_modules_import_each_other_even_through_others():
    graph = module_graph(ROOT, PACKAGES)
    assert len(graph) > 50 and "webapp.runner.loop" in graph["webapp.runner.__main__"]
    assert find_cycle(graph) == []


def test_the_module_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "queue.py").write_text("from pkg import control\n")
    (tmp_path / "pkg" / "control.py").write_text("def status():\n    from pkg.loop import Runner\n")
    (tmp_path / "pkg" / "loop.py").write_text("from pkg.queue import enqueue\n")
    assert find_cycle(module_graph(tmp_path, ("pkg",))) == ["pkg.control", "pkg.loop", "pkg.queue", "pkg.control"]


# finetune's own layers, bottom up: a module imports only from its own layer or the ones below. The public face
# (the recipe, Check, sweeps, demo checkpoints) sits on the parts it assembles, and the parts on the config and the
# run directory contract.
FINETUNE_LAYERS = (
    (
        "config and contract",
        (
            "finetune.errors",
            "finetune.checks",
            "finetune.coercion",
            "finetune.config",
            "finetune.rundir",
            "finetune.task_kinds",
        ),
    ),
    (
        "parts",
        (
            "finetune.data",
            "finetune.training",
            "finetune.tasks",
            "finetune.metrics",
            "finetune.export",
            "finetune.inference",
        ),
    ),
    (
        "public face",
        ("finetune.train", "finetune.preflight", "finetune.sweep", "finetune.tiny_checkpoints", "finetune.reproduce"),
    ),
)


def finetune_layer(module: str) -> int:
    """The index in FINETUNE_LAYERS of the layer holding ``module`` (a module or anything under a package named)."""
    for index, (_, prefixes) in enumerate(FINETUNE_LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of FINETUNE_LAYERS: place it")


def imports_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for every finetune import that runs up a layer."""
    return sorted(
        (name, target)
        for name, targets in graph.items()
        if name.startswith("finetune.") and name != "finetune"
        for target in targets
        if target.startswith("finetune.") and finetune_layer(target) > finetune_layer(name)
    )


def test_finetune_imports_never_run_up_a_layer():
    graph = module_graph(ROOT, ("finetune",))
    assert "finetune.training.engine" in graph["finetune.train"]  # the graph holds the sub-packages' modules
    assert imports_up(graph) == []


def test_an_import_up_a_layer_is_found():
    graph = {"finetune.data.loading": {"finetune.preflight"}, "finetune.preflight": {"finetune.data.loading"}}
    assert imports_up(graph) == [("finetune.data.loading", "finetune.preflight")]
