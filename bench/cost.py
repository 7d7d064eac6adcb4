"""Billed GPU-minutes of a day of CI jobs under four policies, replayed against the sandbox
with fast clocks.

    python bench/cost.py            # a working day, 1 s = 3 simulated min (~4 min per policy)
    python bench/cost.py --quick    # a morning, 1 s = 5 min (~45 s per policy)
    python bench/cost.py --seed 7 --verbose --json cost.json

Policies, over the same trace:

1. always-on: the GPU runs 24 h (1440 min, analytic);
2. nightly stop: started by the day's first job, stopped by a cron at 20:00, never stopped
   in between (analytic, cold start ignored);
3. per-job start/stop without leases (replayed): each job runs ``up`` without a lease and
   its cleanup stops the deployment unconditionally (``down --force``);
4. ours (replayed): each job runs ``up`` (takes a lease) and its cleanup runs ``down``
   (releases it; the server stops once no lease is left, requests in flight getting the
   drain timeout to end), plus a watchdog check every 5 simulated minutes (idle threshold
   10 min) for dead runners;
5. ours on an app of 2 replicas behind the sandbox's round-robin balancer (replayed).

Besides CI jobs (one ``up`` step, one ``down`` step), the trace has jobs in the shapes
people also run: "script" (``X=$(ondemand up)`` in one shell and ``ondemand down`` in
another: no lease id, the user's holder), "manual" (a ``workflow_dispatch`` up, then a
later run's down), "cancelled_up" (cancelled while its up waits; its cleanup still runs)
and "stream" (its down runs with a stream still open, which must run to its end). The
report gives each shape's jobs, kills, and minutes.

The trace (deterministic from ``--seed``): pushes arrive at uniform random times in working
blocks (08:00-12:00: 8 pushes, 13:30-17:15: 7, 18:15-19:00: 2), which leaves a lunch gap and
an evening gap; each push starts 2-4 jobs within a minute, so jobs overlap. A job's tests
last 4-25 min (triangular, mode 8 min) from the moment its ``up`` returns, with a chat
request every simulated minute. About 10 % of the jobs are cancelled part-way (GitHub still
runs ``if: always()`` cleanup steps on cancel), and 1-2 runners are lost part-way (no
cleanup at all: their lease must expire). Every lease lives 45 simulated minutes, longer than
any job. A killed job fails its step and goes on to its cleanup. ``--quick`` replays a
morning (08:00-09:30: 4 pushes, 10:30-11:15: 3; one lost runner).

A job needs the server from the start of its ``up`` to the end of its cleanup; a lost job
from the start of its ``up`` until its lease expires. The busy time is the union of those
intervals, measured in the replay of policy 4. A job is killed when any of its requests
fails, or when the deployment went STOPPING (the sandbox app's own history) while the job
was running its tests. Acceptance, printed PASS/FAIL: policy 4 kills no job, and bills at
most one watchdog interval plus one start and one stop (medians measured in the same run)
more than the busy time. Billing less is no failure: the busy time includes what jobs wait
before the provider bills a start (QUEUED, INITIALIZING) and after it stops billing
(STOPPING); both parts are reported from the app's history.

Fast clocks: one real second is ``--scale`` simulated seconds. The app servers run their
lease and idle clocks that much faster (``ONDEMAND_CLOCK_SCALE`` in the sandbox's
environment, which it passes on to its apps; each replay first checks the server's lease
clock against the scale). The bench divides job
arrivals, test durations and the watchdog interval by the scale. Provider latency stays real
(about 1 s to start, 0.5 s to stop, and ``up`` polls at most 1 s apart), which at the
default scale is a cold start of several simulated minutes, as on a GPU cloud. Billed
GPU-minutes are the sandbox's billed seconds (SCALING and RUNNING) times the scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.cost_report import account, report
from bench.cost_trace import (
    DAY,
    HOUR,
    LEASE_TTL,
    MINUTE,
    MORNING,
    WATCHDOG_EVERY,
    Job,
    hhmm,
    make_trace,
    summarise,
)
from ondemand.config import ResolvedConfig, load_config
from ondemand.holders import holder_name
from ondemand.lifecycle import UpResult, admin_key, down, opened_provider, up
from ondemand.providers.base import Provider
from ondemand.sandbox.background import background_sandbox
from ondemand.watchdog import watch_once

MODEL = "llama3.2"
CLOCK_SCALE = "ONDEMAND_CLOCK_SCALE"
IDLE = 10 * MINUTE
MAX_LIFETIME = 12 * HOUR
# A job's tests send a chat this often (simulated).
CHAT_EVERY = 1 * MINUTE
# One token: answered at once. A "stream" job's last request streams a whole answer (200
# tokens at 200 a second: 1 real second) and is still open when its cleanup runs.
CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
             "options": {"num_predict": 1}}  # fmt: skip
STREAM_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
MANUAL_HOLDER = "org/repo/manual/ollama manual"
# down's --drain-timeout: 2 simulated minutes, in real seconds (whole seconds, at least 1).
DRAIN_TIMEOUT = 2 * MINUTE

# -- the sandbox ---------------------------------------------------------------------------


def bare_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ONDEMAND_", "OVH_"))}


@contextmanager
def sandbox(state: Path, scale: float) -> Iterator[dict[str, str]]:
    env = bare_env()
    # Passed on to every app: the emulated Ollama answers at once, so a request's own time
    # does not blur the simulated minutes, and the server runs on the fast clock.
    env.update(
        {
            CLOCK_SCALE: f"{scale:g}",
            "OLLAMA_EMULATOR_LOAD_TIME": "0",
            "OLLAMA_EMULATOR_TOKENS_PER_SECOND": "200",
            "OLLAMA_EMULATOR_RESPONSE_TOKENS": "200",
            "OLLAMA_EMULATOR_TTFT": "0",
            "OLLAMA_EMULATOR_PULL_SECONDS": "0.05",
        }
    )
    with background_sandbox(state, env, "--transition-seconds", "0.2") as printed:
        yield printed


@dataclass(frozen=True)
class Setup:
    printed: dict[str, str]
    state: Path
    scale: float
    verbose: bool

    def env(self, name: str) -> dict[str, str]:
        replicas = "2" if name.endswith("-2r") else "1"
        return {
            **bare_env(),
            "ONDEMAND_PROVIDER": "sandbox",
            "ONDEMAND_SANDBOX_URL": self.printed["ONDEMAND_SANDBOX_URL"],
            "OVH_AI_TOKEN": self.printed["OVH_AI_TOKEN"],
            "ONDEMAND_STATE_DIR": str(self.state),
            "ONDEMAND_NAME": name,
            "ONDEMAND_MODELS": MODEL,
            # Real seconds for 'up'; the server's drain lasts this plus 60 s by its scaled
            # clock, so the default keeps a drain as long in simulated time as in production.
            "ONDEMAND_TIMEOUT": "15m",
            "ONDEMAND_LEASE_TTL": f"{LEASE_TTL / MINUTE:g}m",
            "ONDEMAND_IDLE_TIMEOUT": f"{IDLE / MINUTE:g}m",
            "ONDEMAND_MAX_LIFETIME": f"{MAX_LIFETIME / HOUR:g}h",
            "ONDEMAND_DRAIN_TIMEOUT": f"{max(1, round(DRAIN_TIMEOUT / self.scale))}s",
            "ONDEMAND_OVH_REPLICAS": replicas,
        }

    def config(self, name: str) -> tuple[ResolvedConfig, dict[str, str]]:
        env = self.env(name)
        return load_config(path=None, env=env, flags={}, cwd=None), env

    @contextmanager
    def provider(self, name: str) -> Iterator[tuple[ResolvedConfig, Provider]]:
        """A provider of its own for each caller: they run in threads of their own."""
        resolved, env = self.config(name)
        with opened_provider(resolved, env) as provider:
            yield resolved, provider

    def app(self, name: str) -> dict[str, Any]:
        """The OVH app as the sandbox's API shows it (its state history included)."""
        answer = httpx.get(
            self.printed["OVH_AI_API_URL"] + "/v1/app",
            headers={"Authorization": f"Bearer {self.printed['OVH_AI_TOKEN']}"},
            params={"labelSelector": f"ondemand-name={name}"},
            timeout=10,
        )
        items: list[dict[str, Any]] = answer.json()["items"]
        return items[0]

    def billed_seconds(self, name: str) -> float:
        apps = httpx.get(self.printed["ONDEMAND_SANDBOX_URL"] + "/_sandbox/apps", timeout=10)
        for app in apps.json()["apps"]:
            if app["api"] == "ovh" and app["name"] == name:
                return float(app["billed_seconds"])
        raise LookupError(f"no app named {name!r} in the sandbox")


