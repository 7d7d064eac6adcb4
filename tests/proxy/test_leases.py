"""Leases: the book's rules on a fake clock, and the admin routes over loopback HTTP."""

from __future__ import annotations

import httpx
import pytest

from ondemand.proxy.leases import LeaseBook, LeaseError
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, USER_KEY, ProxyFactory
from tests.proxy.recorder import Recorder

ADMIN = {"X-API-Key": ADMIN_KEY}
USER = {"X-API-Key": USER_KEY}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_lives_its_ttl_on_the_servers_clock_then_is_gone() -> None:
    clock = Clock()
    book = LeaseBook(clock)
    lease, _ = book.acquire("org/repo/41/test/1", 60)
    assert [held.id for held in book.live()] == [lease.id]
    [view] = book.view()
    assert view["expires_in_seconds"] == 60
    clock.now += 59.9
    assert len(book.live()) == 1
    clock.now += 0.1
    assert book.live() == []
    assert book.renew(lease.id, 60) is None


def test_renew_extends_from_now_and_release_counts_what_remains() -> None:
    clock = Clock()
    book = LeaseBook(clock)
    first, _ = book.acquire("job-a", 60)
    second, _ = book.acquire("job-b", 60)
    clock.now += 50
    renewed = book.renew(first.id, 60)
    assert renewed is not None
    assert renewed.expires_at == clock.now + 60
    clock.now += 30  # second has expired, first has not
    released, remaining = book.release(first.id)
    assert released is not None
    assert (released["holder"], released["held_seconds"], remaining) == ("job-a", 80, 0)
    # A cleanup retried, or a lease that expired: not an error, same answer.
    assert book.release(first.id) == (None, 0)
    assert book.release(second.id) == (None, 0)


def test_release_reports_the_others_still_live() -> None:
    book = LeaseBook(Clock())
    leases = [book.acquire(f"job-{n}", 600)[0] for n in range(3)]
    assert book.release(leases[1].id)[1] == 2
    assert book.release("lse_unknown") == (None, 2)


@pytest.mark.parametrize(
    ("holder", "ttl", "why"),
    [
        ("", 60, "holder"),
        (None, 60, "holder"),
        ("x" * 201, 60, "holder"),
        ("job", 0, "ttl_seconds"),
        ("job", "60", "ttl_seconds"),
        ("job", True, "ttl_seconds"),
        ("job", 8 * 24 * 3600, "ttl_seconds"),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(
    holder: object, ttl: object, why: str
) -> None:
    book = LeaseBook(Clock())
    with pytest.raises(LeaseError, match=why):
        book.acquire(holder, ttl)
    assert book.live() == []


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def proxy(
    recorder: tuple[Recorder, BackgroundServer], start_proxy: ProxyFactory
) -> BackgroundServer:
    _, upstream = recorder
    return start_proxy(upstream.url)


def test_an_admin_takes_lists_renews_and_releases_leases(proxy: BackgroundServer) -> None:
    url = proxy.url + "/ondemand/leases"
    taken = httpx.post(url, headers=ADMIN, json={"holder": "org/repo/7/test/1", "ttl_seconds": 600})
    assert taken.status_code == 201, taken.text
    lease = taken.json()
    assert set(lease) == {
        "id", "holder", "acquired_at", "expires_at", "expires_in_seconds", "held_seconds"
    }  # fmt: skip
    assert lease["holder"] == "org/repo/7/test/1"
    assert 599 < lease["expires_in_seconds"] <= 600
    other = httpx.post(url, headers=ADMIN, json={"holder": "job-b", "ttl_seconds": 600}).json()

    listed = httpx.get(url, headers=ADMIN).json()["leases"]
    assert [held["id"] for held in listed] == [lease["id"], other["id"]]
    renewed = httpx.post(f"{url}/{lease['id']}/renew", headers=ADMIN, json={"ttl_seconds": 30})
    assert renewed.status_code == 200
    assert renewed.json()["expires_in_seconds"] <= 30

    status = httpx.get(proxy.url + "/ondemand/status", headers=USER).json()
    assert status["leases"] == {"live": 2}
    admin_view = httpx.get(proxy.url + "/ondemand/status", headers=ADMIN).json()
    assert [held["holder"] for held in admin_view["leases"]["held"]] == ["org/repo/7/test/1",
                                                                         "job-b"]  # fmt: skip

    released = httpx.delete(f"{url}/{lease['id']}", headers=ADMIN).json()
    assert (released["released"], released["remaining"]) == (True, 1)
    # What the lease was, for the run's share of the cost.
    assert (released["lease"]["id"], released["lease"]["holder"]) == (lease["id"], lease["holder"])
    assert released["lease"]["held_seconds"] >= 0
    again = httpx.delete(f"{url}/{lease['id']}", headers=ADMIN)
    assert again.json() == {"released": False, "remaining": 1}
    gone = httpx.post(f"{url}/{lease['id']}/renew", headers=ADMIN, json={"ttl_seconds": 30})
    assert gone.status_code == 404
    assert "take a new one" in gone.json()["error"]


def test_user_keys_and_anonymous_callers_cannot_touch_leases(proxy: BackgroundServer) -> None:
    url = proxy.url + "/ondemand/leases"
    body = {"holder": "sneaky", "ttl_seconds": 600}
    assert httpx.post(url, json=body).status_code == 401
    refused = httpx.post(url, headers=USER, json=body)
    assert refused.status_code == 403
    assert "needs an admin key" in refused.json()["error"]
    assert httpx.delete(url + "/lse_x", headers=USER).status_code == 403
    assert httpx.get(url, headers=ADMIN).json() == {"leases": []}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "", b"not json", 400),
        ("POST", "", b"[1, 2]", 400),
        ("POST", "", b'{"holder": "job"}', 400),
        ("POST", "", b"x" * 20_000, 413),
        ("PUT", "", b"{}", 405),
        ("GET", "/lse_abc", b"", 405),
        ("GET", "/lse_abc/renew", b"", 405),
        ("POST", "/lse_abc/renew", b'{"ttl_seconds": -1}', 400),
        ("DELETE", "/a/b/c", b"", 404),
    ],
)
def test_malformed_lease_requests_get_clear_errors(
    proxy: BackgroundServer, method: str, path: str, body: bytes, status: int
) -> None:
    answer = httpx.request(method, proxy.url + "/ondemand/leases" + path, headers=ADMIN,
                           content=body)  # fmt: skip
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]
