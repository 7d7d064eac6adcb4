"""A fake GitHub REST API on 127.0.0.1 for the Deployments routes PyGithub uses.

Objects, status codes and error bodies follow GitHub's REST reference ("Deployments" and
"Deployment statuses"): ``url`` fields are absolute API URLs (PyGithub follows them), lists
are newest first and paginated with ``per_page``/``page`` and a ``Link`` header. Every request
is recorded (method, path without the API prefix, query, JSON body, lower-cased headers) so
tests can assert the exact calls.

    with FakeGitHub() as github:
        env = {"GITHUB_API_URL": github.url, ...}
        ...
        assert github.routes() == [("POST", "/repos/octo-org/hello/deployments"), ...]
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["REPOSITORY", "TOKEN", "Call", "FakeGitHub"]

TOKEN: Final = "ghs_fakeInstallationToken0123456789abcd"
REPOSITORY: Final = "octo-org/hello"
STATES: Final = frozenset(
    {"error", "failure", "inactive", "in_progress", "queued", "pending", "success"}
)
_DOCS: Final = "https://docs.github.com/rest"
_EPOCH: Final = datetime(2025, 1, 1, tzinfo=UTC)
_REPO: Final = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"
_REPOSITORY_RE: Final = re.compile(f"^{_REPO}$")
_DEPLOYMENTS_RE: Final = re.compile(f"^{_REPO}/deployments$")
_DEPLOYMENT_RE: Final = re.compile(f"^{_REPO}/deployments/(?P<id>[0-9]+)$")
_STATUSES_RE: Final = re.compile(f"^{_REPO}/deployments/(?P<id>[0-9]+)/statuses$")

Reply = tuple[int, Any, dict[str, str]]


@dataclass(frozen=True)
class Call:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


def _error(status: int, message: str, **extra: Any) -> Reply:
    return (
        status,
        {"message": message, "documentation_url": _DOCS, "status": str(status), **extra},
        {},
    )


class FakeGitHub:
    """GitHub's REST API for one repository, served on 127.0.0.1 from a thread.

    ``token`` is the only accepted credential (``Authorization: token X`` or ``Bearer X``);
    anything else is a 401 "Bad credentials". ``deny_deployments = True`` answers deployment
    creation with GitHub's 403 for a token without ``deployments: write``. ``prefix`` puts
    the API under a path, as GitHub Enterprise Server does (``/api/v3``).
    """

    def __init__(
        self, *, repository: str = REPOSITORY, token: str = TOKEN, prefix: str = ""
    ) -> None:
        self.repository = repository
        self.token = token
        self.prefix = prefix.rstrip("/")
        self.deny_deployments = False
        self.calls: list[Call] = []
        # Oldest first, as created; statuses per deployment id, oldest first.
        self.deployments: list[dict[str, Any]] = []
        self.statuses: dict[int, list[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.url = self.origin + self.prefix
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- running -------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeGitHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for tests -----------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far."""
        return [(call.method, call.path) for call in self.calls]

    def states(self, deployment_id: int) -> list[str]:
        """The deployment's status states, newest first (as GitHub lists them)."""
        return [status["state"] for status in reversed(self.statuses[deployment_id])]

    def add_deployment(self, environment: str, *states: str, **fields: Any) -> dict[str, Any]:
        """Seed a deployment (as an earlier workflow run would have) with statuses ``states``
        given oldest first."""
        with self._lock:
            deployment = self._new_deployment({"ref": "main", "environment": environment, **fields})
            for state in states:
                self._new_status(deployment, {"state": state})
        return deployment

    # -- the API -------------------------------------------------------------------------

    def handle(self, call: Call, raw_path: str) -> Reply:
        with self._lock:
            self.calls.append(call)
            if not raw_path.startswith(self.prefix + "/"):
                return _error(404, "Not Found")
            scheme, _, credential = call.headers.get("authorization", "").partition(" ")
            if scheme.lower() not in ("token", "bearer") or credential != self.token:
                return _error(401, "Bad credentials")
            routes: list[tuple[re.Pattern[str], Callable[[Call, re.Match[str]], Reply]]] = [
                (_REPOSITORY_RE, self._repository),
                (_DEPLOYMENTS_RE, self._deployments),
                (_DEPLOYMENT_RE, self._deployment),
                (_STATUSES_RE, self._statuses),
            ]
            for pattern, route in routes:
                match = pattern.match(call.path)
                if match is None:
                    continue
                if f"{match['owner']}/{match['repo']}".lower() != self.repository.lower():
                    return _error(404, "Not Found")
                return route(call, match)
            return _error(404, "Not Found")

    def _repository(self, call: Call, match: re.Match[str]) -> Reply:
        if call.method != "GET":
            return _error(404, "Not Found")
        owner, name = self.repository.split("/")
        return (
            200,
            {
                "id": 1296269,
                "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
                "name": name,
                "full_name": self.repository,
                "owner": {"login": owner, "id": 1, "type": "Organization"},
                "private": False,
                "url": f"{self.url}/repos/{self.repository}",
                "html_url": f"https://github.com/{self.repository}",
                "default_branch": "main",
            },
            {},
        )

    def _deployments(self, call: Call, match: re.Match[str]) -> Reply:
        if call.method == "GET":
            found = [
                deployment
                for deployment in reversed(self.deployments)
                if all(
                    deployment[key] == call.query[key]
                    for key in ("sha", "ref", "task", "environment")
                    if key in call.query
                )
            ]
            return self._page(call, found)
        if call.method != "POST":
            return _error(404, "Not Found")
        if self.deny_deployments:
            return _error(
                403,
                "Resource not accessible by integration",
                documentation_url=f"{_DOCS}/deployments/deployments#create-a-deployment",
            )
        body = call.body if isinstance(call.body, dict) else {}
        if not isinstance(body.get("ref"), str) or not body["ref"]:
            return _error(422, 'Invalid request.\n\n"ref" wasn\'t supplied.')
        return 201, self._new_deployment(body), {}

    def _deployment(self, call: Call, match: re.Match[str]) -> Reply:
        deployment = self._find(int(match["id"]))
        if call.method != "GET" or deployment is None:
            return _error(404, "Not Found")
        return 200, deployment, {}

    def _statuses(self, call: Call, match: re.Match[str]) -> Reply:
        deployment = self._find(int(match["id"]))
        if deployment is None:
            return _error(404, "Not Found")
        if call.method == "GET":
            return self._page(call, list(reversed(self.statuses[deployment["id"]])))
        if call.method != "POST":
            return _error(404, "Not Found")
        body = call.body if isinstance(call.body, dict) else {}
        if body.get("state") not in STATES:
            return _error(
                422,
                "Validation Failed",
                errors=[{"resource": "DeploymentStatus", "code": "invalid", "field": "state"}],
            )
        if len(body.get("description") or "") > 140:
            return _error(
                422,
                "Validation Failed",
                errors=[
                    {
                        "resource": "DeploymentStatus",
                        "code": "custom",
                        "field": "description",
                        "message": "description is too long (maximum is 140 characters)",
                    }
                ],
            )
        status = self._new_status(deployment, body)
        if body["state"] == "success" and body.get("auto_inactive", True):
            self._auto_inactive(deployment)
        return 201, status, {}

    # -- objects -------------------------------------------------------------------------

    def _find(self, deployment_id: int) -> dict[str, Any] | None:
        return next((d for d in self.deployments if d["id"] == deployment_id), None)

    def _stamp(self, object_id: int) -> str:
        return (_EPOCH + timedelta(seconds=object_id)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _creator(self) -> dict[str, Any]:
        return {
            "login": "github-actions[bot]",
            "id": 41898282,
            "node_id": "MDM6Qm90NDE4OTgyODI=",
            "avatar_url": "https://avatars.githubusercontent.com/in/15368?v=4",
            "url": f"{self.url}/users/github-actions%5Bbot%5D",
            "html_url": "https://github.com/apps/github-actions",
            "type": "Bot",
            "site_admin": False,
        }

    def _new_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        deployment_id = next(self._ids)
        environment = body.get("environment") or "production"
        url = f"{self.url}/repos/{self.repository}/deployments/{deployment_id}"
        deployment = {
            "url": url,
            "id": deployment_id,
            "node_id": f"DE_fake{deployment_id}",
            "sha": body.get("sha") or f"{deployment_id:040x}",
            "ref": body["ref"],
            "task": body.get("task") or "deploy",
            "payload": body.get("payload") or {},
            "original_environment": environment,
            "environment": environment,
            "description": body.get("description") or "",
            "creator": self._creator(),
            "created_at": self._stamp(deployment_id),
            "updated_at": self._stamp(deployment_id),
            "statuses_url": f"{url}/statuses",
            "repository_url": f"{self.url}/repos/{self.repository}",
            "transient_environment": bool(body.get("transient_environment", False)),
            "production_environment": bool(
                body.get("production_environment", environment == "production")
            ),
        }
        if len(deployment["ref"]) == 40:
            deployment["sha"] = deployment["ref"]
        self.deployments.append(deployment)
        self.statuses[deployment_id] = []
        return deployment

    def _new_status(self, deployment: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        status_id = next(self._ids)
        # GitHub: "Setting log_url will automatically set target_url to the same value."
        log_url = body.get("log_url") or body.get("target_url") or ""
        status = {
            "url": f"{deployment['url']}/statuses/{status_id}",
            "id": status_id,
            "node_id": f"DES_fake{status_id}",
            "state": body["state"],
            "creator": self._creator(),
            "description": body.get("description") or "",
            "environment": body.get("environment") or deployment["environment"],
            "target_url": body.get("target_url") or log_url,
            "log_url": log_url,
            "environment_url": body.get("environment_url") or "",
            "created_at": self._stamp(status_id),
            "updated_at": self._stamp(status_id),
            "deployment_url": deployment["url"],
            "repository_url": deployment["repository_url"],
        }
        self.statuses[deployment["id"]].append(status)
        return status

    def _auto_inactive(self, deployment: dict[str, Any]) -> None:
        # GitHub: "Adds a new inactive status to all prior non-transient, non-production
        # environment deployments with the same repository and environment name [...]. An
        # inactive status is only added to deployments that had a success state."
        for prior in self.deployments:
            statuses = self.statuses[prior["id"]]
            if (
                prior["id"] < deployment["id"]
                and prior["environment"] == deployment["environment"]
                and not prior["transient_environment"]
                and not prior["production_environment"]
                and statuses
                and statuses[-1]["state"] == "success"
            ):
                self._new_status(prior, {"state": "inactive"})

    def _page(self, call: Call, items: list[dict[str, Any]]) -> Reply:
        per_page = min(max(int(call.query.get("per_page", "30")), 1), 100)
        page = max(int(call.query.get("page", "1")), 1)
        chunk = items[(page - 1) * per_page : page * per_page]
        last = max((len(items) + per_page - 1) // per_page, 1)
        headers: dict[str, str] = {}
        if page < last:
            link = f"{self.url}{call.path}?"
            headers["Link"] = (
                f'<{link}{urlencode({**call.query, "page": page + 1})}>; rel="next", '
                f'<{link}{urlencode({**call.query, "page": last})}>; rel="last"'
            )
        return 200, chunk, headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    # An idle keep-alive connection is dropped after this, so stop() never waits on one.
    timeout = 5

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake: FakeGitHub = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        path = parts.path.removeprefix(fake.prefix) if fake.prefix else parts.path
        call = Call(
            self.command,
            path,
            dict(parse_qsl(parts.query)),
            body,
            {name.lower(): value for name, value in self.headers.items()},
        )
        if isinstance(body, str):
            status, payload, headers = _error(400, "Problems parsing JSON")
            with fake._lock:
                fake.calls.append(call)
        else:
            status, payload, headers = fake.handle(call, parts.path)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass
