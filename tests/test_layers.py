"""Imports flow one way (see STYLE.md): errors -> config/serialization -> message ->
result -> broker/backends -> task -> app -> worker/beat -> testing -> cli.

Only module-level imports count; a function may import a higher layer lazily
(for example the eager path of ``Task.apply``). Nothing in the package imports
names from the root ``taskq`` or anything from ``taskq.cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "taskq"

LAYERS = [
    ["errors", "version", "urls"],
    ["config", "serialization", "solar"],
    ["message", "routing", "schedules"],
    ["result", "canvas"],
    ["broker", "backends"],
    ["task"],
    ["producer", "control"],
    ["app"],
    ["worker", "beat_locks", "beat", "signals"],
    ["testing"],
    ["cli"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "taskq"
    return RANK[parts[1]] if len(parts) > 1 else len(LAYERS)


def module_level_imports(tree: ast.Module) -> list[tuple[int, str, list[str]]]:
    found: list[tuple[int, str, list[str]]] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("taskq"):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("taskq")]
    return found


def test_imports_flow_one_way() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name == "taskq":
            continue
        own = layer_of(name)
        for line, target, names in module_level_imports(ast.parse(path.read_text())):
            if target == "taskq":
                submodules = [
                    n
                    for n in names
                    if (PACKAGE / n).with_suffix(".py").exists() or (PACKAGE / n).is_dir()
                ]
                if submodules != names:
                    problems.append(f"{name}:{line} imports names from the taskq root")
                targets = [f"taskq.{n}" for n in names]
            else:
                targets = [target]
            for t in targets:
                if t.startswith("taskq.cli") and name != "taskq.cli":
                    problems.append(f"{name}:{line} imports {t}")
                elif layer_of(t) > own:
                    problems.append(f"{name}:{line} imports {t} from a higher layer")
    assert not problems, "\n".join(problems)
