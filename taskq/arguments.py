"""Checking a call's arguments against a task's signature before it is sent.

``delay()`` and ``apply_async()`` check (as Celery does, unless the task says
``typing=False``), so a wrong call fails where it is made, with a ``TypeError``,
instead of in a worker later. The check is a function generated once per task
with the task's parameters and an empty body: Python's own call machinery does
the checking for about the cost of one empty call, where
``inspect.Signature.bind`` costs about 2 us a call, a measurable share of a
``delay()`` (bench/delay_micro.py). Generating functions from source text is
what ``dataclasses`` and ``collections.namedtuple`` do for the same reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["checker"]

_KIND = inspect.Parameter


def checker(fn: Callable[..., Any], *, bound: bool) -> Callable[..., None] | None:
    """A function that accepts exactly the arguments ``fn`` accepts and does nothing.

    Calling it with arguments ``fn`` would refuse raises the ``TypeError`` Python
    raises for ``fn`` ("add() missing 1 required positional argument: 'y'").

    Args:
        fn: the task's function.
        bound: the task is bound (``bind=True``): its first parameter is the task
            itself, not an argument of the call.

    Returns:
        The checker, or None when ``fn`` has no signature to check against (some
        builtins and C functions).
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())[1 if bound else 0 :]
    name = getattr(fn, "__name__", "")
    if not name.isidentifier():  # a lambda, a partial: name the checker plainly
        name = "task"
    namespace: dict[str, Any] = {"_default": None}
    # The source holds only parameter names (identifiers, as inspect gives them)
    # and markers; default values are never written out, so nothing user-supplied
    # is evaluated.
    exec(f"def {name}({_parameter_list(parameters)}):\n    pass\n", namespace)  # noqa: S102
    check: Callable[..., None] = namespace[name]
    return check


def _parameter_list(parameters: Sequence[inspect.Parameter]) -> str:
    """``x, y=_default, /, *args, z, **kw`` for the parameters, defaults elided."""
    parts: list[str] = []
    star = False  # a bare * or a *args already separates the keyword-only ones
    for index, parameter in enumerate(parameters):
        kind = parameter.kind
        if kind is _KIND.VAR_POSITIONAL:
            parts.append(f"*{parameter.name}")
            star = True
            continue
        if kind is _KIND.VAR_KEYWORD:
            parts.append(f"**{parameter.name}")
            continue
        if kind is _KIND.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        default = "" if parameter.default is _KIND.empty else "=_default"
        parts.append(f"{parameter.name}{default}")
        following = parameters[index + 1].kind if index + 1 < len(parameters) else None
        if kind is _KIND.POSITIONAL_ONLY and following is not _KIND.POSITIONAL_ONLY:
            parts.append("/")
    return ", ".join(parts)
