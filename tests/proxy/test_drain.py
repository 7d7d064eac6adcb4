"""Draining and per-run keys: the stop decision and the refusal of new leases are one step,
and a per-run key works exactly as long as its lease."""

from __future__ import annotations

import itertools

import httpx
import pytest

from ondemand.proxy.leases import Draining, LeaseBook, LeaseError
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, USER_KEY, ProxyFactory
from tests.proxy.recorder import Recorder
from tests.proxy.test_leases import Clock

ADMIN = {"X-API-Key": ADMIN_KEY}


def test_drain_refuses_while_a_lease_or_a_request_is_live() -> None:
    clock = Clock()
    book = LeaseBook(clock)
    mine, _ = book.acquire("run/1/a/1", 600)
    theirs, _ = book.acquire("run/2/b/1", 600)
    decision = book.drain(release=mine.id, inflight=0, last_activity=clock.now)
    assert not decision.draining
    assert (decision.released, decision.remaining) == ([mine.id], 1)
    assert decision.holders == ["run/2/b/1"]
    assert book.acquire("run/3/c/1", 60)  # not draining: new leases still welcome
    book.release(theirs.id)
    book.release(book.live()[0].id)
    busy = book.drain(inflight=2, last_activity=clock.now)
    assert not busy.draining
    assert "2 request(s) in flight" in busy.reason
    assert book.draining() is None


def test_a_drain_refuses_new_leases_until_it_is_called_off_or_expires() -> None:
    clock = Clock()
    book = LeaseBook(clock)
    decision = book.drain(inflight=0, last_activity=clock.now, ttl_seconds=120)
    assert decision.draining
    assert decision.expires_in_seconds == 120
    with pytest.raises(Draining, match="being stopped"):
        book.acquire("late/1/job/1", 600)
    assert book.cancel_drain() is True
    assert book.acquire("late/1/job/1", 600)
    book.release(book.live()[0].id)
    book.drain(inflight=0, last_activity=clock.now, ttl_seconds=120)
    clock.now += 120  # the cleanup that drained was killed before it stopped anything
    lease, _ = book.acquire("late/1/job/2", 600)
    assert book.draining() is None
    assert lease.holder == "late/1/job/2"


def test_the_watchdogs_drain_needs_the_idle_time_too() -> None:
    clock = Clock()
    book = LeaseBook(clock)
    last = clock.now
    clock.now += 299
    assert not book.drain(inflight=0, last_activity=last, idle_seconds=300).draining
    clock.now += 1
    assert book.drain(inflight=0, last_activity=last, idle_seconds=300).draining


def test_every_order_of_a_release_and_a_new_lease_keeps_the_newcomer() -> None:
    """Job A's cleanup (drain with release) and job B's lease, in either order, against
    a book where A holds the only lease: B either holds a lease and A does not drain, or B
    is refused and A drains. Never both a lease and a drain."""
    for order in itertools.permutations(["a_drains", "b_acquires"]):
        book = LeaseBook(Clock())
        held, _ = book.acquire("job-a", 600)
        b_lease = None
        drained = False
        for step in order:
            if step == "a_drains":
                drained = book.drain(release=held.id, inflight=0, last_activity=0).draining
            else:
                try:
                    b_lease, _ = book.acquire("job-b", 600)
                except Draining:
                    b_lease = None
        assert drained != (b_lease is not None), order


def test_run_key_models_are_checked() -> None:
    book = LeaseBook(Clock())
    bad_keys: list[object] = [{"models": []}, {"models": "llama3.2"}, {"models": [3]}, "yes"]
    for bad in bad_keys:
        with pytest.raises(LeaseError, match="key"):
            book.acquire("job", 60, bad)
    _, key = book.acquire("job", 60, {"models": ["llama3.2"]})
    assert key is not None
    assert key.startswith("odk_run_")
    entry = book.run_key(key.encode())
    assert entry is not None
    assert entry.models == frozenset({"llama3.2:latest"})


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def proxy(
    recorder: tuple[Recorder, BackgroundServer], start_proxy: ProxyFactory
) -> BackgroundServer:
    _, upstream = recorder
    return start_proxy(upstream.url)


def test_a_per_run_key_works_for_its_models_while_its_lease_lives(
    proxy: BackgroundServer,
) -> None:
    leases = proxy.url + "/ondemand/leases"
    body = {"holder": "org/repo/9/test/1", "ttl_seconds": 600, "key": {"models": ["llama3.2"]}}
    taken = httpx.post(leases, headers=ADMIN, json=body)
    assert taken.status_code == 201, taken.text
    key = taken.json()["key"]
    run = {"X-API-Key": key}
    chat = {"model": "llama3.2", "messages": [], "stream": False}
    assert httpx.post(proxy.url + "/api/chat", headers=run, json=chat).status_code == 200
    other = httpx.post(proxy.url + "/api/chat", headers=run, json={**chat, "model": "qwen3"})
    assert other.status_code == 403
    # Not an admin key, and not shown again anywhere.
    assert httpx.get(leases, headers=run).status_code == 403
    listed = httpx.get(leases, headers=ADMIN)
    assert key not in listed.text
    assert listed.json()["leases"][0]["key_models"] == ["llama3.2:latest"]

    httpx.delete(f"{leases}/{taken.json()['id']}", headers=ADMIN)
    gone = httpx.post(proxy.url + "/api/chat", headers=run, json=chat)
    assert gone.status_code == 401
    assert httpx.post(proxy.url + "/api/chat", headers={"X-API-Key": USER_KEY},
                      json=chat).status_code == 200  # fmt: skip


def test_drain_over_http_releases_decides_and_blocks_new_leases(proxy: BackgroundServer) -> None:
    leases, drain = proxy.url + "/ondemand/leases", proxy.url + "/ondemand/drain"
    lease = httpx.post(leases, headers=ADMIN, json={"holder": "job-a", "ttl_seconds": 60}).json()
    decided = httpx.post(drain, headers=ADMIN, json={"release": lease["id"], "ttl_seconds": 60})
    assert decided.status_code == 200, decided.text
    assert decided.json()["draining"] is True
    assert decided.json()["released"] == [lease["id"]]
    refused = httpx.post(leases, headers=ADMIN, json={"holder": "job-b", "ttl_seconds": 60})
    assert refused.status_code == 409
    assert refused.json()["draining"] is True
    status = httpx.get(proxy.url + "/ondemand/status", headers={"X-API-Key": USER_KEY}).json()
    assert status["draining"] is True
    assert httpx.get(drain, headers=ADMIN).json()["draining"]["reason"]
    assert httpx.delete(drain, headers=ADMIN).json()["cancelled"] is True
    again = httpx.post(leases, headers=ADMIN, json={"holder": "job-b", "ttl_seconds": 60})
    assert again.status_code == 201
    kept = httpx.post(drain, headers=ADMIN, json={"holder": "job-a"}).json()
    assert kept["draining"] is False
    assert kept["holders"] == ["job-b"]
    user = httpx.post(drain, headers={"X-API-Key": USER_KEY}, json={})
    assert user.status_code == 403
    bad = httpx.post(drain, headers=ADMIN, json={"idle_seconds": "long"})
    assert bad.status_code == 400
