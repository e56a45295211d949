"""taskq's own Redis broker: kombu's wire format, per-consumer leases, batched Lua.

Wire format. Queues are the lists kombu's Redis transport uses, so Celery and
kombu producers and consumers share them with taskq. A message is kombu's
virtual-transport JSON envelope (body base64-encoded, a fresh uuid4
``delivery_tag``), pushed with LPUSH and taken from the other end, so FIFO.
Priority ``p`` (0-9, lower is served first, as kombu does on Redis) goes to list
``queue`` for step 0, else ``queue + "\\x06\\x16" + step`` with the largest step of
(0, 3, 6, 9) not above ``p``. ``declare`` writes the ``_kombu.binding.<queue>``
entry that routes a publish to the direct exchange named like the queue (what
Celery does) onto the list; the default exchange routes by name and needs none.

Leases. A fetch pops messages and records them in this consumer's in-flight hash
in one Lua script, so a message is always in a list or in a hash. Leases belong
to the consumer, not to the message: the consumer's deadline in the
``consumers`` zset (Redis ``TIME``, so skewed clocks agree) is renewed by every
fetch and heartbeat, and a task on a live consumer is never redelivered however
long it runs. ``heartbeat`` also reaps: for each consumer past its deadline it
pushes the in-flight and landing messages back to the consumer end of their
lists and counts a delivery for each in-flight one, in one script, so two
reapers never restore a message twice. The count is keyed by the payload's
SHA-1 (a tag is per delivery, the payload is what comes back), so identical
payloads share a count, and a count stays behind if a kombu consumer takes the
message after a reap. Landing messages are not counted: they were never handed
to the application. The lease id is
``consumer_id`` plus a per-instance random part, so a restarted worker reusing
its name never inherits (and keeps alive) its predecessor's leases.

Lost replies. A fetch's tags are ``<session>.<call number>.<i>``. When a fetch call
fails (connection reset, timeout) the script may still have run, so the next call
reuses the same call number; the script sees tags under that prefix already in
the hash and answers with those messages instead of leasing more. redis-py's own
retry (one, on a connection error or timeout) re-sends the same arguments and is
answered the same way. Without this a lost reply strands messages with a live
consumer (never reaped) and a re-sent call overwrites the first call's tags.

Blocking when idle. Lua cannot block and BLMPOP would hold the message only in
the client's socket, so the consumer blocks with ``BLMOVE <list> <landing>``:
the message is always in one list or the other. BLMOVE, then the fetch script
(which adopts landing lists into the in-flight hash and tops the batch up from
every list) go out in one pipeline: one round trip per wake-up. BLMOVE watches
one key: the first queue's priority-0 list, which is where Celery's default
messages land. Every other list (other queues, priority lists) is re-scanned
when the block times out, every ``poll_interval`` seconds (0.25 by default): an
idle consumer sees a message on the first queue within one round trip and
anywhere else within ``poll_interval``, for about four cheap script calls a
second while idle. Only one consumer wakes per message (no thundering herd).

Delayed messages. ``publish(eta=...)`` in the future goes to the ``delayed`` zset
(score ETA, member = unique id + target list + payload). Fetches promote due
members atomically inside the fetch script, at most every 0.5 s or when the
earliest ETA seen is due, so concurrent promoters never move one twice.

Costs. A busy fetch of up to N messages is one EVALSHA; an ack of a batch is one
HDEL; ``publish_many`` is one pipeline with one LPUSH per list (chunked).

Keys (besides the queue lists), all under ``key_prefix`` (default ``taskq:``)::

    consumers                          zset  lease id -> lease deadline
    inflight:<lease id>                hash  tag -> "<len>:<source list><payload>"
    landings:<lease id>                hash  landing list -> source list
    landing:<lease id>:<source list>   list  messages BLMOVE'd, not yet adopted
    deliveries                         hash  sha1(payload) -> times reaped
    delayed                            zset  "<32 hex><len>:<list><payload>" by ETA
    dlq                                list  JSON entries, oldest first

Needs Redis 6.2+ (BLMOVE, RPOP with a count). Scripts build per-consumer key
names from the prefix, so it needs a single Redis server (not Redis Cluster),
like kombu's Redis transport.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

import redis
from kombu.utils import json as kombu_json
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from taskq.broker.base import Broker, DeadLetter, Delivery, Envelope, QueueSpec
from taskq.errors import BrokerError, ConfigurationError, did_you_mean

__all__ = [
    "CRASH_AFTER_FETCH_ENV",
    "MALFORMED_CONTENT_TYPE",
    "PRIORITY_STEPS",
    "RedisBroker",
    "list_key",
]

logger = logging.getLogger(__name__)

# kombu's JSON (datetime, Decimal, UUID, bytes as {"__type__": ...} markers), so payloads
# read as kombu's do. One shared encoder: json.dumps(cls=...) would build one per message.
_json_encoder: json.JSONEncoder = kombu_json.JSONEncoder()
_kombu_loads: Callable[[bytes], Any] = kombu_json.loads

PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
MALFORMED_CONTENT_TYPE = "application/x-taskq-malformed"
# Set by the virtual transport on publish; not message metadata a task should see.
_TRANSPORT_PROPERTIES = frozenset({"body_encoding", "delivery_tag", "delivery_info"})

_PROMOTE_EVERY = 0.5  # seconds between delayed-store checks when nothing is known due
_PROMOTE_LIMIT = 1000  # due messages moved per script call
_REAP_LIMIT = 100  # dead consumers handled per heartbeat
_PUSH_CHUNK = 1000  # values per LPUSH in publish_many
_DLQ_PAGE = 500

#: Test hook (fault-injection suite only): when this environment variable is "1",
#: the process exits with status 70 (``os._exit``, no cleanup) right after a fetch
#: script that leased messages returns, before the client records anything, so the
#: tests can prove a crash in that window loses nothing. Read once per broker.
CRASH_AFTER_FETCH_ENV = "TASKQ_TEST_CRASH_AFTER_FETCH"

# Shared by the scripts. Entries are "<len>:<list key><payload>" starting at `start`.
# pcall on queue lists: a wrong-type key must not abort a script halfway, since
# Redis does not roll back the writes a script already made.
_LUA_HELPERS = r"""
local function unpack_entry(value, start)
  local colon = string.find(value, ':', start, true)
  local size = tonumber(string.sub(value, start, colon - 1))
  return string.sub(value, colon + 1, colon + size), string.sub(value, colon + size + 1)
