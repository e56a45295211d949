"""docs/celery-compatibility.md stays true.

Each API table of the page (``<!-- api: NAME -->`` before it) lists every public name
of one part of the installed Celery, as ``supported``, ``different`` or ``not
supported``; this test checks that no name is missing or extra, and that taskq has
what the page says it has, and lacks what it says it lacks. The settings table
(between ``<!-- settings:begin -->`` and ``<!-- settings:end -->``) is generated
from ``taskq.config.Settings`` and ``taskq.celery_names``; after changing those, run
``python -m tests.test_celery_compatibility`` to rewrite it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celery
import celery.app.task
import celery.canvas
import celery.result
import celery.signals
from celery.app import defaults as celery_defaults
from celery.bin.celery import celery as celery_cli

import taskq
import taskq.signals
from taskq import App, GroupResult
from taskq.celery_names import DIFFERENT, GAPS
from taskq.cli import main as taskq_cli
from taskq.config import Settings
from taskq.context import Context

PAGE = Path(__file__).parent.parent / "docs" / "celery-compatibility.md"
STATUSES = ("supported", "different", "not supported")
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
# Celery's top-level names that are module plumbing, not API.
CELERY_TOP_PLUMBING = {
    "bugreport", "execute", "local", "log", "maybe_patch_concurrency", "messaging",
    "registry", "version_info", "version_info_t", "SERIES", "VERSION", "VERSION_BANNER",
}  # fmt: skip


def public(obj: Any, skip: Any = ()) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_") and name not in dir(skip)}


def taskq_objects() -> dict[str, Any]:
    app = App("compat", broker="memory://", backend="memory://")
    task = app.task(name="compat.add")(lambda x, y: x + y)
    return {
        "app": app,
        "task": task,
        "request": Context(),
        "signature": task.s(1, 2),
        "result": app.AsyncResult("x"),
        "group_result": GroupResult("g", [], app=app),
        "signals": taskq.signals,
        "cli": set(taskq_cli.commands),
        "top": taskq,
    }


#: api table -> (Celery's public names, how to ask taskq for one of them)
def sections() -> dict[str, tuple[set[str], Callable[[str], bool]]]:
    ours = taskq_objects()

    def has(key: str, rename: dict[str, str] | None = None) -> Callable[[str], bool]:
        target = ours[key]
        return lambda name: hasattr(target, (rename or {}).get(name, name))

    group_only = public(celery.result.GroupResult) - public(celery.result.AsyncResult)
    top = {n for n in celery.__all__ if not n.startswith("_")} - CELERY_TOP_PLUMBING
    return {
        "app": (public(celery.Celery), has("app")),
        "task": (public(celery.app.task.Task), has("task")),
        "request": (public(celery.app.task.Context), has("request")),
        "signature": (public(celery.canvas.Signature, skip=dict), has("signature")),
        "result": (public(celery.result.AsyncResult), has("result")),
        "group_result": (group_only, has("group_result")),
        "signals": (set(celery.signals.__all__), has("signals")),
        "cli": (set(celery_cli.commands), lambda name: name in ours["cli"]),
        "top": (top, has("top", {"Celery": "App"})),
    }


def tables(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """api name -> {Celery name: (status, note)} as the page has them."""
    found: dict[str, dict[str, tuple[str, str]]] = {}
    current: dict[str, tuple[str, str]] | None = None
    for line in text.splitlines():
        marker = re.match(r"<!-- api: (\w+) -->", line)
        if marker:
            current = found.setdefault(marker.group(1), {})
            continue
        row = re.match(r"\| `([\w.]+)` \| (supported|different|not supported) \| (.*) \|$", line)
        if row and current is not None:
            current[row.group(1)] = (row.group(2), row.group(3))
        elif not line.startswith("|"):
            current = None if line.startswith("#") else current
    return found


def test_every_celery_name_is_on_the_page_and_the_page_is_true() -> None:
    page = tables(PAGE.read_text())
    problems = []
    for api, (names, taskq_has) in sections().items():
        rows = page.get(api, {})
        problems += [f"{api}: {n} is missing from the page" for n in sorted(names - set(rows))]
        problems += [f"{api}: {n} is not Celery's" for n in sorted(set(rows) - names)]
        for name, (status, note) in sorted(rows.items()):
            if name not in names:
                continue
            if status != "supported" and not note:
                problems.append(f"{api}: {name} is {status} but says neither how nor why")
            if status in ("supported", "different") and not taskq_has(name):
                problems.append(f"{api}: {name} is marked {status} but taskq has no such thing")
            if status == "not supported" and taskq_has(name):
                problems.append(f"{api}: {name} is marked not supported but taskq has it")
    assert not problems, "docs/celery-compatibility.md is out of date:\n" + "\n".join(problems)


def settings_block() -> str:
    """The generated settings section of the page."""
    fields = set(Settings.__dataclass_fields__)
    lines = [
        BEGIN,
        "| setting | taskq | how, or why not |",
        "| --- | --- | --- |",
    ]
    for name in sorted(celery_defaults.DEFAULTS):
        if name in fields:
            status, note = (
                ("different", DIFFERENT[name]) if name in DIFFERENT else ("supported", "")
            )
        else:
            gap = GAPS[name]
            quiet = ", ".join(f"`{value!r}`" for value in gap.same)
            status, note = (
                "not supported",
                gap.reason + (f" (no warning for {quiet})" if quiet else ""),
            )
        lines.append(f"| `{name}` | {status} | {note} |")
    own = sorted(fields - set(celery_defaults.DEFAULTS))
    lines += [
        "",
        "taskq's own settings, which Celery does not have: "
        + ", ".join(f"`{name}`" for name in own)
        + " (see [configuration](configuration.md)).",
        END,
    ]
    return "\n".join(lines)


def test_the_settings_table_is_generated_from_taskqs_tables() -> None:
    text = PAGE.read_text()
    assert BEGIN in text and END in text
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == settings_block(), (
        "the settings table is stale: run python -m tests.test_celery_compatibility"
    )


if __name__ == "__main__":
    text = PAGE.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    PAGE.write_text(text[:start] + settings_block() + text[end:])
    sys.stdout.write(f"rewrote the settings table of {PAGE}\n")
