"""Replies of remote control as a person reads them (``taskq inspect``, ``control``,
``status``), in the layout of Celery's commands::

    ->  celery@host1: OK
        pong

    1 node online.
"""

from __future__ import annotations

import json
from typing import Any


def _block(value: Any) -> list[str]:
    if isinstance(value, dict) and set(value) == {"ok"}:
        text = value["ok"]
        return str(text).splitlines() if isinstance(text, str) else _json(text)
    if isinstance(value, list):
        if not value:
            return ["- empty -"]
        return [f"* {json.dumps(item, default=str)}" for item in value]
    return _json(value)


def _json(value: Any) -> list[str]:
    return json.dumps(value, indent=4, sort_keys=True, default=str).splitlines()


def nodes(replies: dict[str, Any]) -> str:
    """``{hostname: reply}`` as text, one block per worker, errors marked."""
    lines = []
    for name in sorted(replies):
        reply = replies[name]
        if isinstance(reply, dict) and "error" in reply:
            lines.append(f"->  {name}: ERROR")
            lines.append(f"        {reply['error']}")
            continue
        lines.append(f"->  {name}: OK")
        lines.extend(f"        {line}" for line in _block(reply))
    count = len(replies)
    lines += ["", f"{count} node{'s' if count != 1 else ''} online."]
    return "\n".join(lines)
