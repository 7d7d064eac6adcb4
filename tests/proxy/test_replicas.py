"""What lets several replicas behind one URL act as one server: per-run keys any replica
can check, one lease id on every replica, releases remembered by replicas that never saw
the lease, and each answer naming its replica."""

from __future__ import annotations

import httpx
import pytest

from ondemand.proxy.leases import Draining, LeaseBook, LeaseError
from ondemand.proxy.runkeys import RunKeys, run_key_secret
from ondemand.serving import BackgroundServer
from tests.conftest import ADMIN_KEY, KEY_ENV, ProxyFactory
from tests.proxy.recorder import Recorder
from tests.proxy.test_leases import Clock

ADMIN = {"X-API-Key": ADMIN_KEY}
SECRET = run_key_secret({"ONDEMAND_ADMIN_KEY": ADMIN_KEY})


def _books(clock: Clock) -> tuple[LeaseBook, LeaseBook]:
    return LeaseBook(clock, RunKeys(SECRET)), LeaseBook(clock, RunKeys(SECRET))


def test_a_key_minted_by_one_replica_works_on_another_until_its_lease_ends() -> None:
    clock = Clock()
    one, two = _books(clock)
    lease, key = one.acquire("org/repo/1/test/1", 60, {"models": ["llama3.2"]})
    assert key is not None
    entry = two.run_key(key.encode())
    assert entry is not None
    assert entry.models == frozenset({"llama3.2:latest"})
    assert entry.name == "lease:org/repo/1/test/1"
    clock.now += 61  # its lease ended: no replica takes it any more
    assert one.run_key(key.encode()) is None
    assert two.run_key(key.encode()) is None
    assert lease.id not in {x.id for x in one.live()}


def test_a_release_kills_the_key_on_a_replica_that_never_saw_the_lease() -> None:
    clock = Clock()
    one, two = _books(clock)
    lease, key = one.acquire("org/repo/1/test/1", 3600, True)
    assert key is not None
    two.release(lease.id)  # the cleanup's release reached the second replica too
    assert two.run_key(key.encode()) is None
    assert one.run_key(key.encode()) is not None  # not yet released there
    one.drain(release=[lease.id], inflight=0, last_activity=clock.now)
    assert one.run_key(key.encode()) is None


def test_a_renewed_lease_keeps_its_key_past_the_keys_own_end_where_it_is_known() -> None:
    clock = Clock()
    one, two = _books(clock)
    lease, key = one.acquire("job", 60, True)
    assert key is not None
    clock.now += 50
    one.renew(lease.id, 600)
    clock.now += 20
    assert one.run_key(key.encode()) is not None
    assert two.run_key(key.encode()) is None  # the other replica only has the key's word


@pytest.mark.parametrize(
    "forged",
    [
        "odk_run_",
        "odk_run_e30.AAAA",
        "odk_run_not-base64!.sig",
        "odk_" + "x" * 40,
    ],
)
def test_keys_nobody_signed_are_refused(forged: str) -> None:
    one, _ = _books(Clock())
    assert one.run_key(forged.encode()) is None


def test_a_key_of_another_deployment_or_another_run_is_refused() -> None:
    clock = Clock()
    ours = LeaseBook(clock, RunKeys(SECRET))
    other_admin = LeaseBook(clock, RunKeys(run_key_secret({"ONDEMAND_ADMIN_KEY": "odk_other"})))
    next_run = LeaseBook(
        clock,
        RunKeys(
            run_key_secret({"ONDEMAND_ADMIN_KEY": ADMIN_KEY, "ONDEMAND_RUN_KEY_EPOCH": "run-2"})
        ),
    )
    _, key = ours.acquire("job", 600, True)
    assert key is not None
    assert other_admin.run_key(key.encode()) is None
    assert next_run.run_key(key.encode()) is None
    # A tampered payload breaks the signature.
    body, _, signature = key.removeprefix("odk_run_").partition(".")
    assert ours.run_key(f"odk_run_{body[:-2]}AA.{signature}".encode()) is None


def test_one_lease_id_on_every_replica_renews_and_a_released_id_is_not_taken_again() -> None:
    clock = Clock()
    book, _ = _books(clock)
    first, _ = book.acquire("job", 60, None, "lse_chosen_by_client")
    clock.now += 30
    again, _ = book.acquire("job", 60, None, "lse_chosen_by_client")
    assert again.id == first.id == "lse_chosen_by_client"
    assert again.expires_at == clock.now + 60
    assert len(book.live()) == 1
    with pytest.raises(LeaseError, match="held by someone else"):
        book.acquire("another-job", 60, None, "lse_chosen_by_client")
    book.release("lse_chosen_by_client")
    with pytest.raises(LeaseError, match="was released"):
        book.acquire("job", 60, None, "lse_chosen_by_client")
    with pytest.raises(LeaseError, match="8 to 64"):
        book.acquire("job", 60, None, "bad id!")