def history(app: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The app's state transitions, each with its real time."""
    out = []
    for entry in app["status"]["history"]:
        moment = datetime.fromisoformat(entry["date"].replace("Z", "+00:00"))
        out.append((str(entry["state"]), moment.timestamp()))
    return out


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# -- the replay ------------------------------------------------------------------------------


class _Cancelled(KeyboardInterrupt):
    """A workflow run cancelled while its up waits (the runner sends SIGINT)."""


def _cancel_while_waiting(line: str) -> None:
    if "waiting until it is ready" in line or "already running" in line:
        raise _Cancelled


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Clock:
    """Simulated seconds since midnight against real ``time.time()``."""

    scale: float
    origin: float
    began: float

    def real(self, sim: float) -> float:
        return self.began + (sim - self.origin) / self.scale

    def sim(self, real: float) -> float:
        return self.origin + (real - self.began) * self.scale

    def now(self) -> float:
        return self.sim(time.time())


@dataclass
class Run:
    """What happened to one job in a replay (real times)."""

    job: Job
    up_start: float = 0.0
    up_end: float = 0.0
    tests_end: float = 0.0
    cleanup_end: float | None = None
    lease_expiry: float | None = None
    cold: bool = False
    chats: int = 0
    failure: str | None = None  # the request or call that failed
    cancelled_up: bool = False  # cancelled while its up waited (the "cancelled_up" shape)
    stream_done: bool = False  # its last stream ran to its end (the "stream" shape)
    stopped_under: str | None = None  # filled in from the app's history
    cleanup: str = ""

    @property
    def killed(self) -> bool:
        return self.failure is not None or self.stopped_under is not None

    def needs(self) -> tuple[float, float]:
        if self.cleanup_end is not None:
            return self.up_start, self.cleanup_end
        return self.up_start, self.lease_expiry or self.tests_end


@dataclass
class Replay:
    setup: Setup
    policy: str  # "per_job", "ours", or "ours_2r" (ours on an app of 2 replicas)
    name: str
    jobs: Sequence[Job]
    clock: Clock
    stop: threading.Event
    runs: list[Run] = field(default_factory=list)
    watchdog: list[str] = field(default_factory=list)
    watch_done: threading.Event = field(default_factory=threading.Event)
    _print: threading.Lock = field(default_factory=threading.Lock)

    @property
    def leased(self) -> bool:
        return self.policy.startswith("ours")

    def say(self, text: str) -> None:
        # Once interrupted, what the jobs see is the sandbox going away: not news.
        if self.setup.verbose and not self.stop.is_set():
            with self._print:
                print(f"  [{hhmm(self.clock.now())}] {self.policy}: {text}", flush=True)

    def wait_until(self, real: float) -> bool:
        """Sleep until ``real``; False when the replay is being stopped."""
        return not self.stop.wait(max(0.0, real - time.time()))

    def job(self, run: Run) -> None:
        job = run.job
        if not self.wait_until(self.clock.real(job.arrival)):
            return
        with self.setup.provider(self.name) as (resolved, provider):
            self.work(run, resolved, provider)

    def holder(self, job: Job) -> str:
        """Who holds the job's lease, as the CLI names it in that shape."""
        if job.shape == "script":
            return holder_name({}, self.name)  # the user on this host, from any shell
        return MANUAL_HOLDER if job.shape == "manual" else job.name

    def work(self, run: Run, resolved: ResolvedConfig, provider: Provider) -> None:
        job, scale = run.job, self.setup.scale
        run.up_start = time.time()
        lease_id: str | None = None
        result: UpResult | None = None
        try:
            result = up(
                resolved, provider, lease=self.leased, holder=self.holder(job),
                progress=_cancel_while_waiting if job.shape == "cancelled_up" else _quiet,
            )  # fmt: skip
            run.cold = not result.reused
            if result.lease is not None:
                lease_id = result.lease.id
            elif self.leased:
                run.failure = f"up took no lease: {result.lease_problem}"
        except _Cancelled:
            run.cancelled_up = True  # the run was cancelled: its cleanup step still runs
        except Exception as exc:  # any failure of 'up' fails the job
            run.failure = f"up failed: {type(exc).__name__}: {one_line(exc)}"
        key = result.api_key if result is not None else None
        run.up_end = time.time()
        self.say(
            f"{job.name} up in {(run.up_end - run.up_start) * scale / MINUTE:.1f} min"
            + (" (cold)" if run.cold else "")
            + (f": {run.failure}" if run.failure else "")
        )
        if result is not None and run.failure is None and job.fate == "lost" and lease_id:
            run.lease_expiry = self.lease_expiry(resolved, provider, result.url, lease_id)
        if result is not None and run.failure is None:
            self.tests(run, result.url, key or "")
        run.tests_end = time.time()
        streaming: threading.Thread | None = None
        if result is not None and run.failure is None and job.shape == "stream":
            streaming = self.open_stream(run, result.url, key or "")
        if not job.cleans_up:
            self.say(f"{job.name}: runner lost, no cleanup")
            return
        if self.stop.is_set():
            return
        try:
            if self.leased and job.shape in ("script", "manual"):
                # Another shell, or a later run: no lease id, the holder's name only.
                ended = down(resolved, provider, holder=self.holder(job))
            elif self.leased:
                ended = down(
                    resolved, provider, lease_ids=[lease_id] if lease_id else None,
                    holder=None if lease_id else job.name,
                )  # fmt: skip
            else:
                ended = down(resolved, provider, force=True)
            run.cleanup = (
                "kept" if ended.kept else "stopped" if ended.was_running else "already stopped"
            )
        except Exception as exc:  # a failed cleanup is reported, not fatal to the day
            run.cleanup = f"failed: {type(exc).__name__}: {one_line(exc)}"
        run.cleanup_end = time.time()
        if streaming is not None:
            streaming.join(30)
            if not run.stream_done and run.failure is None:
                run.failure = "its stream was cut before its end"
        self.say(f"{job.name} cleanup ({job.fate}, {job.shape}): {run.cleanup}")

    def open_stream(self, run: Run, url: str, key: str) -> threading.Thread:
        """A stream the job's last test leaves open: its cleanup runs while it streams."""
        first = threading.Event()

        def stream() -> None:
            try:
                with httpx.stream(
                    "POST", url + "/api/chat", json=STREAM_BODY,
                    headers={"X-API-Key": key}, timeout=30,
                ) as answer:  # fmt: skip
                    for line in answer.iter_lines():
                        first.set()
                        if line and json.loads(line).get("done"):
                            run.stream_done = True
            except (httpx.HTTPError, ValueError) as exc:
                run.failure = f"stream failed: {type(exc).__name__}: {exc}"
            finally:
                first.set()

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        first.wait(30)
        return thread

    def tests(self, run: Run, url: str, key: str) -> None:
        job, scale = run.job, self.setup.scale
        ends = run.up_end + job.runs / scale
        with httpx.Client(headers={"X-API-Key": key}, timeout=10) as client:
            while time.time() < ends and not self.stop.is_set():
                try:
                    answer = client.post(url + "/api/chat", json=CHAT_BODY)
                    if answer.status_code != 200:
                        run.failure = f"chat answered {answer.status_code}: {answer.text[:120]}"
                except httpx.HTTPError as exc:
                    run.failure = f"chat failed: {type(exc).__name__}: {exc}"
                if run.failure is not None:
                    self.say(f"{job.name} KILLED: {run.failure}")
                    return
                run.chats += 1
                self.wait_until(min(ends, time.time() + CHAT_EVERY / scale))

    def lease_expiry(
        self, resolved: ResolvedConfig, provider: Provider, url: str, lease_id: str
    ) -> float | None:
        """When the lease ends, read from the server itself (its clock is the scaled one)."""
        admin = admin_key(resolved, provider, self.name) or ""
        asked = time.time()
        lease = lease_view(url, admin, lease_id)
        if lease is None:
            return None
        return asked + float(lease["expires_in_seconds"]) / self.setup.scale

    def watch(self) -> None:
        """A cron running ``ondemand watchdog`` every interval."""
        every = WATCHDOG_EVERY / self.setup.scale
        following = time.time() + every
        while not self.watch_done.wait(max(0.0, following - time.time())):
            if self.stop.is_set():
                return
            following += every
            try:
                with self.setup.provider(self.name) as (resolved, provider):
                    verdict = watch_once(
                        resolved,
                        provider,
                        idle_seconds=IDLE,
                        # The watchdog compares the provider's running-since with real time.
                        max_lifetime_seconds=MAX_LIFETIME / self.setup.scale,
                    )
                if verdict.action == "stopped":
                    self.watchdog.append(f"{hhmm(self.clock.now())} {verdict.reason}")
                    self.say(f"watchdog stopped it: {verdict.reason}")
            except Exception as exc:  # a failed check is the next check's job
                self.watchdog.append(f"{hhmm(self.clock.now())} failed: {one_line(exc)}")


def lease_view(url: str, admin: str, lease_id: str) -> dict[str, Any] | None:
    """A lease as a server holding it shows it. With replicas, the one that answers may be
    one that started after the lease was taken: ask a few times."""
    for _ in range(6):
        answer = httpx.get(url + "/ondemand/leases", headers={"X-API-Key": admin}, timeout=10)
        for lease in answer.json().get("leases") or []:
            if lease.get("id") == lease_id:
                return dict(lease)
    return None


def warm_up(setup: Setup, name: str, leased: bool) -> dict[str, float]:
    """Create the app and fill its model cache (a real cloud keeps it on a volume), and for
    leased runs check that the server's clock does run at the scale."""
    seen: dict[str, float] = {}
    with setup.provider(name) as (resolved, provider):
        result = up(resolved, provider, lease=leased, holder="warm-up")
        if leased:
            admin = admin_key(resolved, provider, name) or ""
            read: list[tuple[float, float]] = []
            lease_id = result.lease.id if result.lease else ""
            for _ in range(2):
                lease = lease_view(result.url, admin, lease_id)
                if lease is None:
                    raise SystemExit(f"the warm-up's lease {lease_id} is on no replica")
                read.append((time.time(), float(lease["expires_in_seconds"])))
                time.sleep(0.5)
            (t1, left1), (t2, left2) = read
            seen["server_clock_scale"] = (left1 - left2) / (t2 - t1)
        down(resolved, provider, force=True)
    return seen


def replay(setup: Setup, policy: str, jobs: Sequence[Job], stop: threading.Event) -> dict[str, Any]:
    name = f"cost-{policy.replace('_', '-')}"
    ours = policy.startswith("ours")
    seen = warm_up(setup, name, leased=ours)
    scale = setup.scale
    if "server_clock_scale" in seen and abs(seen["server_clock_scale"] / scale - 1) > 0.2:
        raise SystemExit(
            f"the app server's lease clock runs {seen['server_clock_scale']:.1f}x real time, "
            f"not {scale:g}x: {CLOCK_SCALE} did not reach it"
        )
    billed_before = setup.billed_seconds(name)
    origin = jobs[0].arrival - MINUTE
    clock = Clock(scale, origin, time.time() + 0.5)
    run = Replay(setup, policy, name, jobs, clock, stop)
    run.runs = [Run(job) for job in jobs]
    threads = [threading.Thread(target=run.job, args=(r,), daemon=True) for r in run.runs]
    if ours:
        threads.append(threading.Thread(target=run.watch, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads[: len(run.runs)]:
        while thread.is_alive():
            thread.join(0.5)
    # The day ends when every job is done, every lost lease has expired and a watchdog
    # past the idle threshold has had its chance (or, for ours, once the app stopped).
    latest = max([time.time()] + [r.lease_expiry or 0.0 for r in run.runs])
    horizon = latest + (IDLE + 2 * WATCHDOG_EVERY) / scale if ours else time.time()
    while time.time() < horizon and not stop.is_set():
        state = setup.app(name)["status"]["state"]
        if state == "STOPPED" and time.time() > latest:
            break
        stop.wait(0.2)
    ended = time.time()
    run.watch_done.set()
    for thread in threads[len(run.runs) :]:
        thread.join(10)
    billed = setup.billed_seconds(name) - billed_before
    app = setup.app(name)
    still_running = app["status"]["state"] not in ("STOPPED", "FAILED")
    figures = account(run, history(app), billed, ended, still_running)
    if "server_clock_scale" in seen:
        figures["server_clock_scale"] = round(seen["server_clock_scale"], 1)
    if still_running:
        with setup.provider(name) as (resolved, provider):
            down(resolved, provider, force=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a morning at 1 s = 5 min")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--scale", type=float, help="simulated seconds per real second")
    parser.add_argument("--verbose", action="store_true", help="one line per job event")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scale: float = args.scale or (300.0 if args.quick else 180.0)
    blocks, lost = (MORNING, (1, 1)) if args.quick else (DAY, (1, 2))
    jobs = make_trace(args.seed, blocks, lost)
    trace = summarise(jobs)
    print(
        f"trace (seed {args.seed}): {trace['jobs']} jobs in {trace['pushes']} pushes, "
        f"{trace['first_job']}-{trace['last_job']}; {trace['overlap_another_push']} overlap "
        f"a job of another push (at most {trace['most_at_once']} at once); "
        f"{trace['cancelled']} cancelled; lost runners: {', '.join(trace['lost'])}; "
        f"{trace['test_minutes']} test-minutes; busy {trace['busy_minutes']} min in "
        f"{trace['busy_periods']} periods (no start latency); gaps over 30 min: "
        f"{', '.join(trace['gaps_over_30_min']) or 'none'}"
    )
    print(
        f"scale: 1 real s = {scale / MINUTE:g} simulated min; lease TTL "
        f"{LEASE_TTL / MINUTE:g} min, watchdog every {WATCHDOG_EVERY / MINUTE:g} min "
        f"(idle {IDLE / MINUTE:g} min)"
    )
    stop = threading.Event()
    figures: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp) / "sandbox", scale) as printed:
            setup = Setup(printed, Path(tmp), scale, args.verbose)
            try:
                for policy in ("per_job", "ours", "ours_2r"):
                    began = time.monotonic()
                    print(f"replaying {policy} ...", flush=True)
                    figures[policy] = replay(setup, policy, jobs, stop)
                    print(f"  done in {time.monotonic() - began:.0f} s", flush=True)
            except KeyboardInterrupt:
                # Before the sandbox goes: the jobs stop instead of retrying into the void.
                stop.set()
                raise
    except KeyboardInterrupt:
        print("interrupted: the sandbox stopped its apps", file=sys.stderr)
        sys.exit(130)
    result = report(jobs, figures, scale)
    result = {"seed": args.seed, "quick": args.quick, "trace": trace, **result}
    result["trace"]["jobs_list"] = [
        {"name": j.name, "push": j.push, "arrival": hhmm(j.arrival), "fate": j.fate,
         "tests_minutes": round(j.tests / MINUTE, 1), "ran_minutes": round(j.runs / MINUTE, 1)}
        for j in jobs
    ]  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
