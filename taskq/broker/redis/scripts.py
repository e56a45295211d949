"""The Redis broker's Lua scripts (``lua/*.lua``): each one step that must be atomic.

Keys (besides the queue lists), all under ``key_prefix`` (default ``taskq:``)::

    consumers                          zset  lease id -> lease deadline
    inflight:<lease id>                hash  tag -> "<len>:<source list><payload>"
    landings:<lease id>                hash  landing list -> source list
    landing:<lease id>:<source list>   list  messages BLMOVE'd, not yet adopted
    deliveries                         hash  sha1(payload) -> times reaped
    delayed                            zset  "<32 hex><len>:<list><payload>" by ETA
    dlq                                list  JSON entries, oldest first

Scripts build per-consumer key names from the prefix, so the broker needs a
single Redis server (not Redis Cluster), like kombu's Redis transport. Redis does
not roll back the writes a script already made when a later command fails, so
commands on queue lists (which a user may have overwritten with another type) go
through ``pcall`` and are reported, never left half done.

Each script's file starts with its contract (KEYS, ARGV, reply). ``helpers.lua``
and ``promote.lua`` define functions the others call; they are prepended here.
"""

from __future__ import annotations

from importlib.resources import files

__all__ = [
    "DEAD_LETTER",
    "DEPTHS",
    "FETCH",
    "PROMOTE",
    "REAP",
    "RENEW",
    "REQUEUE",
    "RELEASE",
    "REQUEUE_DEAD",
    "STILL_LEASED",
]


def _read(name: str) -> str:
    return files(__package__).joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


_HELPERS = _read("helpers")
_PROMOTE = _read("promote")

#: Acknowledge, renew the lease, promote due delayed messages, lease a batch.
FETCH = _HELPERS + _PROMOTE + _read("fetch")
#: Promote due delayed messages only, for moving a large due batch in short calls.
PROMOTE = _HELPERS + _PROMOTE + _read("promote_due")
#: Renew this consumer's lease only (a green worker's lease keeper thread).
RENEW = _read("renew")
#: Renew this consumer's lease, then give back the messages of expired consumers.
REAP = _HELPERS + _read("reap")
#: Give back all one consumer holds, uncounted, and forget it (a dead prefork child).
RELEASE = _HELPERS + _read("release")
#: Give leased messages back at the consumer end of their lists.
REQUEUE = _HELPERS + _read("requeue")
#: Move one leased message to the dead-letter list.
DEAD_LETTER = _read("dead_letter")
#: Put parked messages back on their lists.
REQUEUE_DEAD = _HELPERS + _read("requeue_dead")
#: Count delayed and dead-lettered messages by list and queue (the dashboard's depths).
DEPTHS = _read("depths")
#: Check messages are still leased to this consumer (after its lease may have lapsed).
STILL_LEASED = _HELPERS + _read("still_leased")
