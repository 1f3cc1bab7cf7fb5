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
