"""OVH apps with several replicas: N real ``ondemand serve`` processes behind a per-request
load balancer on the app's URL, probed, restarted and rescaled as on the platform.

Which replica answered is read from ``/ondemand/status``: it names the server's Ollama
pid, and that Ollama is in the process group its replica's server leads.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ondemand.processes import free_port, port_free
from ondemand.sandbox.ollama import write_standin
from ondemand.sandbox.server import SandboxServer, sandbox_server
from tests.cloud import APP_KEY, FAST_APPS, Ovh, StartSandbox, group_alive, wait

KEY = [{"name": "AUTHORIZATION_APIKEY", "value": APP_KEY}]
AUTH = {"Authorization": f"Bearer {APP_KEY}"}
SCALING, RUNNING = "SCALING", "RUNNING"


def listed(running: SandboxServer, app_id: str) -> dict[str, Any]:
    """The app as ``/_sandbox/apps`` shows it: its replicas' pids, ports and readiness."""
    apps = httpx.get(running.url + "/_sandbox/apps", trust_env=False).json()["apps"]
    (app,) = [app for app in apps if app["id"] == app_id]
    return dict(app)


def create(client: Ovh, replicas: int, **spec: Any) -> dict[str, Any]:
    return client.create(
        name="multi", envVars=KEY, scalingStrategy={"fixed": {"replicas": replicas}}, **spec
    )


def until_available(client: Ovh, app_id: str, count: int, timeout: float = 30) -> dict[str, Any]:
    return wait(
        lambda: client.get(app_id),
        lambda app: (
            app["status"]["state"] == "RUNNING" and app["status"]["availableReplicas"] == count
        ),
        timeout,
    )


def warm(running: SandboxServer, app_id: str, count: int) -> dict[str, Any]:
    """Wait until ``count`` replicas run and each answers its own /ping with 200 (its
    Ollama is up, so ``/ondemand/status`` names it); the app as listed then."""

    def each_warm(app: dict[str, Any]) -> bool:
        up = [r for r in app["replicas"] if r["pid"] and r["ready"]]
        return len(up) == count and all(_ping(r["url"]) == 200 for r in up)

    return wait(lambda: listed(running, app_id), each_warm)


def _ping(url: str) -> int | None:
    try:
        return httpx.get(url + "/ping", trust_env=False).status_code
    except httpx.TransportError:
        return None


def who(answer: httpx.Response, app: dict[str, Any]) -> int:
    """The index of the replica whose server gave this ``/ondemand/status`` answer."""
    assert answer.status_code == 200, answer.text
    ollama = answer.json()["server"]["ollama"]["pid"]
    leader = os.getpgid(ollama)
    by_pid: dict[int, int] = {r["pid"]: r["index"] for r in app["replicas"]}
    assert leader in by_pid, (leader, by_pid)
    return by_pid[leader]


def connection() -> httpx.Client:
    """One keep-alive connection: every request of the client goes over it."""
    return httpx.Client(
        headers=AUTH,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=10,
        trust_env=False,
    )


def turns(http: httpx.Client, url: str, app: dict[str, Any], count: int) -> list[int]:
    return [who(http.get(url + "/ondemand/status"), app) for _ in range(count)]


def history(client: Ovh, app_id: str) -> list[str]:
    return [entry["state"] for entry in client.get(app_id)["status"]["history"]]


def rescale(client: Ovh, app_id: str, replicas: int) -> dict[str, Any]:
    """Ask for ``replicas``; the app once it has passed through SCALING back to RUNNING
    (read from its history: a short SCALING may fall between two polls)."""
    before = len(history(client, app_id))
    answer = client.http.put(
        f"/v1/app/{app_id}/scalingstrategy", json={"fixed": {"replicas": replicas}}
    )
    assert answer.status_code == 204, answer.text
    return wait(
        lambda: client.get(app_id),
        lambda app: [h["state"] for h in app["status"]["history"][before:]] == [SCALING, RUNNING],
    )