def test_a_drain_that_waits_for_requests_refuses_leases_but_not_the_requests() -> None:
    clock = Clock()
    book, _ = _books(clock)
    refused = book.drain(inflight=2, last_activity=clock.now)
    assert (refused.draining, refused.reason) == (False, "2 request(s) in flight")
    granted = book.drain(inflight=2, last_activity=clock.now, wait_inflight=True)
    assert granted.draining
    assert granted.inflight == 2
    with pytest.raises(Draining):
        book.acquire("late-job", 60)


def test_the_released_list_is_bounded() -> None:
    """A client cannot grow a replica's memory without bound by releasing made-up ids:
    past the bound the oldest are forgotten."""
    from ondemand.proxy.leases import MAX_RELEASED

    clock = Clock()
    book, _ = _books(clock)
    for n in range(MAX_RELEASED + 50):
        book.release(f"lse_{n:010d}")
    book.acquire("job", 60, None, f"lse_{0:010d}")  # forgotten: may be taken again
    with pytest.raises(LeaseError, match="was released"):
        book.acquire("job", 60, None, f"lse_{MAX_RELEASED + 49:010d}")


# -- over HTTP: two replicas of one deployment ------------------------------------------------


@pytest.fixture
def replicas(
    recorder: tuple[Recorder, BackgroundServer], start_proxy: ProxyFactory
) -> tuple[BackgroundServer, BackgroundServer]:
    _, upstream = recorder
    return start_proxy(upstream.url, KEY_ENV), start_proxy(upstream.url, KEY_ENV)


def test_a_per_run_key_from_one_replica_is_good_on_the_other_until_released_there(
    replicas: tuple[BackgroundServer, BackgroundServer],
) -> None:
    one, two = replicas
    taken = httpx.post(
        one.url + "/ondemand/leases", headers=ADMIN,
        json={"holder": "org/repo/1/test/1", "ttl_seconds": 600, "key": True,
              "id": "lse_the_same_everywhere"},
    )  # fmt: skip
    assert taken.status_code == 201, taken.text
    key = {"X-API-Key": taken.json()["key"]}
    assert httpx.get(two.url + "/api/tags", headers=key).status_code == 200
    released = httpx.delete(two.url + "/ondemand/leases/lse_the_same_everywhere", headers=ADMIN)
    assert released.json() == {"released": False, "remaining": 0}  # it never had it
    assert httpx.get(two.url + "/api/tags", headers=key).status_code == 401
    assert httpx.get(one.url + "/api/tags", headers=key).status_code == 200


def test_each_replica_names_itself_on_its_own_routes_only(
    replicas: tuple[BackgroundServer, BackgroundServer],
) -> None:
    one, two = replicas
    names = {
        httpx.get(server.url + "/ondemand/status", headers=ADMIN).headers["x-ondemand-replica"]
        for server in (one, two)
    }
    assert len(names) == 2
    status = httpx.get(one.url + "/ondemand/status", headers=ADMIN)
    assert status.json()["replica"] == status.headers["x-ondemand-replica"]
    assert "x-ondemand-replica" not in httpx.get(one.url + "/api/tags", headers=ADMIN).headers
    assert "x-ondemand-replica" not in httpx.get(one.url + "/ping").headers


def test_drain_releases_a_list_and_reports_the_leases_left(
    replicas: tuple[BackgroundServer, BackgroundServer],
) -> None:
    one, _ = replicas
    for holder, lease_id in (("a", "lse_aaaaaaaa"), ("b", "lse_bbbbbbbb"), ("c", "lse_cccccccc")):
        httpx.post(one.url + "/ondemand/leases", headers=ADMIN,
                   json={"holder": holder, "ttl_seconds": 600, "id": lease_id})  # fmt: skip
    answer = httpx.post(
        one.url + "/ondemand/drain", headers=ADMIN,
        json={"release": ["lse_aaaaaaaa", "lse_bbbbbbbb"], "inflight": "wait"},
    ).json()  # fmt: skip
    assert answer["released"] == ["lse_aaaaaaaa", "lse_bbbbbbbb"]
    assert answer["draining"] is False
    [left] = answer["leases"]
    assert (left["id"], left["holder"]) == ("lse_cccccccc", "c")
    assert left["expires_in_seconds"] > 590
    assert "held_seconds" in left
    bad = httpx.post(one.url + "/ondemand/drain", headers=ADMIN, json={"inflight": "no"})
    assert bad.status_code == 400
    state = httpx.get(one.url + "/ondemand/drain", headers=ADMIN).json()
    assert state == {"draining": None, "inflight": 0}


def test_models_can_be_added_only_under_serve(
    replicas: tuple[BackgroundServer, BackgroundServer],
) -> None:
    one, _ = replicas
    answer = httpx.post(one.url + "/ondemand/models", headers=ADMIN, json={"models": ["x"]})
    assert answer.status_code == 404
    assert "not 'ondemand serve'" in answer.json()["error"]
    user = httpx.post(
        one.url + "/ondemand/models", headers={"X-API-Key": KEY_ENV["AUTHORIZATION_APIKEY"]},
        json={"models": ["x"]},
    )  # fmt: skip
    assert user.status_code == 403