end
local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000, t
end
"""

# KEYS: inflight, consumers, deliveries, landings, delayed, source lists in pop order.
# ARGV: lease id, lease seconds, max count, tag prefix, promote limit (0: skip).
# Returns {runs, payloads, reaped, next ETA or '', TIME seconds, TIME micros, errors}:
# runs = source list, count, ... in payload order; the i-th payload's tag is prefix .. i;
# reaped = i, times reaped, ... for the payloads the reaper gave back before. The reply
# is kept this small because parsing it is most of a fetch's client-side cost.
_FETCH = (
    _LUA_HELPERS
    + r"""
local now, t = server_now()
-- The first write: under maxmemory it fails here, before anything is popped.
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local errors, next_due = {}, ''
if tonumber(ARGV[5]) > 0 then
  local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, ARGV[5])
  for _, member in ipairs(due) do
    local dest, payload = unpack_entry(member, 33)
    local reply = redis.pcall('LPUSH', dest, payload)
    if failed(reply) then
      redis.call('ZADD', KEYS[5], now + 60, member)  -- keep it; retry in a minute
      errors[#errors + 1] = dest .. ': ' .. reply.err
    else
      redis.call('ZREM', KEYS[5], member)
    end
  end
  local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if first[2] then next_due = first[2] end
end
local runs, payloads, reaped, entries = {}, {}, {}, {}
local counted = redis.call('EXISTS', KEYS[3]) == 1
local function add(source, payload)
  local n = #payloads + 1
  payloads[n] = payload
  if counted then
    local times = redis.call('HGET', KEYS[3], redis.sha1hex(payload))
    if times then
      reaped[#reaped + 1] = n
      reaped[#reaped + 1] = tonumber(times)
    end
  end
  if runs[#runs - 1] == source then
    runs[#runs] = runs[#runs] + 1
  else
    runs[#runs + 1] = source
    runs[#runs + 1] = 1
  end
  return n
end
-- Tags under this prefix exist: an earlier run of this call leased them and its reply
-- was lost (the client asks again with the same prefix, or redis-py re-sent the call
-- after a timeout). Answer with those messages again: leasing more under the same
-- tags would overwrite them, and leaving them would strand them with a live consumer.
local entry = redis.call('HGET', KEYS[1], ARGV[4] .. 1)
if entry then
  while entry do
    local source, payload = unpack_entry(entry, 1)
    add(source, payload)
    entry = redis.call('HGET', KEYS[1], ARGV[4] .. (#payloads + 1))
  end
  return {runs, payloads, reaped, next_due, t[1], t[2], errors}
end
local function lease(source, items, from, to, step)
  local prefix = string.len(source) .. ':' .. source
  for j = from, to, step do
    local n = add(source, items[j])
    entries[#entries + 1] = ARGV[4] .. n
    entries[#entries + 1] = prefix .. items[j]
  end
end
local landings = redis.call('HGETALL', KEYS[4])
for i = 1, #landings, 2 do
  local items = redis.call('LRANGE', landings[i], 0, -1)
  if #items > 0 then
    redis.call('DEL', landings[i])
    lease(landings[i + 1], items, #items, 1, -1)  -- oldest first
  end
end
local want = tonumber(ARGV[3])
for i = 6, #KEYS do
  if #payloads >= want then break end
  local got = redis.pcall('RPOP', KEYS[i], want - #payloads)
  if failed(got) then
    errors[#errors + 1] = KEYS[i] .. ': ' .. got.err
  elseif got then
    lease(KEYS[i], got, 1, #got, 1)
  end
end
for i = 1, #entries, 1000 do
  redis.call('HSET', KEYS[1], unpack(entries, i, math.min(i + 999, #entries)))
end
return {runs, payloads, reaped, next_due, t[1], t[2], errors}
"""
)

# KEYS: consumers, deliveries. ARGV: key prefix, own lease id, lease seconds, limit.
# Returns {messages restored, errors}. A consumer whose messages could not all be
# pushed back stays in the zset, so the next heartbeat tries again.
_REAP = (
    _LUA_HELPERS
    + r"""
local now = server_now()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[4])
local restored, errors = 0, {}
for _, consumer in ipairs(dead) do
  local clean = true
  local inflight = ARGV[1] .. 'inflight:' .. consumer
  local entries = redis.call('HGETALL', inflight)
  for i = 1, #entries, 2 do
    local source, payload = unpack_entry(entries[i + 1], 1)
    local reply = redis.pcall('RPUSH', source, payload)
    if failed(reply) then
      clean = false
      errors[#errors + 1] = source .. ': ' .. reply.err
    else
      redis.call('HDEL', inflight, entries[i])
      redis.call('HINCRBY', KEYS[2], redis.sha1hex(payload), 1)
      restored = restored + 1
    end
  end
  local registry = ARGV[1] .. 'landings:' .. consumer
  local landings = redis.call('HGETALL', registry)
  for i = 1, #landings, 2 do
    -- Newest first from the left, onto the consumer end: the oldest ends next in line.
    while true do
      local reply = redis.pcall('LMOVE', landings[i], landings[i + 1], 'LEFT', 'RIGHT')
      if not reply then break end
      if failed(reply) then
        clean = false
        errors[#errors + 1] = landings[i + 1] .. ': ' .. reply.err
        break
      end
      restored = restored + 1
    end
  end
  if clean then
    redis.call('DEL', registry)
    redis.call('ZREM', KEYS[1], consumer)
  end
end
return {restored, errors}
"""
)

# KEYS: inflight. ARGV: tags, last delivered first, so the first ends next in line.
_REQUEUE = (
    _LUA_HELPERS
    + r"""
local moved, errors = 0, {}
for _, tag in ipairs(ARGV) do
  local entry = redis.call('HGET', KEYS[1], tag)
  if entry then
    local source, payload = unpack_entry(entry, 1)
    local reply = redis.pcall('RPUSH', source, payload)
    if failed(reply) then
      errors[#errors + 1] = source .. ': ' .. reply.err
    else
      redis.call('HDEL', KEYS[1], tag)
      moved = moved + 1
    end
  end
end
return {moved, errors}
"""
)

# KEYS: inflight, dlq, deliveries. ARGV: tag, DLQ entry, delivery counter field or ''.
_DEAD_LETTER = r"""
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('HDEL', KEYS[3], ARGV[3]) end
return 1
"""

# KEYS: dlq. ARGV: (entry, target list, payload) triples. LREM makes a concurrent
# requeue of the same entry a no-op; requeued messages join the back of the line.
_REQUEUE_DEAD = (
    _LUA_HELPERS
    + r"""
local moved, errors = 0, {}
for i = 1, #ARGV, 3 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    local reply = redis.pcall('LPUSH', ARGV[i + 1], ARGV[i + 2])
    if failed(reply) then
      redis.call('RPUSH', KEYS[1], ARGV[i])
      errors[#errors + 1] = ARGV[i + 1] .. ': ' .. reply.err
    else
      moved = moved + 1
    end
  end
end
return {moved, errors}
"""
)


def clamp_priority(priority: object) -> int:
    """``priority`` as kombu reads it: an int clamped to 0-9, 0 when missing or not a number."""
    try:
        value = int(cast(Any, priority) or 0)
    except (TypeError, ValueError):
        return 0
    return min(max(value, 0), 9)


def priority_step(priority: object) -> int:
    """The kombu priority step (0, 3, 6 or 9) whose list holds ``priority``."""
    value = clamp_priority(priority)
    return max(step for step in PRIORITY_STEPS if step <= value)


def list_key(queue: str, priority: object = 0) -> str:
    """The Redis list holding ``queue``'s messages of ``priority``, named as kombu does."""
    step = priority_step(priority)
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return re.sub(r"(password=)[^&]*", r"\1***", parts.geturl())


def encode_payload(envelope: Envelope, queue: str, priority: int) -> bytes:
    """The kombu virtual-transport JSON for ``envelope`` published to ``queue``.

    Raises:
        BrokerError: headers or properties are not JSON-serializable.
    """
    properties = {"delivery_mode": 2, **envelope.properties}
    for name in _TRANSPORT_PROPERTIES:
        properties.pop(name, None)
    properties.update(
        priority=priority,
        body_encoding="base64",
        delivery_info={"exchange": "", "routing_key": queue},
        delivery_tag=str(uuid.uuid4()),
    )
    message = {
        "body": base64.b64encode(envelope.body).decode("ascii"),
        "content-encoding": envelope.content_encoding,
        "content-type": envelope.content_type,
        "headers": envelope.headers,
        "properties": properties,
    }
    try:
        return _json_encoder.encode(message).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BrokerError(
            f"Cannot encode a message for queue {queue!r}: {exc}. "
            "Headers and properties must be JSON-serializable."
        ) from exc


def malformed(raw: bytes, error: str) -> Envelope:
    """An envelope carrying undecodable ``raw`` and what was wrong with it."""
    return Envelope(
        body=raw,
        content_type=MALFORMED_CONTENT_TYPE,
        content_encoding="binary",
        headers={"x-taskq-error": error},
    )


def decode_payload(raw: bytes) -> Envelope:
    """The envelope in kombu JSON ``raw``; a malformed envelope when it is not one."""
    try:
        # kombu's object hook costs a Python call per object; only markers need it.
        message = _kombu_loads(raw) if b'"__type__"' in raw else json.loads(raw.decode())
    except ValueError as exc:  # also UnicodeDecodeError and kombu's unknown __type__
        return malformed(raw, f"payload is not JSON: {exc}")
    if not isinstance(message, dict) or not isinstance(message.get("properties"), dict):
        return malformed(raw, "payload is not a kombu envelope: no 'properties' object")
    properties: dict[str, Any] = message["properties"]
    content_type = message.get("content-type")
    headers = message.get("headers") or {}
    if not isinstance(content_type, str):
        return malformed(raw, "kombu envelope has no 'content-type'")
    if not isinstance(headers, dict):
        return malformed(raw, "kombu envelope 'headers' is not an object")
    try:
        body = _decode_body(message.get("body"), properties.get("body_encoding"))
    except ValueError as exc:
        return malformed(raw, str(exc))
    return Envelope(
        body=body,
        content_type=content_type,
        content_encoding=str(message.get("content-encoding") or "utf-8"),
        headers=headers,
        properties={k: v for k, v in properties.items() if k not in _TRANSPORT_PROPERTIES},
    )


def _decode_body(body: object, encoding: object) -> bytes:
    if body is None or body == "":
        return b""
    if not isinstance(body, str):
        raise ValueError(f"kombu envelope 'body' is a JSON {type(body).__name__}, not a string")
    if encoding == "base64":
        try:
            # Not validate=True: kombu's consumers accept what b64decode accepts.
            return base64.b64decode(body)
        except binascii.Error as exc:
            raise ValueError(f"kombu envelope 'body' is not valid base64: {exc}") from exc
    if encoding in (None, "utf-8"):
        return body.encode("utf-8")
    raise ValueError(f"kombu envelope has unsupported body_encoding {encoding!r}")


def _prepare(envelope: Envelope, queue: str, priority: int | None) -> tuple[str, bytes]:
    """The list key and payload for publishing; ``priority`` None takes the envelope's."""
    value = clamp_priority(envelope.properties.get("priority") if priority is None else priority)
    return list_key(queue, value), encode_payload(envelope, queue, value)


def _pack(key: str, payload: bytes) -> bytes:
    encoded = key.encode("utf-8")
    return b"%d:%s%s" % (len(encoded), encoded, payload)


def _counter_field(payload: bytes) -> str:
    return hashlib.sha1(payload).hexdigest()


class _Lease(NamedTuple):
    """What ``Delivery.raw`` holds for this broker."""

    source: str  # the list the message came from (its priority list)
    payload: bytes


@dataclass(frozen=True)
class RedisOptions:
    """Options of ``RedisBroker``; durations in seconds."""

    key_prefix: str = "taskq:"
    lease_timeout: float = 60.0
    socket_timeout: float | None = 30.0
    socket_connect_timeout: float | None = 5.0
    max_connections: int | None = None
    poll_interval: float = 0.25

    @classmethod
    def from_mapping(cls, options: dict[str, Any]) -> RedisOptions:
        """Validated options; numbers given as strings (from a URL or env) are accepted.

        Raises:
            ConfigurationError: an unknown option or a value of the wrong kind.
        """
        known = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        options = dict(options)
        if "connect_timeout" in options:  # the name every broker accepts (see base.Broker)
            options.setdefault("socket_connect_timeout", options.pop("connect_timeout"))
        for name, value in options.items():
            if name not in known:
                raise ConfigurationError(
                    f"Unknown Redis broker option {name!r}.{did_you_mean(name, known)} "
                    f"Known: {', '.join(known)}."
                )
            values[name] = _option_value(name, value)
        return cls(**values)


def _option_value(name: str, value: Any) -> Any:
    if name == "key_prefix":
        if not isinstance(value, str):
            raise ConfigurationError(f"Redis broker option key_prefix={value!r} must be a string.")
        return value
    if value is None and name in ("socket_timeout", "socket_connect_timeout", "max_connections"):
        return None
    number: float | None
    try:
        number = int(value) if name == "max_connections" else float(value)
    except (TypeError, ValueError):
        number = None
    if name == "max_connections":
        if number is None or number < 2:
            raise ConfigurationError(
                f"Redis broker option max_connections={value!r} must be an integer of at "
                "least 2 (the consumer blocks one connection while other threads ack)."
            )
    elif number is None or not number > 0:  # also rejects NaN
        raise ConfigurationError(
            f"Redis broker option {name}={value!r} must be a positive number of seconds."
        )
    return number


@dataclass(frozen=True)
class _Keys:
    consumers: str
    inflight: str
    landings: str
    landing_prefix: str
    deliveries: str
    delayed: str
    dlq: str

    @classmethod
    def make(cls, prefix: str, lease_id: str) -> _Keys:
        return cls(
            consumers=f"{prefix}consumers",
            inflight=f"{prefix}inflight:{lease_id}",
            landings=f"{prefix}landings:{lease_id}",
            landing_prefix=f"{prefix}landing:{lease_id}:",
            deliveries=f"{prefix}deliveries",
            delayed=f"{prefix}delayed",
            dlq=f"{prefix}dlq",
        )


class RedisBroker(Broker):
    """The ``Broker`` contract on Redis lists, wire-compatible with kombu and Celery.

    Priorities: 0-9 in kombu's four steps; lower numbers are served first.
    Options: see ``RedisOptions``. The design is in the module docstring.
    """

    supports_delayed = True

    def __init__(self, url: str, *, consumer_id: str, options: dict[str, Any] | None = None):
        super().__init__(url, consumer_id=consumer_id, options=options)
        self.settings = RedisOptions.from_mapping(self.options)
        self._safe_url = mask_url(url)
        session = uuid.uuid4().hex[:16]
        self._lease_id = f"{consumer_id}.{session}"
        self._tag_base = session
        self._keys = _Keys.make(self.settings.key_prefix, self._lease_id)
        self._pool = self._make_pool(url)
        self._client = redis.Redis(connection_pool=self._pool)
        self._fetch_script = self._client.register_script(_FETCH)
        self._reap_script = self._client.register_script(_REAP)
        self._requeue_script = self._client.register_script(_REQUEUE)
        self._dead_letter_script = self._client.register_script(_DEAD_LETTER)
        self._requeue_dead_script = self._client.register_script(_REQUEUE_DEAD)
        self._calls = 0  # fetch script calls: part of every tag
        self._unanswered = False  # the last fetch call failed: reuse its tag prefix
        # Settling that failed because Redis was unreachable: (retry, what), in order.
        self._deferred: list[tuple[Callable[[], None], str]] = []
        self._deferred_lock = threading.Lock()
        self._crash_after_fetch = os.environ.get(CRASH_AFTER_FETCH_ENV) == "1"
        self._rotation = 0  # fetch calls: which queue goes first
        self._promoted_at = -math.inf  # monotonic time of the last promotion
        # Monotonic time the earliest delayed message is due. Publishing threads
        # lower it without a lock; a lost update delays promotion by at most 0.5 s.
        self._next_due = -math.inf

    def _make_pool(self, url: str) -> redis.ConnectionPool:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"Unsupported Redis URL scheme {scheme!r} in {self._safe_url!r}. "
                "Use redis://host:port/db, rediss:// for TLS, or unix:///path/to/socket."
            )
        settings = self.settings
        kwargs: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_connect_timeout,
            "client_name": f"taskq:{self._lease_id}",
            # One quick retry reconnects a pooled connection Redis dropped (restart,
            # idle timeout); more would only delay the worker's own backoff loop.
            "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=1),
        }
        try:
            if settings.max_connections is None:
                return redis.ConnectionPool.from_url(url, **kwargs)
            return redis.BlockingConnectionPool.from_url(
                url,
                max_connections=settings.max_connections,
                timeout=settings.socket_timeout,
                **kwargs,
            )
        except ValueError as exc:
            raise ConfigurationError(f"Invalid Redis URL {self._safe_url!r}: {exc}") from exc

    @contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        """Turn redis-py errors into ``BrokerError`` saying what failed and what to do."""
        try:
            yield
        except redis.AuthenticationError as exc:
            raise BrokerError(
                f"Could not {doing}: Redis at {self._safe_url} rejected the credentials "
                f"({exc}). Check the user and password in the broker URL."
            ) from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerError(
                f"Could not {doing}: Redis at {self._safe_url} is unreachable ({exc}). "
                "Check that Redis is running and the broker URL is right; workers reconnect "
                "with backoff."
            ) from exc
        except redis.RedisError as exc:
            raise BrokerError(f"Redis at {self._safe_url} refused to {doing}: {exc}") from exc

    # -- publishing -----------------------------------------------------------------

    def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Bind each queue to the direct exchange of the same name, as kombu does.

        Redis lists need no creation; the binding lets a Celery or kombu producer that
        publishes to exchange ``<queue>`` with routing key ``<queue>`` reach the list.
        ``max_priority`` is ignored (Redis always has the four priority lists).
        """
        with self._translate("declare queues"):
            pipe = self._client.pipeline(transaction=False)
            for spec in queues:
                member = PRIORITY_SEP.join([spec.name, "", spec.name])
                pipe.sadd(f"_kombu.binding.{spec.name}", member)
                # kombu >= 5.7 keeps a binding table while this set names the queue.
                pipe.sadd(f"_kombu.binding_permanent.{spec.name}", member)
            pipe.execute()

    def publish(
        self,
        envelope: Envelope,
        queue: str,
        *,
        priority: int | None = None,
        eta: float | None = None,
    ) -> None:
        """LPUSH onto the queue's list for ``priority`` (0 first), or park until ``eta``.

        ``priority`` None takes the envelope's ``priority`` property, else 0.
        """
        key, payload = _prepare(envelope, queue, priority)
        with self._translate(f"publish to queue {queue!r}"):
            if eta is not None and eta > time.time():
                member = uuid.uuid4().hex.encode("ascii") + _pack(key, payload)
                self._client.zadd(self._keys.delayed, {member: eta})
                self._next_due = min(self._next_due, time.monotonic() + eta - time.time())
            else:
                self._client.lpush(key, payload)

    def publish_many(self, items: Sequence[tuple[Envelope, str, int | None]]) -> None:
        """One pipeline; messages of one list go in order in multi-value LPUSHes."""
        by_key: dict[str, list[bytes]] = {}
        for envelope, queue, priority in items:
            key, payload = _prepare(envelope, queue, priority)
            by_key.setdefault(key, []).append(payload)
        with self._translate(f"publish {len(items)} messages"):
            pipe = self._client.pipeline(transaction=False)
            for key, payloads in by_key.items():
                for start in range(0, len(payloads), _PUSH_CHUNK):
                    pipe.lpush(key, *payloads[start : start + _PUSH_CHUNK])
            pipe.execute()

    def purge(self, queue: str) -> int:
        """Delete the queue's lists (every priority); return how many messages they held."""
        keys = [list_key(queue, step) for step in PRIORITY_STEPS]
        with self._translate(f"purge queue {queue!r}"):
            pipe = self._client.pipeline(transaction=True)
            for key in keys:
                pipe.llen(key)
            pipe.delete(*keys)
            sizes = pipe.execute()
        return sum(int(size) for size in sizes[:-1])

    # -- consuming --------------------------------------------------------------------

    def fetch(self, queues: Sequence[str], max_count: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_count`` messages; see ``Broker.fetch`` and the module doc.

        Raises:
            BrokerError: Redis is unreachable or refused the operation.
            ValueError: no queues, or ``max_count`` below 1.
        """
        if not queues or max_count < 1:
            raise ValueError(f"fetch needs queues and max_count >= 1, got {queues!r}, {max_count}")
        start = self._rotation % len(queues)
        self._rotation += 1
        ordered = [*queues[start:], *queues[:start]]  # fairness between queues
        keys = {list_key(q, step): q for step in PRIORITY_STEPS for q in ordered}
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._translate(f"fetch from queues {', '.join(queues)}"):
            tag_prefix, reply = self._fetch_once(list(keys), max_count, wait=0.0, block_key=None)
            while not reply[1]:
                wait = self._wait_time(deadline)
                if wait is None:
                    break
                tag_prefix, reply = self._fetch_once(
                    list(keys), max_count, wait, list_key(queues[0])
                )
        return self._deliveries(tag_prefix, reply, keys)

    def _wait_time(self, deadline: float) -> float | None:
        """How long the next BLMOVE may block; None when the fetch timeout is over."""
        now = time.monotonic()
        remaining = deadline - now
        if remaining < 0.001:  # BLMOVE counts in milliseconds and 0 means forever
            return None
        settings = self.settings
        wait = min(remaining, settings.poll_interval, settings.lease_timeout / 4)
        if settings.socket_timeout is not None:
            wait = min(wait, settings.socket_timeout / 2)  # or the read would time out
        wait = min(wait, max(self._next_due - now, 0.0))
        return max(round(wait, 3), 0.001)

    def _fetch_once(
        self, sources: list[str], max_count: int, wait: float, block_key: str | None
    ) -> tuple[str, list[Any]]:
        """Run the fetch script, after blocking up to ``wait`` s on ``block_key`` if set.

        Returns the tag prefix and the script's reply.
        """
        if not self._unanswered:
            self._calls += 1
        tag_prefix = f"{self._tag_base}.{self._calls:x}."
        promote = self._promote_due(time.monotonic() + wait)
        keys = [
            self._keys.inflight,
            self._keys.consumers,
            self._keys.deliveries,
            self._keys.landings,
            self._keys.delayed,
            *sources,
        ]
        args: list[str | float] = [
            self._lease_id,
            self.settings.lease_timeout,
            max_count,
            tag_prefix,
            _PROMOTE_LIMIT if promote else 0,
        ]
        try:
            if block_key is None:
                reply = cast(list[Any], self._fetch_script(keys, args))
            else:
                reply = self._block_then_fetch(block_key, wait, keys, args)
        except BaseException:
            # The script may have run and leased messages under tag_prefix before the
            # reply was lost. The next call reuses the prefix and the script hands them
            # over again (see _FETCH), so they are not stranded with this live consumer.
            self._unanswered = True
            raise
        self._unanswered = False
        _, payloads, _, next_due, seconds, micros, errors = reply
        if payloads and self._crash_after_fetch:
            os._exit(70)  # test hook, see CRASH_AFTER_FETCH_ENV
        if promote:
            self._promoted_at = time.monotonic()
            server_now = int(seconds) + int(micros) / 1e6
            self._next_due = (
                time.monotonic() + float(next_due) - server_now if next_due else math.inf
            )
        if errors:
            self._script_errors("fetch", errors, raise_=not payloads)
        return tag_prefix, reply

    def _block_then_fetch(
        self, block_key: str, wait: float, keys: list[Any], args: list[Any]
    ) -> list[Any]:
        landing = self._keys.landing_prefix + block_key
        # One round trip: Redis runs the script as soon as BLMOVE returns.
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self._keys.landings, landing, block_key)  # so a reaper can find it
        blmove: Callable[..., object] = pipe.execute_command  # blmove() types timeout as int
        blmove("BLMOVE", block_key, landing, "RIGHT", "LEFT", wait)
        pipe.evalsha(self._fetch_script.sha, len(keys), *keys, *args)
        # Not raise_on_error: the script runs even when BLMOVE fails, and raising then
        # would strand what it leased in this (live, never reaped) consumer's hash.
        _, blocked, reply = pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError):
            # Redis restarted or flushed its scripts. A message BLMOVE took waits in the
            # landing list; the plain call reloads the script and adopts it.
            reply = self._fetch_script(keys, args)
        elif isinstance(reply, Exception):
            raise reply
        if isinstance(blocked, Exception):
            if not reply[1]:
                raise blocked
            logger.error("Redis broker could not block on list %r: %s", block_key, blocked)
        return cast(list[Any], reply)

    def _promote_due(self, at: float) -> bool:
        return at >= self._next_due or at - self._promoted_at >= _PROMOTE_EVERY

    def _deliveries(
        self, tag_prefix: str, reply: list[Any], queues: dict[str, str]
    ) -> list[Delivery]:
        runs, payloads, reaped_pairs = reply[0], reply[1], reply[2]
        reaped = dict(zip(reaped_pairs[::2], reaped_pairs[1::2], strict=True))
        deliveries: list[Delivery] = []
        for i in range(0, len(runs), 2):
            source = runs[i].decode("utf-8")
            queue = queues.get(source) or _queue_of(source)
            for _ in range(int(runs[i + 1])):
                n = len(deliveries) + 1
                payload = payloads[n - 1]
                deliveries.append(
                    Delivery(
                        envelope=decode_payload(payload),
                        queue=queue,
                        tag=f"{tag_prefix}{n}",
                        delivery_count=1 + int(reaped.get(n, 0)),
                        raw=_Lease(source, payload),
                    )
                )
        return deliveries

    def _script_errors(self, doing: str, errors: list[bytes], *, raise_: bool) -> None:
        text = "; ".join(error.decode("utf-8", "replace") for error in errors)
        if raise_:
            raise BrokerError(
                f"Redis at {self._safe_url} refused to {doing}: {text}. A queue key holds "
                "something other than a list; delete or rename it."
            )
        logger.error("Redis broker could not %s some lists: %s", doing, text)

    # -- settling -----------------------------------------------------------------
    #
    # Settling is idempotent (HDEL; scripts that check the tag is still leased), so when
    # Redis cannot be reached it is retried with each heartbeat rather than failed:
    # the messages stay leased to this live consumer meanwhile, and a live consumer's
    # lease never runs out, so a failed ack would otherwise strand its messages until
    # the worker stops (and then run them again).

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Drop the messages from this consumer's in-flight hash (one round trip).

        If Redis cannot be reached the ack is retried with each ``heartbeat``.
        """
        deliveries = list(deliveries)
        self._settle_or_defer(
            lambda: self._ack(deliveries), f"acknowledge {len(deliveries)} messages"
        )

    def _ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [d.tag for d in deliveries]
        counters = [_counter_field(_lease(d).payload) for d in deliveries if d.delivery_count > 1]
        with self._translate(f"acknowledge {len(tags)} messages"):
            if not counters:
                self._client.hdel(self._keys.inflight, *tags)
                return
            pipe = self._client.pipeline(transaction=False)
            pipe.hdel(self._keys.inflight, *tags)
            pipe.hdel(self._keys.deliveries, *counters)
            pipe.execute()

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Push the messages back at the consumer end of their lists, first one next.

        Messages whose lease was already lost (and restored by a reaper) are skipped.
        If Redis cannot be reached the requeue is retried with each ``heartbeat``.
        """
        deliveries = list(deliveries)
        self._settle_or_defer(
            lambda: self._requeue(deliveries), f"requeue {len(deliveries)} messages"
        )

    def _requeue(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        tags = [d.tag for d in reversed(deliveries)]
        with self._translate(f"requeue {len(tags)} messages"):
            _, errors = self._requeue_script([self._keys.inflight], tags)
        if errors:
            self._script_errors("requeue messages (they stay leased)", errors, raise_=False)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message from this consumer's lease to the dead-letter list.

        A message whose lease was lost is already back in its queue; it is left there
        (and logged) rather than stored twice. If Redis cannot be reached the move is
        retried with each ``heartbeat``.
        """
        self._settle_or_defer(
            lambda: self._dead_letter(delivery, reason), f"dead-letter message {delivery.tag}"
        )

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        lease = _lease(delivery)
        entry: dict[str, Any] = {
            "id": delivery.tag,
            "queue": delivery.queue,
            "list": lease.source,
            "reason": reason,
            "time": time.time(),
        }
        try:
            entry["payload"] = lease.payload.decode("utf-8")
        except UnicodeDecodeError:
            entry["payload_base64"] = base64.b64encode(lease.payload).decode("ascii")
        counter = _counter_field(lease.payload) if delivery.delivery_count > 1 else ""
        keys = [self._keys.inflight, self._keys.dlq, self._keys.deliveries]
        with self._translate(f"dead-letter message {delivery.tag}"):
            moved = self._dead_letter_script(keys, [delivery.tag, json.dumps(entry), counter])
        if not moved:
            logger.warning(
                "Message %s from queue %r was not dead-lettered (%s): this consumer's lease "
                "on it had run out and it is back in its queue.",
                delivery.tag,
                delivery.queue,
                reason,
            )

    def heartbeat(self) -> None:
        """Renew this consumer's lease, then return the messages of expired consumers."""
        keys = [self._keys.consumers, self._keys.deliveries]
        args: list[str | float] = [
            self.settings.key_prefix,
            self._lease_id,
            self.settings.lease_timeout,
            _REAP_LIMIT,
        ]
        with self._translate("renew the consumer lease"):
            restored, errors = self._reap_script(keys, args)
        if restored:
            logger.info("Returned %d messages of expired consumers to their queues", restored)
        if errors:
            self._script_errors("return messages of expired consumers", errors, raise_=False)
        self._retry_deferred()

    def _settle_or_defer(self, settle: Callable[[], None], what: str) -> None:
        try:
            settle()
        except BrokerError as exc:
            if not isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError)):
                raise
            with self._deferred_lock:
                self._deferred.append((settle, what))
            logger.warning("%s Will %s with the next heartbeat.", exc, what)

    def _retry_deferred(self) -> None:
        """Carry out the settling that failed while Redis was unreachable, in order."""
        with self._deferred_lock:
            pending, self._deferred = self._deferred, []
        for done, (settle, _) in enumerate(pending):
            try:
                settle()
            except BrokerError:
                with self._deferred_lock:
                    self._deferred[:0] = pending[done:]
                raise
        if pending:
            logger.info("Redis is back: carried out %d deferred ack(s)/requeue(s)", len(pending))

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Parked messages, oldest first."""
        if limit < 1:
            return []
        with self._translate("list dead letters"):
            entries = cast(list[bytes], self._client.lrange(self._keys.dlq, 0, limit - 1))
        return [_dead_letter_from(raw) for raw in entries]

    def requeue_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """LPUSH parked messages back onto their lists (all when ``ids`` is None)."""
        wanted = None if ids is None else set(ids)
        tried: set[str] = set()
        moved, offset = 0, 0
        with self._translate("requeue dead letters"):
            while wanted is None or wanted - tried:
                end = offset + _DLQ_PAGE - 1
                page = cast(list[bytes], self._client.lrange(self._keys.dlq, offset, end))
                if not page:
                    break
                args: list[Any] = []
                for raw in page:
                    parsed = _parse_dead_letter(raw)
                    if parsed is None or parsed[0] in tried:
                        continue
                    if wanted is None or parsed[0] in wanted:
                        tried.add(parsed[0])
                        args += [raw, parsed[1], parsed[2]]
                count, errors = (
                    self._requeue_dead_script([self._keys.dlq], args) if args else (0, [])
                )
                moved += count
                offset += len(page) - count
                if errors:
                    self._script_errors("requeue dead letters", errors, raise_=False)
        return moved

    def purge_dead_letters(self) -> int:
        """Delete every parked message; return how many."""
        with self._translate("purge dead letters"):
            pipe = self._client.pipeline(transaction=True)
            pipe.llen(self._keys.dlq)
            pipe.delete(self._keys.dlq)
            count, _ = pipe.execute()
        return int(count)

    def close(self) -> None:
        """Disconnect the pool. Leased messages stay leased until the lease runs out."""
        try:
            self._retry_deferred()
        except BrokerError as exc:
            logger.error(
                "Closing with %d ack(s)/requeue(s) not done (%s): their messages return to "
                "their queues when this consumer's lease runs out.",
                len(self._deferred),
                exc,
            )
        self._pool.disconnect()


def _queue_of(source: str) -> str:
    """The queue of a list key the caller did not pass (a landing list of an earlier fetch)."""
    base, _, step = source.rpartition(PRIORITY_SEP)
    return base if base and step in ("3", "6", "9") else source


def _lease(delivery: Delivery) -> _Lease:
    if not isinstance(delivery.raw, _Lease):
        raise ValueError(f"Delivery {delivery.tag!r} was not fetched by a RedisBroker")
    return delivery.raw


def _parse_dead_letter(raw: bytes) -> tuple[str, str, bytes, dict[str, Any]] | None:
    """``(id, list, payload, entry)`` of a DLQ entry; None when it is unreadable."""
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
    parsed = _parse_dead_letter(raw)
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
