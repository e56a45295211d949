"""Beat: periodic tasks sent on schedule.

``scheduler`` holds the entries and the pure ``Scheduler.tick(now)``; ``locks``
decides which of several beat processes sends (high availability). The names
below are the public API (``docs/beat.md``).
"""

from taskq.beat.scheduler import (
    Entry,
    KeyValueStore,
    MemoryStore,
    Scheduler,
    entries_from_config,
    run_beat,
    scheduler_for,
    start_beat_process,
    wait_for_broker,
)

__all__ = [
    "Entry",
    "KeyValueStore",
    "MemoryStore",
    "Scheduler",
    "entries_from_config",
    "run_beat",
    "scheduler_for",
    "start_beat_process",
    "wait_for_broker",
]
