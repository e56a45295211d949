"""How the Redis broker leases messages: fetch script calls, blocking, read-ahead.

One ``Fetcher`` per broker, used by its consumer thread (see ``RedisBroker``'s
module doc for the design this implements). What lives here:

- Tag prefixes and lost replies: a call's tags are ``<session>.<call number>.<i>``;
  after a failed call the next one reuses the number and the script answers with
  the messages it leased then.
- Blocking when idle: BLMOVE into a landing list, then the script, in one round trip.
- Promotion timing: the script promotes due delayed messages every 0.5 s or as soon
  as the earliest known ETA is due.
- Read-ahead (when the caller asks for it): when a fetch got all it asked for (a
  backlog), the next script call is sent at once and its reply read by the next
  ``fetch``, so Redis leases the next batch while the worker runs this one. Those messages are leased to this consumer
  like any others (a crash returns them with the lease); ``drain`` hands them back
  at a clean stop. A caller asking for fewer than arrived gets the rest next time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.exceptions import NoScriptError

from taskq.broker.base import Delivery
from taskq.broker.envelope import decode_payload, queue_of
from taskq.broker.redis import scripts
from taskq.broker.redis.acks import Held, PendingAcks
from taskq.broker.redis.session import Session
from taskq.broker.redis.settle import Lease, ack_args, ack_commands
from taskq.redisclient.line import Line

__all__ = ["Fetcher"]

logger = logging.getLogger("taskq.broker.redis")

_PROMOTE_EVERY = 0.5  # seconds between delayed-store checks when nothing is known due
_PROMOTE_LIMIT = 500  # due messages moved per script call: a 3-7 ms pause of Redis here
_PROMOTE_BUDGET = 0.05  # seconds one fetch may go on promoting while messages stay due


@dataclasses.dataclass
class _Call:
    """One fetch script call: what it was sent with."""

    queues: tuple[str, ...]
    sources: dict[str, str]  # list key -> queue
    tag_prefix: str
    max_count: int
    promote: bool
    adopt: bool
    sent_at: float  # monotonic: when this call (which renews the lease) was sent


class Fetcher:
    """Leases messages for one broker; see the module docstring."""

    def __init__(self, session: Session, acks: PendingAcks) -> None:
        """Lease for ``session``'s consumer; held ``acks`` go with each fetch."""
        client = session.client
        self._session = session
        # Taken out once: the fetch path reads them on every call.
        self._client = client
        self._line = session.line
        self._keys = session.keys
        self._settings = session.settings
        self._lease_id = session.lease_id
        self._tag_base = session.tag_base
        self._acks = acks
        self._script = client.register_script(scripts.FETCH)
        self._promote_script = client.register_script(scripts.PROMOTE)
        self._calls = 0  # fetch script calls: part of every tag
        self._unanswered = False  # the last call failed: reuse its tag prefix
        self._landed = False  # a landing list may hold messages no script adopted yet
        self._promoted_at = -math.inf  # monotonic time of the last promotion
        # Monotonic time the earliest delayed message is due. Publishing threads
        # lower it without a lock; a lost update delays promotion by at most 0.5 s.
        self.next_due = -math.inf
        self._ahead: tuple[_Call, Held] | None = None  # sent, reply not read yet
        self._ready: list[Delivery] = []  # leased by a read-ahead, not handed over
        self._backlog = False  # the last read-ahead got all it asked for

    def fetch(
        self,
        queues: Sequence[str],
        sources: dict[str, str],
        max_count: int,
        timeout: float,
        read_ahead: bool,
    ) -> list[Delivery]:
        """Lease up to ``max_count`` messages from ``sources``, blocking up to ``timeout``
        seconds while there are none; with ``read_ahead``, lease the next batch now
        when this one is full. Raises redis-py errors."""
        queues = tuple(queues)
        if self._ahead is not None:
            try:
                self._collect_ahead()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Its reply is lost; the call below asks again under the same prefix.
                logger.debug("Read-ahead reply lost: %s", exc)
        if self._ready and {d.queue for d in self._ready} <= set(queues):
            got, self._ready = self._ready[:max_count], self._ready[max_count:]
            if not self._ready and self._backlog and read_ahead:
                self._read_ahead(queues, sources, max_count)
            return got
        owned = self._line.acquire()
        try:
            deliveries = self._fetch(owned, queues, sources, max_count, timeout)
        finally:
            if owned:
                self._line.release()
        # A lost read-ahead answered again may hold more than this call asked for.
        # (``_ready`` is not empty here only if the caller changed its queues: what it
        # holds stays leased to us until a fetch of those queues or ``drain``.)
        self._ready += deliveries[max_count:]
        deliveries = deliveries[:max_count]
        if len(deliveries) == max_count and read_ahead:
            self._read_ahead(queues, sources, max_count)
        return deliveries

    def drain(self) -> list[Delivery]:
        """Messages read ahead and not handed over, for a clean stop to give back."""
        if self._ahead is not None:
            try:
                self._collect_ahead()
            except redis.RedisError as exc:
                logger.warning("Could not read the last read-ahead (%s); its lease returns it", exc)
        ready, self._ready = self._ready, []
        return ready

    # -- one call ---------------------------------------------------------------------

    def _fetch(
        self,
        owned: bool,
        queues: tuple[str, ...],
        sources: dict[str, str],
        max_count: int,
        timeout: float,
    ) -> list[Delivery]:
        line = self._line if owned else None
        deadline = time.monotonic() + max(timeout, 0.0)
        call, reply = self._fetch_once(line, queues, sources, max_count, 0.0, None)
        while not reply[1]:
            wait = self._wait_time(deadline)
            if wait is None:
                break
            block_key = next(iter(sources))  # the first queue's priority-0 list
            call, reply = self._fetch_once(line, queues, sources, max_count, wait, block_key)
        return self._deliveries(call, reply)

    def _start(
        self,
        queues: tuple[str, ...],
        sources: dict[str, str],
        max_count: int,
        wait: float,
        blocking: bool,
    ) -> _Call:
        if not self._unanswered:
            self._calls += 1
        return _Call(
            queues,
            sources,
            f"{self._tag_base}.{self._calls:x}.",
            max_count,
            promote=self._promote_due(time.monotonic() + wait),
            adopt=blocking or self._landed,
            sent_at=time.monotonic(),
        )

    def _keys_args(self, call: _Call) -> tuple[list[str], list[Any]]:
        keys = self._keys
        return [
            keys.inflight,
            keys.consumers,
            keys.deliveries,
            keys.landings,
            keys.delayed,
            *call.sources,
        ], [
            self._lease_id,
            self._settings.lease_timeout,
            call.max_count,
            call.tag_prefix,
            _PROMOTE_LIMIT if call.promote else 0,
            1 if call.adopt else 0,
        ]

    def _fetch_once(
        self,
        line: Line | None,
        queues: tuple[str, ...],
        sources: dict[str, str],
        max_count: int,
        wait: float,
        block_key: str | None,
    ) -> tuple[_Call, list[Any]]:
        """Run the fetch script, after blocking up to ``wait`` s on ``block_key`` if set.
        Held acks go with it (before the block)."""
        call = self._start(queues, sources, max_count, wait, block_key is not None)
        keys, args = self._keys_args(call)
        held = self._acks.take()
        try:
            if block_key is None:
                reply = self._run_script(line, keys, [*args, *ack_args(held)])
            else:
                self._landed = True
                reply, acked = self._block_then_fetch(line, block_key, wait, keys, args, held)
                if not acked:
                    self._acks.put_back(held)
        except BaseException:
            self._lost(held)
            raise
        self._answered(call, reply)
        return call, reply

    def _lost(self, held: Held) -> None:
        # The script may have run and leased messages under the call's prefix before
        # the reply was lost. The next call reuses the prefix and the script hands them
        # over again (see FETCH), so they are not stranded with this live consumer.
        self._unanswered = True
        self._acks.put_back(held)

    def _answered(self, call: _Call, reply: list[Any]) -> None:
        self._unanswered = False
        self._session.clock.renewed(call.sent_at)
        if call.adopt:
            self._landed = False
        _, payloads, _, next_due, seconds, micros, errors = reply
        if call.promote:
            server_now = int(seconds) + int(micros) / 1e6
            if next_due and float(next_due) <= server_now:
                # The call moved its limit and more are due: go on in short calls now
                # rather than at the next fetch (each call is one short Redis pause).
                next_due, server_now, more = self._promote_backlog()
                errors = [*errors, *more]
            self._promoted_at = time.monotonic()
            self.next_due = (
                time.monotonic() + float(next_due) - server_now if next_due else math.inf
            )
        if errors:
            if not payloads:
                raise self._session.refused("fetch", errors)
            self._session.log_refused("fetch", errors)

    def _promote_backlog(self) -> tuple[Any, float, list[bytes]]:
        """Promote due messages until none is due or ``_PROMOTE_BUDGET`` is spent;
        return the next ETA, Redis's time and the errors. It cannot spin: a list that
        refuses its messages gets them back in a minute (see ``scripts``)."""
        stop = time.monotonic() + _PROMOTE_BUDGET
        errors: list[bytes] = []
        while True:
            reply = self._promote_script([self._keys.delayed], [_PROMOTE_LIMIT])
            _, next_due, seconds, micros, more = cast(list[Any], reply)
            errors += more
            server_now = int(seconds) + int(micros) / 1e6
            if not next_due or float(next_due) > server_now or time.monotonic() >= stop:
                return next_due, server_now, errors

    def _run_script(self, line: Line | None, keys: list[str], args: list[Any]) -> list[Any]:
        script = self._script
        if line is None:
            return cast(list[Any], script(keys, args))
        try:
            return cast(list[Any], line.call("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:  # Redis restarted or flushed its scripts
            return cast(list[Any], script(keys, args))

    def _block_then_fetch(
        self,
        line: Line | None,
        block_key: str,
        wait: float,
        keys: list[Any],
        args: list[Any],
        held: Held,
    ) -> tuple[list[Any], bool]:
        """BLMOVE, then the fetch script; return its reply and whether the held acks
        went out."""
        landing = self._keys.landing_prefix + block_key
        # One round trip: the acks, then Redis runs the script as soon as BLMOVE returns.
        commands = [
            *ack_commands(self._keys, held),
            ("HSET", self._keys.landings, landing, block_key),  # so a reaper can find it
            ("BLMOVE", block_key, landing, "RIGHT", "LEFT", wait),
            ("EVALSHA", self._script.sha, len(keys), *keys, *args, 0),
        ]
        # Errors come back as values: the script runs even when BLMOVE fails, and
        # raising then would strand what it leased in this (live, never reaped)
        # consumer's hash.
        if line is None:
            pipe = self._client.pipeline(transaction=False)
            queue: Callable[..., Any] = pipe.execute_command  # untyped in redis-py
            for command in commands:
                queue(*command)
            replies = pipe.execute(raise_on_error=False)
        else:
            replies = line.call_many(commands)
        acking = len(commands) - 3
        acked = not any(isinstance(r, Exception) for r in replies[:acking])
        _, blocked, reply = replies[acking:]
        if isinstance(reply, NoScriptError):
            # Redis restarted or flushed its scripts. A message BLMOVE took waits in the
            # landing list; the plain call reloads the script and adopts it.
            reply = self._script(keys, [*args, 0])
        elif isinstance(reply, Exception):
            raise reply
        if isinstance(blocked, Exception):
            if not reply[1]:
                raise blocked
            logger.error("Redis broker could not block on list %r: %s", block_key, blocked)
        return cast(list[Any], reply), acked

    # -- read-ahead -------------------------------------------------------------------

    def _read_ahead(self, queues: tuple[str, ...], sources: dict[str, str], max_count: int) -> None:
        """Send the next call now; the line stays taken until ``_collect_ahead``."""
        if not self._line.acquire():
            return
        call = self._start(queues, sources, max_count, 0.0, False)
        keys, args = self._keys_args(call)
        held = self._acks.take()
        try:
            self._line.send(
                [("EVALSHA", self._script.sha, len(keys), *keys, *args, *ack_args(held))]
            )
        except redis.RedisError as exc:
            logger.debug("Read-ahead not sent: %s", exc)
            self._lost(held)
            self._line.release()
            return
        self._ahead = (call, held)

    def _collect_ahead(self) -> None:
        """Read the read-ahead's reply into ``_ready`` and give the line back."""
        assert self._ahead is not None
        (call, held), self._ahead = self._ahead, None
        try:
            (reply,) = self._line.receive(1)
            if isinstance(reply, NoScriptError):  # not run: the long way loads it
                keys, args = self._keys_args(call)
                reply = self._script(keys, [*args, *ack_args(held)])
            if isinstance(reply, Exception):
                raise reply
        except BaseException:
            self._lost(held)
            raise
        finally:
            self._line.release()
        self._answered(call, reply)
        self._ready.extend(self._deliveries(call, reply))
        self._backlog = len(reply[1]) == call.max_count

    # -- helpers ----------------------------------------------------------------------

    def _promote_due(self, at: float) -> bool:
        return at >= self.next_due or at - self._promoted_at >= _PROMOTE_EVERY

    def _wait_time(self, deadline: float) -> float | None:
        """How long the next BLMOVE may block; None when the fetch timeout is over."""
        now = time.monotonic()
        remaining = deadline - now
        if remaining < 0.001:  # BLMOVE counts in milliseconds and 0 means forever
            return None
        settings = self._settings
        wait = min(remaining, settings.poll_interval, settings.lease_timeout / 4)
        if settings.socket_timeout is not None:
            wait = min(wait, settings.socket_timeout / 2)  # or the read would time out
        wait = min(wait, max(self.next_due - now, 0.0))
        return max(round(wait, 3), 0.001)

    def _deliveries(self, call: _Call, reply: list[Any]) -> list[Delivery]:
        runs, payloads, reaped_pairs = reply[0], reply[1], reply[2]
        reaped = dict(zip(reaped_pairs[::2], reaped_pairs[1::2], strict=True))
        deliveries: list[Delivery] = []
        n = 0
        for i in range(0, len(runs), 2):
            source = runs[i].decode("utf-8")
            queue = call.sources.get(source) or queue_of(source)
            for payload in payloads[n : n + int(runs[i + 1])]:
                n += 1
                deliveries.append(
                    Delivery(
                        decode_payload(payload),
                        queue,
                        f"{call.tag_prefix}{n}",
                        1 + int(reaped[n]) if n in reaped else 1,
                        Lease(source, payload, call.sent_at),
                    )
                )
        return deliveries