def test_three_replicas_are_three_servers_taking_turns_per_request(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    running, client = ovh
    app = create(client, 3)
    url = app["status"]["url"]
    until_available(client, app["id"], 3)
    shown = warm(running, app["id"], 3)
    assert shown["balancer"] is True
    replicas = shown["replicas"]
    assert [r["index"] for r in replicas] == [0, 1, 2]
    pids = {r["pid"] for r in replicas}
    ports = {r["port"] for r in replicas}
    assert len(pids) == 3
    assert len(ports) == 3
    assert int(url.rsplit(":", 1)[1]) not in ports
    assert all(group_alive(pid) for pid in pids)
    hostnames = [r["hostname"] for r in replicas]
    assert hostnames == [f"multi-{app['id'][:8]}-{i}" for i in range(3)]
    for replica in replicas:
        environ = Path(f"/proc/{replica['pid']}/environ").read_bytes().split(b"\0")
        assert f"HOSTNAME={replica['hostname']}".encode() in environ
        assert f"PORT={replica['port']}".encode() in environ

    with connection() as http:
        seen = turns(http, url, shown, 6)
        # Every request goes to the next replica, though all share one connection.
        assert all(a != b for a, b in itertools.pairwise(seen)), seen
        assert set(seen) == {0, 1, 2}
        first = who(http.get(url + "/ondemand/status"), shown)
        assert http.get(url + "/ping").status_code in (200, 204)
        # The /ping took its turn too: the next status comes from the replica after it.
        assert who(http.get(url + "/ondemand/status"), shown) == (first + 2) % 3
        through = http.get(url + "/ondemand/status")
        addresses = {
            answer.extensions["network_stream"].get_extra_info("client_addr")
            for answer in (http.get(url + "/ping"), http.get(url + "/ping"))
        }
    assert len(addresses) == 1  # the same connection, kept alive
    direct = httpx.get(replicas[0]["url"] + "/ondemand/status", headers=AUTH, trust_env=False)
    # The balancer adds no header of its own: the replica's answer, as it gave it.
    assert sorted(through.headers.keys()) == sorted(direct.headers.keys())
    assert "server" not in through.headers
    assert len(through.headers.get_list("date")) == 1

    log = client.http.get(f"/v1/app/{app['id']}/log", params={"replica": 1}).text
    assert f"starting {app['id']}/1 on port {replicas[1]['port']}" in log
    assert f"starting {app['id']} on port" not in log
    assert "HOSTNAME multi-" in log
    every = client.http.get(f"/v1/app/{app['id']}/log").text
    banners = [every.index(f"starting {app['id']}{tail} on port") for tail in ("", "/1", "/2")]
    assert banners == sorted(banners)
    assert Path(replicas[2]["log"]).name == "serve.2.log"
    tail = client.http.get(f"/v1/app/{app['id']}/log", params={"replica": 2, "tail": 1}).text
    assert tail.count("\n") == 1
    missing = client.http.get(f"/v1/app/{app['id']}/log", params={"replica": 3})
    assert missing.status_code == 400
    assert "no replica 3" in missing.json()["message"]


def test_a_streamed_chat_through_the_balancer_arrives_line_by_line(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    running, client = ovh
    paced = [*KEY, {"name": "OLLAMA_EMULATOR_TOKENS_PER_SECOND", "value": "20"}]
    app = client.create(envVars=paced, scalingStrategy={"fixed": {"replicas": 2}})
    until_available(client, app["id"], 2)
    warm(running, app["id"], 2)
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"num_predict": 12},
    }
    arrivals: list[float] = []
    lines: list[dict[str, Any]] = []
    with (
        connection() as http,
        http.stream("POST", app["status"]["url"] + "/api/chat", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                lines.append(json.loads(line))
    assert lines[-1]["done"] is True
    assert len(lines) >= 5
    # 12 tokens at 20/s: the first lines arrive well before the last, not all at once.
    assert arrivals[-1] - arrivals[0] > 0.25


def test_with_no_replica_ready_the_url_answers_503(ovh: tuple[SandboxServer, Ovh]) -> None:
    running, client = ovh
    app = create(client, 2, probe={"path": "/api/tags"})  # needs a key: 401 to the probe
    client.wait(app["id"], "SCALING")
    # Both servers run and would answer; the probe never passes, so neither is routed to.
    wait(
        lambda: listed(running, app["id"])["replicas"],
        lambda replicas: len(replicas) == 2 and all(r["pid"] for r in replicas),
    )
    answer = httpx.get(app["status"]["url"] + "/ping", trust_env=False)
    assert answer.status_code == 503
    assert "no replica of this app is ready" in answer.text
    assert len(answer.content) < 200
    assert client.state(app["id"]) == "SCALING"
    assert client.get(app["id"])["status"]["availableReplicas"] == 0


def test_a_replica_that_is_not_ready_gets_no_traffic(ovh: tuple[SandboxServer, Ovh]) -> None:
    running, client = ovh
    app = create(client, 3)
    url = app["status"]["url"]
    until_available(client, app["id"], 3)
    shown = warm(running, app["id"], 3)
    states = history(client, app["id"])
    frozen = shown["replicas"][2]["pid"]
    os.kill(frozen, signal.SIGSTOP)  # its probe times out, three times: not ready
    try:
        until_available(client, app["id"], 2)
        assert [r["ready"] for r in listed(running, app["id"])["replicas"]] == [True, True, False]
        with connection() as http:
            # A request sent to the frozen server would hang past the client's timeout.
            assert turns(http, url, shown, 6) in ([0, 1] * 3, [1, 0] * 3)
    finally:
        os.kill(frozen, signal.SIGCONT)
    until_available(client, app["id"], 3)
    with connection() as http:
        assert set(turns(http, url, shown, 3)) == {0, 1, 2}
    assert history(client, app["id"]) == states  # RUNNING all along


def test_a_restarted_replica_comes_back_empty_and_the_app_stays_running(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    running, client = ovh
    app = create(client, 2)
    url = app["status"]["url"]
    until_available(client, app["id"], 2)
    before = warm(running, app["id"], 2)["replicas"][1]
    states = history(client, app["id"])
    with connection() as http:
        for _ in range(4):
            assert http.get(url + "/api/tags").status_code == 200
        assert http.get(before["url"] + "/ondemand/status").json()["requests"] == 2

        restart = f"{running.url}/_sandbox/ovh/apps/{app['id']}/replicas/1/restart"
        answer = httpx.post(restart, trust_env=False)
        assert answer.status_code == 200, answer.text
        assert answer.json()["index"] == 1
        assert answer.json()["pid"] != before["pid"]
        wait(lambda: group_alive(before["pid"]), lambda alive: not alive)
        # The other replica serves meanwhile: nothing is refused or lost. (Status reads,
        # which a server does not count as requests.)
        for _ in range(4):
            assert http.get(url + "/ondemand/status").status_code == 200

        until_available(client, app["id"], 2)
        after = warm(running, app["id"], 2)["replicas"][1]
        assert after["pid"] == answer.json()["pid"]
        assert after["restarts"] == 1
        status = http.get(after["url"] + "/ondemand/status").json()
        assert status["requests"] == 0  # nothing of the old process's memory
        assert http.get(url + "/api/tags").status_code == 200
    assert history(client, app["id"]) == states
    log = client.http.get(f"/v1/app/{app['id']}/log", params={"replica": 1}).text
    assert "killed by POST /_sandbox" in log
    assert "(restart 1: killed on request)" in log

    assert httpx.post(restart.replace("/1/", "/7/"), trust_env=False).status_code == 404
    assert httpx.get(restart, trust_env=False).status_code == 405
    unknown = restart.replace(app["id"], "nope")
    assert httpx.post(unknown, trust_env=False).status_code == 404


def test_a_replica_whose_server_dies_is_started_again(ovh: tuple[SandboxServer, Ovh]) -> None:
    running, client = ovh
    app = create(client, 2)
    until_available(client, app["id"], 2)
    victim = warm(running, app["id"], 2)["replicas"][0]
    states = history(client, app["id"])
    os.killpg(victim["pid"], signal.SIGKILL)
    again = wait(
        lambda: listed(running, app["id"])["replicas"][0],
        lambda replica: replica["restarts"] == 1 and replica["ready"],
    )
    assert again["pid"] != victim["pid"]
    assert group_alive(again["pid"])
    until_available(client, app["id"], 2)
    assert history(client, app["id"]) == states
    log = client.http.get(f"/v1/app/{app['id']}/log", params={"replica": 0}).text
    assert "the server exited with status -9; restarting it" in log
    assert "(restart 1: the previous server exited with status -9)" in log


def test_when_every_replica_exits_the_app_fails_with_the_end_of_a_log(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    _, client = ovh
    # No key: every server refuses to start, so none is left to restart.
    app = client.create(scalingStrategy={"fixed": {"replicas": 2}})
    failed = client.wait(app["id"], "FAILED", timeout=30)
    message = failed["status"]["info"]["message"]
    assert "no replica of the app is left running" in message
    assert "no API key is configured" in message
    every = client.http.get(f"/v1/app/{app['id']}/log").text
    assert every.count("no API key is configured") >= 2  # each replica's server said why


def test_a_rescale_from_two_to_three_and_back_to_one(ovh: tuple[SandboxServer, Ovh]) -> None:
    running, client = ovh
    app = create(client, 2)
    url = app["status"]["url"]
    until_available(client, app["id"], 2)
    two = warm(running, app["id"], 2)["replicas"]

    # Through SCALING, and RUNNING again once the new replica is ready too.
    grown = rescale(client, app["id"], 3)
    assert grown["status"]["availableReplicas"] == 3
    assert grown["status"]["url"] == url
    three = warm(running, app["id"], 3)
    assert [r["pid"] for r in three["replicas"][:2]] == [r["pid"] for r in two]
    with connection() as http:
        assert set(turns(http, url, three, 3)) == {0, 1, 2}

    shrunk = rescale(client, app["id"], 1)
    assert shrunk["status"]["availableReplicas"] == 1
    one = listed(running, app["id"])
    assert [r["pid"] for r in one["replicas"]] == [two[0]["pid"]]
    assert not any(group_alive(r["pid"]) for r in three["replicas"][1:])
    with connection() as http:
        assert turns(http, url, one, 3) == [0, 0, 0]
    assert history(client, app["id"])[-4:] == ["SCALING", "RUNNING", "SCALING", "RUNNING"]
    gone = client.http.get(f"/v1/app/{app['id']}/log", params={"replica": 2}).text
    assert "stopping: the app was scaled to 1 replica(s)" in gone


def test_one_replica_moves_behind_a_balancer_when_scaled_up_and_stop_ends_it_all(
    ovh: tuple[SandboxServer, Ovh],
) -> None:
    running, client = ovh
    app = client.create(envVars=KEY)
    url = app["status"]["url"]
    port = int(url.rsplit(":", 1)[1])
    client.wait(app["id"], "RUNNING")
    alone = listed(running, app["id"])
    assert alone["balancer"] is False
    assert [r["port"] for r in alone["replicas"]] == [port]  # the server itself, as always

    assert rescale(client, app["id"], 2)["status"]["availableReplicas"] == 2
    spread = warm(running, app["id"], 2)
    assert spread["balancer"] is True
    assert port not in {r["port"] for r in spread["replicas"]}
    assert not group_alive(alone["replicas"][0]["pid"])  # replica 0 started again behind it
    with connection() as http:
        assert set(turns(http, url, spread, 2)) == {0, 1}

    assert client.http.put(f"/v1/app/{app['id']}/stop").status_code == 204
    stopped = client.wait(app["id"], "STOPPED")
    assert stopped["status"]["availableReplicas"] == 0
    assert not any(group_alive(r["pid"]) for r in spread["replicas"])
    assert port_free(port)  # the balancer is gone too
    assert listed(running, app["id"])["replicas"] == []


def test_stop_start_and_a_sandbox_restart_bring_every_replica_back(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    state_dir = tmp_path / "replicated"
    with sandbox_server(state_dir, transition_seconds=0.05, app_env=FAST_APPS) as first:
        client = Ovh(first)
        app = create(client, 2)
        url = app["status"]["url"]
        until_available(client, app["id"], 2)
        before = listed(first, app["id"])["replicas"]
        assert client.http.put(f"/v1/app/{app['id']}/stop").status_code == 204
        client.wait(app["id"], "STOPPED")
        assert not any(group_alive(r["pid"]) for r in before)
        assert client.http.put(f"/v1/app/{app['id']}/start").status_code == 204
        assert until_available(client, app["id"], 2)["status"]["url"] == url
        running = listed(first, app["id"])["replicas"]
        stored = json.loads((state_dir / "ovh" / "apps.json").read_text())["apps"][0]
        assert stored["pid"] == running[0]["pid"]
        assert stored["replicas"] == [
            {"index": r["index"], "pid": r["pid"], "port": r["port"]} for r in running
        ]
        client.close()
    assert not any(group_alive(r["pid"]) for r in running)

    again, client = start_sandbox(state_dir)
    resumed = until_available(client, app["id"], 2)
    assert resumed["status"]["url"] == url
    shown = warm(again, app["id"], 2)
    with connection() as http:
        assert set(turns(http, url, shown, 2)) == {0, 1}


def test_a_restart_stops_every_replica_a_dead_sandbox_left(
    start_sandbox: StartSandbox, tmp_path: Path
) -> None:
    state_dir = tmp_path / "orphaned"
    parked = {"ovh": {"slow": {"seconds": {"QUEUED": 60}}}}
    with sandbox_server(state_dir, faults=parked) as running:
        client = Ovh(running)
        app = create(client, 2)
        client.close()
    # What a sandbox killed outside Linux leaves: each replica's server, still serving.
    # Four distinct ports: two servers and their two Ollamas (a port handed out twice
    # would leave one replica unhealthy, 503, for good).
    picked: list[int] = []
    while len(picked) < 4:
        if (port := free_port()) not in picked:
            picked.append(port)
    ports, ollama_ports = picked[:2], picked[2:]
    standin = str(write_standin(tmp_path / "bin"))
    base = {**os.environ, **FAST_APPS, "AUTHORIZATION_APIKEY": APP_KEY, "HOST": "127.0.0.1"}
    orphans = [
        subprocess.Popen(
            [sys.executable, "-m", "ondemand", "serve"],
            env={**base, "PORT": str(port), "OLLAMA_BIN": standin,
                 "ONDEMAND_OLLAMA_HOST": f"127.0.0.1:{ollama}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for port, ollama in zip(ports, ollama_ports, strict=True)
    ]  # fmt: skip
    try:
        # Warm: its SIGTERM handler is in place, so stopping it is a clean exit.
        wait(
            lambda: [_ping(f"http://127.0.0.1:{port}") for port in ports], lambda s: s == [200] * 2
        )
        stored = json.loads((state_dir / "ovh" / "apps.json").read_text())
        entries = [
            {"index": index, "pid": orphan.pid, "port": port}
            for index, (orphan, port) in enumerate(zip(orphans, ports, strict=True))
        ]
        stored["apps"][0].update(state="RUNNING", pid=orphans[0].pid, replicas=entries)
        (state_dir / "ovh" / "apps.json").write_text(json.dumps(stored))

        _, client = start_sandbox(state_dir)
        assert [orphan.wait(10) for orphan in orphans] == [0, 0]
        assert not any(group_alive(orphan.pid) for orphan in orphans)
        until_available(client, app["id"], 2)
    finally:
        for orphan in orphans:
            if orphan.poll() is None:
                os.killpg(orphan.pid, signal.SIGKILL)
                orphan.wait()
