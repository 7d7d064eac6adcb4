"""The day of CI that bench/cost.py replays: a trace of jobs generated from a seed, and
the interval arithmetic its accounting uses. Times are simulated seconds since midnight."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MINUTE = 60.0
HOUR = 3600.0
# Every lease lives this long (simulated), longer than any job of the trace.
LEASE_TTL = 45 * MINUTE
DAY_MINUTES = 1440.0
# The watchdog's cron (ours), and the nightly stop's (a policy of its own).
WATCHDOG_EVERY = 5 * MINUTE
NIGHTLY_STOP = 20 * HOUR

Block = tuple[str, str, int]  # start "HH:MM", end "HH:MM", pushes
DAY: tuple[Block, ...] = (("08:00", "12:00", 8), ("13:30", "17:15", 7), ("18:15", "19:00", 2))
MORNING: tuple[Block, ...] = (("08:00", "09:30", 4), ("10:30", "11:15", 3))


# -- the trace ---------------------------------------------------------------------------


# How a job runs its up and down, besides a CI job's one step each (docs/benchmarks.md):
# "script" (up captured by $(...) in one shell, down from another, no lease id), "manual"
# (a workflow_dispatch up, then a later run's down), "cancelled_up" (cancelled while its
# up waits; its cleanup still runs), "stream" (its down runs with a stream still open).
SHAPES = ("ci", "script", "manual", "cancelled_up", "stream")


@dataclass(frozen=True)
class Job:
    name: str
    push: int
    arrival: float  # simulated seconds since midnight
    tests: float  # planned test time, simulated seconds
    fate: str  # "done", "cancelled", "lost"
    runs: float  # test time actually run: all of it unless cancelled or lost
    shape: str = "ci"

    @property
    def cleans_up(self) -> bool:
        return self.fate != "lost"


def clock_of(text: str) -> float:
    hours, minutes = text.split(":")
    return int(hours) * HOUR + int(minutes) * MINUTE


def hhmm(sim: float) -> str:
    minutes = round(sim / MINUTE)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def make_trace(seed: int, blocks: Sequence[Block], lost: tuple[int, int]) -> list[Job]:
    rng = random.Random(seed)
    pushes: list[float] = []
    for start, end, count in blocks:
        low, high = clock_of(start), clock_of(end)
        pushes += sorted(rng.uniform(low, high) for _ in range(count))
    planned: list[tuple[int, float, float]] = []
    for push, at in enumerate(pushes):
        for _ in range(rng.randint(2, 4)):
            tests = rng.triangular(4 * MINUTE, 25 * MINUTE, 8 * MINUTE)
            planned.append((push, at + rng.uniform(0, MINUTE), tests))
    planned.sort(key=lambda p: p[1])
    count = len(planned)
    lost_ones = set(rng.sample(range(count), rng.randint(*lost)))
    others = [i for i in range(count) if i not in lost_ones]
    cancelled = set(rng.sample(others, max(1, round(count / 10))))
    shapes = _shapes(rng, planned, [i for i in others if i not in cancelled])
    jobs = []
    for index, (push, arrival, tests) in enumerate(planned):
        fate, runs = "done", tests
        if index in lost_ones:
            fate, runs = "lost", tests * rng.uniform(0.3, 0.9)
        elif index in cancelled:
            fate, runs = "cancelled", tests * rng.uniform(0.2, 0.8)
        shape = shapes.get(index, "ci")
        if shape == "manual":
            # A session someone opened by hand, within its lease (LEASE_TTL).
            runs = rng.uniform(30 * MINUTE, 40 * MINUTE)
        jobs.append(Job(f"job-{index + 1:02d}", push, arrival, tests, fate, runs, shape))
    return jobs


def _shapes(
    rng: random.Random, planned: Sequence[tuple[int, float, float]], done: Sequence[int]
) -> dict[int, str]:
    """About one job in twelve of each shape but the CI one (at least one each), taken
    from jobs that run to their end. Jobs of the shapes with a shared holder ("script": one
    person's shells; "manual": one workflow's runs) never overlap one another."""
    each = max(1, len(planned) // 12)
    pool = list(done)
    rng.shuffle(pool)
    chosen: dict[int, str] = {}
    for shape in ("script", "cancelled_up", "stream"):
        picked: list[int] = []
        for index in pool:
            if len(picked) == each:
                break
            if index in chosen:
                continue
            start = planned[index][1]
            if shape == "script" and any(abs(start - planned[p][1]) < 40 * MINUTE for p in picked):
                continue
            picked.append(index)
        chosen.update(dict.fromkeys(picked, shape))
    manual = next(i for i in pool if i not in chosen)
    chosen[manual] = "manual"
    return chosen


def union(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def total(intervals: Sequence[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def shared(one: Sequence[tuple[float, float]], other: Sequence[tuple[float, float]]) -> float:
    """The time two unions of intervals have in common."""
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in one for c, d in other)


def nominal_needs(job: Job) -> tuple[float, float]:
    """When the trace says a job needs the server, with no start latency."""
    end = job.arrival + (job.runs if job.cleans_up else LEASE_TTL)
    return job.arrival, end


def summarise(jobs: Sequence[Job]) -> dict[str, Any]:
    spans = [(j.arrival, j.arrival + j.runs) for j in jobs]
    # Jobs of one push always overlap; what matters is pushes running into each other.
    across = sum(
        1
        for i, (a, b) in enumerate(spans)
        if any(c < b and a < d and jobs[k].push != jobs[i].push for k, (c, d) in enumerate(spans))
    )
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    busy = union([nominal_needs(j) for j in jobs])
    gaps = [(a[1], b[0]) for a, b in itertools.pairwise(busy)]
    return {
        "jobs": len(jobs),
        "pushes": len({j.push for j in jobs}),
        "first_job": hhmm(jobs[0].arrival),
        "last_job": hhmm(jobs[-1].arrival),
        "overlap_another_push": across,
        "most_at_once": most,
        "cancelled": sum(1 for j in jobs if j.fate == "cancelled"),
        "shapes": {s: [j.name for j in jobs if j.shape == s] for s in SHAPES[1:]},
        "lost": [j.name for j in jobs if j.fate == "lost"],
        "test_minutes": round(sum(j.runs for j in jobs) / MINUTE, 1),
        "busy_minutes": round(total(busy) / MINUTE, 1),
        "busy_periods": len(busy),
        "gaps_over_30_min": [f"{hhmm(a)}-{hhmm(b)}" for a, b in gaps if b - a >= 30 * MINUTE],
    }
