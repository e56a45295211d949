"""Reading the ledger the fault-injection tasks write, and judging it.

``Checker.report`` compares what the producer knows it published with what the
ledger says ran: *lost* ids were published (the publish returned) and never
completed, *duplicated* ids completed more than once, *unexpected* ids completed
without being published (or ``uncertain``: publishes that raised, which may or
may not have reached the broker).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis


@dataclasses.dataclass
class Event:
    id: str
    event: str
    attempt: int
    pid: int
    t: float


@dataclasses.dataclass
class Report:
    scenario: str
    published: int
    executed: int
    lost: list[str]
    duplicated: list[str]
    unexpected: list[str]
    restarts: int  # starts of published ids beyond the first, completed or not
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        notes = "".join(f" {k}={v}" for k, v in self.notes.items())
        return (
            f"{self.scenario}: published={self.published} executed={self.executed} "
            f"lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"unexpected={len(self.unexpected)} restarts={self.restarts}{notes}"
        )


#: Every report made in this session, printed in pytest's terminal summary.
REPORTS: list[Report] = []


class Ledger:
    """The events in one Redis list (on a server no test faults)."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.client = redis.Redis.from_url(url)

    def events(self) -> list[Event]:
        raw = self.client.lrange(self.key, 0, -1)
        return [Event(**json.loads(item)) for item in raw]  # type: ignore[union-attr]

    def done(self) -> collections.Counter[str]:
        return collections.Counter(e.id for e in self.events() if e.event == "done")

    def started(self) -> collections.Counter[str]:
        return collections.Counter(e.id for e in self.events() if e.event == "start")

    def wait(
        self, predicate: Callable[[list[Event]], bool], timeout: float, what: str
    ) -> list[Event]:
        """Poll until ``predicate(events)`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events):
                return events
            if time.monotonic() > deadline:
                done = len({e.id for e in events if e.event == "done"})
                raise AssertionError(f"{what}: not within {timeout}s ({done} ids done)")
            time.sleep(0.05)

    def wait_done(self, ids: Iterable[str], timeout: float, what: str = "") -> list[Event]:
        wanted = set(ids)
        try:
            return self.wait(
                lambda events: wanted <= {e.id for e in events if e.event == "done"},
                timeout,
                what or f"{len(wanted)} tasks done",
            )
        except AssertionError as exc:
            missing = sorted(wanted - set(self.done()))
            raise AssertionError(f"{exc}; missing {len(missing)}: {missing[:5]}") from None

    def delete(self) -> None:
        self.client.delete(self.key, self.key + ":attempts")
        self.client.close()


class Checker:
    def __init__(self, ledger: Ledger, scenario: str) -> None:
        self.ledger = ledger
        self.scenario = scenario

    def report(
        self,
        published: Iterable[str],
        *,
        uncertain: Iterable[str] = (),
        expect_done: bool = True,
        **notes: Any,
    ) -> Report:
        """Compare and record. With ``expect_done`` False (tasks meant never to finish)
        an id counts as executed when it started."""
        published = set(published)
        events = self.ledger.events()
        kind = "done" if expect_done else "start"
        counts = collections.Counter(e.id for e in events if e.event == kind)
        starts = collections.Counter(e.id for e in events if e.event == "start")
        report = Report(
            scenario=self.scenario,
            published=len(published),
            executed=len(published & set(counts)),
            lost=sorted(published - set(counts)),
            duplicated=sorted(i for i, n in counts.items() if n > 1),
            unexpected=sorted(set(counts) - published - set(uncertain)),
            restarts=sum(n - 1 for i, n in starts.items() if i in published),
            notes=dict(notes),
        )
        REPORTS.append(report)
        print(report.line())
        return report
