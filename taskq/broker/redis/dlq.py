"""The Redis broker's dead-letter list: JSON entries, oldest first.

An entry records the message's delivery tag (its id here), queue, source list
(its priority list), the reason, the time, and the payload byte for byte (as
text, or base64 when it is not UTF-8), so a requeue puts back exactly what came.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from typing import Any, cast

from taskq.broker.base import DeadLetter
from taskq.broker.envelope import decode_payload, malformed
from taskq.broker.redis.scripts import REQUEUE_DEAD
from taskq.broker.redis.session import Session

__all__ = ["DeadLetterList", "dead_letter_entry"]

_PAGE = 500


def dead_letter_entry(tag: str, queue: str, source: str, payload: bytes, reason: str) -> str:
    """The JSON the dead-letter list keeps for one message."""
    entry: dict[str, Any] = {
        "id": tag,
        "queue": queue,
        "list": source,
        "reason": reason,
        "time": time.time(),
    }
    try:
        entry["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        entry["payload_base64"] = base64.b64encode(payload).decode("ascii")
    return json.dumps(entry)


class DeadLetterList:
    """Listing, requeueing and purging the dead-letter list (``<key_prefix>dlq``).

    Args:
        session: the broker's session (client, keys, error reporting).
    """

    def __init__(self, session: Session) -> None:
        client = session.client
        self._session = session
        self._client = client
        self._key = session.keys.dlq
        self._requeue_script = client.register_script(REQUEUE_DEAD)

    def list(self, limit: int) -> list[DeadLetter]:
        """Parked messages, oldest first."""
        if limit < 1:
            return []
        with self._session.translate("list dead letters"):
            entries = cast(list[bytes], self._client.lrange(self._key, 0, limit - 1))
        return [_dead_letter_from(raw) for raw in entries]

    def requeue(self, ids: Sequence[str] | None) -> int:
        """LPUSH parked messages back onto their lists (all when ``ids`` is None).

        Only the entries parked when it began are looked at: one a running worker
        dead-letters again meanwhile joins the end of the list and waits for the next
        call, rather than bouncing between its queue and here (issue 12)."""
        wanted = None if ids is None else set(ids)
        tried: set[str] = set()
        moved, offset = 0, 0
        with self._session.translate("requeue dead letters"):
            left = int(self._client.llen(self._key))  # entries to look at
            while left > 0 and (wanted is None or wanted - tried):
                end = offset + min(_PAGE, left) - 1
                page = cast(list[bytes], self._client.lrange(self._key, offset, end))
                if not page:
                    break
                left -= len(page)
                args: list[Any] = []
                for raw in page:
                    parsed = _parse(raw)
                    if parsed is None or parsed[0] in tried:
                        continue
                    if wanted is None or parsed[0] in wanted:
                        tried.add(parsed[0])
                        args += [raw, parsed[1], parsed[2]]
                count, errors = self._requeue_script([self._key], args) if args else (0, [])
                moved += count
                offset += len(page) - count
                if errors:
                    self._session.log_refused("requeue dead letters", errors)
        return moved

    def purge(self) -> int:
        """Delete every parked message; return how many."""
        with self._session.translate("purge dead letters"):
            pipe = self._client.pipeline(transaction=True)
            pipe.llen(self._key)
            pipe.delete(self._key)
            count, _ = pipe.execute()
        return int(count)


def _parse(raw: bytes) -> tuple[str, str, bytes, dict[str, Any]] | None:
    """``(id, list, payload, entry)`` of an entry; None when it is unreadable."""
    try:
        entry = json.loads(raw)
        if "payload" in entry:
            payload = entry["payload"].encode("utf-8")
        else:
            payload = base64.b64decode(entry["payload_base64"])
        return str(entry["id"]), str(entry["list"]), payload, entry
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _dead_letter_from(raw: bytes) -> DeadLetter:
    parsed = _parse(raw)
    if parsed is None:
        reason = "unreadable dead-letter entry"
        return DeadLetter(id="", queue="", reason=reason, envelope=malformed(raw, reason), time=0.0)
    tag, _, payload, entry = parsed
    return DeadLetter(
        id=tag,
        queue=str(entry.get("queue", "")),
        reason=str(entry.get("reason", "")),
        envelope=decode_payload(payload),
        time=float(entry.get("time", 0.0)),
    )
