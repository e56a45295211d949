"""Chords on the Redis result backend, in Celery's keys, so Celery and taskq workers
can each run any part of the other's chords.

Celery's Redis backend (5.7) keeps a chord's state next to the saved group key
``celery-taskset-meta-<group id>``:

* ``.s``: the header size, written by the producer before it sends the header;
* ``.j``: a sorted set of each finished header task's outcome, scored by its
  ``group_index``: the serialized list ``[1, task_id, state, result]``;
* ``.d``: the set of ``<task_id>:<group_index>`` already counted, so a task that runs
  twice (redelivered) counts once;
* ``.t``: a correction to the size (``Task.add_to_chord``), usually absent;
* ``.c``: the claim. The part whose return makes ``.j`` as large as ``.s`` + ``.t``
  sets it (``SET NX`` with a deadline) and sends the body; afterwards it holds
  ``done`` for a while and the other keys are deleted, so a late duplicate changes
  nothing.

taskq uses these keys for every chord whose results are in Redis, whoever made it.
One difference, which Celery workers tolerate: when a header task fails, taskq
decides the chord at once (it claims ``.c`` and fails the body) instead of waiting
for the other header tasks; their parts then find ``.c`` taken and do nothing.

The scripts are written for taskq from the key layout above.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from taskq.backends.chords import ChordPart
from taskq.redisclient.client import millis

if TYPE_CHECKING:
    import redis

__all__ = ["RedisChords"]

#: Seconds a claim holds while its owner sends the body (with publish retries).
CLAIM_SECONDS = 60
#: Seconds ``.c`` says ``done`` after the body was sent or the chord failed.
DONE_SECONDS = 300

# KEYS: j, t, s, d, c. ARGV: member, value, score, expires ms (0: none), size hint
# (0: none; a taskq producer's message carries the size too), claim token, claim ms.
# Returns {ready, total (-1: no size), claimed}.
_PART = """
if redis.call('GET', KEYS[5]) == 'done' then
    return {-1, -1, 0}
end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
    redis.call('SADD', KEYS[4], ARGV[1])
end
local size = redis.call('GET', KEYS[3])
if not size and tonumber(ARGV[5]) > 0 then
    size = ARGV[5]
    redis.call('SET', KEYS[3], size)
end
local expires = tonumber(ARGV[4])
if expires > 0 then
    for i = 1, 4 do
        redis.call('PEXPIRE', KEYS[i], expires)
    end
end
local ready = redis.call('ZCARD', KEYS[1])
if not size then
    return {ready, -1, 0}
end
local total = tonumber(size) + tonumber(redis.call('GET', KEYS[2]) or '0')
local claimed = 0
if ready >= total and redis.call('SET', KEYS[5], ARGV[6], 'NX', 'PX', ARGV[7]) then
    claimed = 1
end
return {ready, total, claimed}
"""

# KEYS: c, j, t, s, d. ARGV: claim token, done ms. Deletes the chord's state and
# marks it done, if the caller still holds the claim. Returns 1 when it did.
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'PX', ARGV[2])
return 1
"""

# KEYS: c. ARGV: claim token. Gives a claim back (the body could not be sent).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisChords:
    """Celery's chord keys on one Redis result backend (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        expires: float | None,
        translate: Callable[[str], AbstractContextManager[None]],
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._expires = expires
        self._translate = translate  # redis-py errors -> BackendError
        self._part = client.register_script(_PART)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def _key(self, group_id: str, suffix: str) -> str:
        return f"{self._prefix}celery-taskset-meta-{group_id}{suffix}"

    def _keys(self, group_id: str, *suffixes: str) -> list[str]:
        return [self._key(group_id, suffix) for suffix in suffixes]

    def set_size(self, group_id: str, size: int) -> None:
        """Before the header is sent: its size, and no claim left from an earlier run
        of the same (frozen) chord."""
        expires = None if self._expires is None else millis(self._expires)
        with self._translate(f"start chord {group_id}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._key(group_id, ".c"))
            pipe.set(self._key(group_id, ".s"), size, px=expires)
            pipe.execute()

    def add_part(
        self, group_id: str, task_id: str, index: int | None, value: bytes, *, size_hint: int = 0
    ) -> ChordPart:
        """Count one header task's outcome (``value``: the serialized
        ``[1, task_id, state, result]``) and claim the chord if that completes it."""
        score = "+inf" if index is None else str(index)
        token = uuid.uuid4().hex
        with self._translate(f"count a part of chord {group_id}"):
            ready, total, claimed = self._part(
                keys=self._keys(group_id, ".j", ".t", ".s", ".d", ".c"),
                args=[
                    f"{task_id}:{score}",
                    value,
                    score,
                    0 if self._expires is None else millis(self._expires),
                    size_hint,
                    token,
                    CLAIM_SECONDS * 1000,
                ],
            )
        return ChordPart(int(ready), int(total), token if claimed else None)

    def claim(self, group_id: str) -> str | None:
        """Claim the chord to decide it now (a header task failed); None when it was
        decided or claimed already."""
        token = uuid.uuid4().hex
        with self._translate(f"claim chord {group_id}"):
            taken = self._client.set(
                self._key(group_id, ".c"), token, nx=True, px=CLAIM_SECONDS * 1000
            )
        return token if taken else None

    def parts(self, group_id: str) -> list[bytes]:
        """Every counted outcome, in ``group_index`` order."""
        with self._translate(f"read the parts of chord {group_id}"):
            values = self._client.zrange(self._key(group_id, ".j"), 0, -1)
        return cast("list[bytes]", values)

    def finish(self, group_id: str, token: str) -> bool:
        """The chord is decided: drop its state and mark it done (if ``token`` still
        holds the claim)."""
        keys = self._keys(group_id, ".c", ".j", ".t", ".s", ".d")
        with self._translate(f"finish chord {group_id}"):
            return bool(self._finish(keys=keys, args=[token, DONE_SECONDS * 1000]))

    def release(self, group_id: str, token: str) -> None:
        """Give a claim back, so the retried header task can claim it again."""
        with self._translate(f"release chord {group_id}"):
            self._release(keys=[self._key(group_id, ".c")], args=[token])
