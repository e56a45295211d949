"""Imports flow one way (see STYLE.md): errors -> config/serialization -> message ->
result -> broker/backends -> task -> app -> worker/beat -> testing -> cli.

Every import counts, at module level and inside functions, except those under
``if TYPE_CHECKING:`` (types only, never run). An import of a higher layer is
allowed only when ``UPWARD`` lists it with its reason. Nothing in the package
imports names from the root ``taskq`` or anything from ``taskq.cli`` (but the
entry point ``taskq.__main__``, which patches first and then runs the CLI), and no
module imports, at run time, a module that imports it back. Tests import no
private name from taskq unless ``PRIVATE_IN_TESTS`` lists it with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "taskq"

#: Lowest first. An entry names a subpackage or module of ``taskq``; a dotted entry
#: ranks one part of a subpackage apart from the rest of it.
LAYERS = [
    ["errors", "version", "urls", "monkey"],
    ["celery_names", "queues", "config", "serialization", "solar", "signals", "arguments"],
    ["message", "routing", "schedules", "context"],
    ["security"],
    ["result", "canvas"],
    ["redisclient"],
    # Events travel beside the broker (kombu broadcasts); producers and workers send them.
    ["broker", "backends", "events", "metrics"],
    # Running one task: the worker's executor, also what Task.apply runs.
    ["worker.executor", "worker.policy", "worker.ratelimit", "worker.limits"],
    ["task"],
    ["producer", "control"],
    ["integrations", "discovery", "shared", "app"],
    ["worker", "beat", "loader"],
    ["testing"],
    # The web dashboard reads events, the broker, beat and remote control.
    ["dashboard"],
    ["cli", "__main__"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

#: Imports of a higher layer that are allowed, each with its reason:
#: (importing module, imported module) -> why.
UPWARD: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "taskq"
    for end in range(len(parts), 1, -1):  # the most specific entry wins
        name = ".".join(parts[1:end])
        if name in RANK:
            return RANK[name]
    return len(LAYERS)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def run_time_imports(tree: ast.Module) -> Iterator[tuple[int, str, list[str]]]:
    """Every ``taskq`` import that runs, wherever it is; not those under TYPE_CHECKING."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("taskq"):
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("taskq"):
                    yield node.lineno, alias.name, []


def targets(module: str, names: list[str]) -> list[str]:
    """The modules an import loads: ``from taskq.x import y`` loads taskq.x.y when y
    is a submodule, else taskq.x."""
    base = PACKAGE.parent.joinpath(*module.split("."))
    subs = [
        n
        for n in names
        if base.joinpath(n).with_suffix(".py").exists() or base.joinpath(n).is_dir()
    ]
    return [f"{module}.{n}" for n in subs] + (
        [module] if len(subs) < len(names) or not names else []
    )


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, for every run-time import."""
    edges: dict[str, dict[str, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        found = edges.setdefault(name, {})
        for line, target, names in run_time_imports(ast.parse(path.read_text())):
            for t in targets(target, names):
                found.setdefault(t, line)
    return edges


def test_imports_flow_one_way() -> None:
    problems = []
    for name, imported in graph().items():
        if name == "taskq":
            continue
        own = layer_of(name)
        for target, line in imported.items():
            if target == "taskq":
                problems.append(f"{name}:{line} imports names from the taskq root")
            elif target.startswith("taskq.cli") and name not in ("taskq.cli", "taskq.__main__"):
                problems.append(f"{name}:{line} imports {target}")
            elif layer_of(target) > own and (name, target) not in UPWARD:
                problems.append(f"{name}:{line} imports {target} from a higher layer")
    assert not problems, "\n".join(problems)


def test_every_allowed_upward_import_is_still_there() -> None:
    edges = graph()
    stale = [pair for pair in UPWARD if pair[1] not in edges.get(pair[0], {})]
    assert not stale, f"remove from UPWARD: {stale}"


def test_no_import_cycle_at_run_time() -> None:
    """No module imports (at module level or in a function) a module that, through
    its own run-time imports, imports it back. A package's ``__init__`` counts as
    importing the submodules it names."""
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


#: Private names tests import from taskq, each with its reason: (test file, name) -> why.
PRIVATE_IN_TESTS: dict[tuple[str, str], str] = {
    ("test_broker_sqlite.py", "_enable_wal"): (
        "SQLite broker: the retry around PRAGMA journal_mode=WAL is tested with a "
        "connection double; the race it guards against (processes switching a new file "
        "to WAL at once) shows in about 1 process in 100, too rarely to provoke"
    ),
}


def test_tests_import_no_private_names() -> None:
    """Tests use taskq the way users do: through public names. What a test needs to
    see, it sees in the server (Redis keys, CLIENT LIST) or through the public API."""
    tests = Path(__file__).parent
    found: set[tuple[str, str]] = set()
    for path in sorted(tests.rglob("*.py")):
        for _, module, names in run_time_imports(ast.parse(path.read_text())):
            parts = module.split(".") + names
            for name in parts:
                if name.startswith("_") and not name.startswith("__"):
                    found.add((str(path.relative_to(tests)), name))
    assert found <= PRIVATE_IN_TESTS.keys(), (
        f"private names imported: {found - PRIVATE_IN_TESTS.keys()}"
    )
    stale = PRIVATE_IN_TESTS.keys() - found
    assert not stale, f"remove from PRIVATE_IN_TESTS: {stale}"
