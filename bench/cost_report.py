"""The accounting and the report of bench/cost.py: what each replay billed against the
busy time, each shape's part, and the two acceptance checks."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench.cost_trace import (
    DAY_MINUTES,
    MINUTE,
    NIGHTLY_STOP,
    SHAPES,
    WATCHDOG_EVERY,
    Job,
    hhmm,
    shared,
    total,
    union,
)

if TYPE_CHECKING:
    from bench.cost import Replay


def account(
    run: Replay,
    states: Sequence[tuple[str, float]],
    billed_real: float,
    ended: float,
    still_running: bool,
) -> dict[str, Any]:
    clock, scale = run.clock, run.setup.scale
    began = clock.real(clock.origin)
    window = [(state, at) for state, at in states if at >= began]
    stopping = [at for state, at in window if state == "STOPPING"]
    for r in run.runs:
        if r.up_end == 0.0 or r.failure is not None:
            continue
        hit = [at for at in stopping if r.up_end <= at <= r.tests_end]
        if hit:
            r.stopped_under = f"went STOPPING at {hhmm(clock.sim(hit[0]))} during its tests"
    starts, stops = latencies(window)
    busy = union([r.needs() for r in run.runs if r.up_start])
    billing = billed_spans(window, ended)
    common = shared(billing, busy)
    billed_min = billed_real * scale / MINUTE
    note = ""
    if still_running:
        # Nothing is left to stop it before the next day: it bills until midnight.
        rest = max(0.0, DAY_MINUTES - clock.sim(ended) / MINUTE)
        billed_min += rest
        note = f"still running at {hhmm(clock.sim(ended))}: +{rest:.0f} min to midnight"
    killed = [r for r in run.runs if r.killed]
    return {
        "shapes": contributions(run, billing, busy),
        "billed_minutes": round(billed_min, 1),
        "busy_minutes": round(total(busy) * scale / MINUTE, 1),
        "busy_periods": [f"{hhmm(clock.sim(a))}-{hhmm(clock.sim(b))}" for a, b in busy],
        # Billed while no job needed it, and needed (waiting for a start, or for its
        # cleanup's stop to finish) while not billed: from the app's own history.
        "billed_not_busy_minutes": round((total(billing) - common) * scale / MINUTE, 1),
        "busy_not_billed_minutes": round((total(busy) - common) * scale / MINUTE, 1),
        "billed_periods": [f"{hhmm(clock.sim(a))}-{hhmm(clock.sim(b))}" for a, b in billing],
        "starts": sum(1 for state, _ in window if state == "QUEUED"),
        "start_latency_minutes": _median_minutes(starts, scale),
        "stop_latency_minutes": _median_minutes(stops, scale),
        "cold_ups": sum(1 for r in run.runs if r.cold),
        "killed": len(killed),
        "killed_jobs": {
            r.job.name: {
                "fate": r.job.fate,
                "up_start": hhmm(clock.sim(r.up_start)),
                "tests_end": hhmm(clock.sim(r.tests_end)),
                "why": r.failure or r.stopped_under,
            }
            for r in killed
        },
        "watchdog_stops": run.watchdog,
        "cleanups_failed": [r.job.name for r in run.runs if r.cleanup.startswith("failed")],
        "chats": sum(r.chats for r in run.runs),
        "note": note,
        "replay_seconds": round(ended - began, 1),
    }


def contributions(
    run: Replay,
    billing: Sequence[tuple[float, float]],
    busy: Sequence[tuple[float, float]],
) -> dict[str, dict[str, Any]]:
    """Each shape's part: its jobs, how many were killed, the minutes only its jobs needed
    the server, and the billed minutes after one of its jobs was the last one out (what a
    cleanup of that shape leaves billing until the stop is done)."""
    scale = run.setup.scale
    spans = [(r, r.needs()) for r in run.runs if r.up_start]
    out: dict[str, dict[str, Any]] = {}
    for shape in SHAPES:
        mine = [(r, need) for r, need in spans if r.job.shape == shape]
        others = union([need for r, need in spans if r.job.shape != shape])
        alone = total(union([n for _, n in mine])) - shared(union([n for _, n in mine]), others)
        tail = 0.0
        for start, end in billing:
            inside = [(r, n) for r, n in spans if start <= n[1] <= end]
            if not inside:
                continue
            last, need = max(inside, key=lambda item: item[1][1])
            still = any(n[0] <= need[1] < n[1] for _, n in spans)  # another job went on
            if last.job.shape == shape and not still:
                tail += end - need[1]
        out[shape] = {
            "jobs": len(mine),
            "killed": sum(1 for r, _ in mine if r.killed),
            "alone_minutes": round(alone * scale / MINUTE, 1),
            "tail_minutes": round(tail * scale / MINUTE, 1),
        }
    del busy  # the busy time is reported on its own
    return out


def billed_spans(states: Sequence[tuple[str, float]], until: float) -> list[tuple[float, float]]:
    """When the app was SCALING or RUNNING, the states the sandbox bills."""
    ends = [at for _, at in states[1:]] + [until]
    return union([(at, end) for (state, at), end in zip(states, ends, strict=True)
                  if state in ("SCALING", "RUNNING")])  # fmt: skip


def latencies(states: Sequence[tuple[str, float]]) -> tuple[list[float], list[float]]:
    """Real seconds from QUEUED to RUNNING (a start) and STOPPING to STOPPED (a stop)."""
    starts: list[float] = []
    stops: list[float] = []
    since: dict[str, float] = {}
    for state, at in states:
        if state in ("QUEUED", "STOPPING"):
            since[state] = at
        elif state == "RUNNING" and "QUEUED" in since:
            starts.append(at - since.pop("QUEUED"))
        elif state == "STOPPED" and "STOPPING" in since:
            stops.append(at - since.pop("STOPPING"))
    return starts, stops


def _median_minutes(seconds: Sequence[float], scale: float) -> float:
    return round(statistics.median(seconds) * scale / MINUTE, 1) if seconds else 0.0


# -- the report ------------------------------------------------------------------------------


def report(jobs: Sequence[Job], figures: Mapping[str, Any], scale: float) -> dict[str, Any]:
    ours, per_job, pair = figures["ours"], figures["per_job"], figures["ours_2r"]
    busy = ours["busy_minutes"]
    first = jobs[0].arrival
    rows = {
        "always_on": {"billed_minutes": DAY_MINUTES, "killed": 0},
        "nightly_stop": {"billed_minutes": round((NIGHTLY_STOP - first) / MINUTE, 1), "killed": 0},
        "per_job": per_job,
        "ours": ours,
        "ours_2r": pair,
    }
    labels = {
        "always_on": "always-on (24 h)",
        "nightly_stop": f"nightly stop ({hhmm(first)}-{hhmm(NIGHTLY_STOP)})",
        "per_job": "per-job start/stop, no lease",
        "ours": "ours: leases + watchdog",
        "ours_2r": "ours, 2 replicas (app-min)",
    }
    print()
    print(
        f"{'policy':<34}{'billed GPU-min':>15}{'× busy':>8}{'starts':>8}{'billed idle':>13}"
        f"{'jobs killed':>13}"
    )
    for key, row in rows.items():
        ratio = row["billed_minutes"] / busy if busy else float("nan")
        row["ratio_to_busy"] = round(ratio, 2)
        starts = str(row.get("starts", "-"))
        idle = row.get("billed_not_busy_minutes")
        print(
            f"{labels[key]:<34}{row['billed_minutes']:>15.1f}{ratio:>8.2f}{starts:>8}"
            f"{'-' if idle is None else f'{idle:.1f}':>13}{row['killed']:>13}"
        )
    print(f"{'busy time (replay of ours)':<34}{busy:>15.1f}")
    print(
        f"billed idle: billed while no job needed the server. Lease clock of ours' server: "
        f"{ours.get('server_clock_scale', 0):g}x real time (asked: {scale:g}x)"
    )
    for key in ("per_job", "ours", "ours_2r"):
        if rows[key].get("note"):
            print(f"  {labels[key]}: {rows[key]['note']}")
    print()
    print(
        f"{'shape (replay of ours)':<28}{'jobs':>6}{'killed':>8}{'alone min':>11}{'tail min':>10}"
    )
    for shape, part in ours["shapes"].items():
        print(f"{shape:<28}{part['jobs']:>6}{part['killed']:>8}{part['alone_minutes']:>11.1f}"
              f"{part['tail_minutes']:>10.1f}")  # fmt: skip
    print("alone: minutes only jobs of that shape needed the server; tail: billed minutes")
    print("after one of its jobs was the last one out, until the stop was done")
    checks: dict[str, bool] = {}
    bounds: dict[str, dict[str, float]] = {}
    verdict = {True: "PASS", False: "FAIL"}
    print()
    for key in ("ours", "ours_2r"):
        row = rows[key]
        tolerance = (
            WATCHDOG_EVERY / MINUTE + row["start_latency_minutes"] + row["stop_latency_minutes"]
        )
        excess = row["billed_minutes"] - row["busy_minutes"]
        checks[f"{key}_kills_zero_jobs"] = row["killed"] == 0
        checks[f"{key}_bills_within_tolerance_of_busy"] = excess <= tolerance
        bounds[key] = {"tolerance_minutes": round(tolerance, 1), "excess_minutes": round(excess, 1)}
        print(
            f"check: {labels[key]} kills zero jobs: "
            f"{verdict[checks[f'{key}_kills_zero_jobs']]} ({row['killed']} of {len(jobs)} killed)"
        )
        print(
            f"check: {labels[key]} bills at most its busy time + one watchdog interval + "
            f"start/stop latency: {verdict[checks[f'{key}_bills_within_tolerance_of_busy']]} "
            f"(billed {row['billed_minutes']:.1f} - busy {row['busy_minutes']:.1f} = "
            f"{excess:+.1f} min; allowed +{tolerance:.1f} = {WATCHDOG_EVERY / MINUTE:g} + start "
            f"{row['start_latency_minutes']:.1f} + stop {row['stop_latency_minutes']:.1f}; "
            f"billed idle {row['billed_not_busy_minutes']:.1f}, needed but not billed "
            f"{row['busy_not_billed_minutes']:.1f})"
        )
    print(f"(2 replicas bill 2 GPUs per app-minute: {2 * pair['billed_minutes']:.1f} GPU-min)")
    for key in ("per_job", "ours", "ours_2r"):
        for job, why in rows[key]["killed_jobs"].items():
            print(f"  killed under {labels[key]}: {job} ({why['fate']}): {why['why']}")
    return {
        "scale": scale,
        "policies": rows,
        "busy_minutes": busy,
        "bounds": bounds,
        "checks": checks,
    }
