"""GitHub Deployments of ``ollama-<name>``: optional, best effort, never a failed step.

``up`` creates a Deployment in the environment ``ollama-<name>`` and gives it the statuses
``in_progress`` then ``success`` (with the server's URL as ``environment_url``); ``down``,
``watchdog`` and ``reap`` mark it ``inactive``; failures mark it ``failure``. Every status links
to the workflow run (``log_url``).

It only runs inside GitHub Actions with a token (the action's ``github-token`` input). Any
problem (no permission, a bad token, GitHub down or slow) gives ONE warning through the
caller's ``warn`` and turns the object into a no-op: it never raises and never fails a step.

PyGithub is imported inside the methods only: it takes ~0.4 s to import, which commands that
never talk to GitHub must not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import TYPE_CHECKING, Any, Final

from ondemand import __version__

if TYPE_CHECKING:
    from github import Github
    from github.Repository import Repository

__all__ = ["DEFAULT_API_URL", "GithubDeployments"]

DEFAULT_API_URL: Final = "https://api.github.com"
DEFAULT_SERVER_URL: Final = "https://github.com"
# Seconds per request; no retries: a slow or broken GitHub costs a CI step at most this much
# per request, and a Deployment is not worth more.
TIMEOUT_SECONDS: Final = 10
# GitHub refuses longer status and deployment descriptions.
MAX_DESCRIPTION: Final = 140
# How many of the environment's newest deployments a ``down`` in a later step looks at.
SCAN_DEPLOYMENTS: Final = 10
_OFF: Final = "set github-token: '' to skip GitHub Deployments"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


class GithubDeployments:
    """One lifecycle command's view of the GitHub Deployment of ``ollama-<name>``.

    Build it with :meth:`from_env`; call :meth:`started`, :meth:`ready`, :meth:`failed` and
    :meth:`stopped` as the server changes. None of them raises; the first failure warns once
    and every later call does nothing.
    """

    def __init__(
        self,
        *,
        repository: str,
        ref: str,
        token: str,
        name: str,
        warn: Callable[[str], None],
        api_url: str = DEFAULT_API_URL,
        log_url: str | None = None,
        provider: str | None = None,
    ) -> None:
        self.repository = repository
        self.ref = ref
        self.name = name
        self.environment = f"ollama-{name}"
        self.api_url = api_url.rstrip("/")
        self.log_url = log_url
        self.provider = provider
        self._token = token
        self._warn = warn
        self._broken = False
        # The API URL of the deployment this object created, if any.
        self._deployment_url: str | None = None

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        token: str | None,
        name: str,
        warn: Callable[[str], None],
        *,
        provider: str | None = None,
    ) -> GithubDeployments | None:
        """The Deployments of ``ollama-<name>`` for this workflow run, or None.

        None, silently, outside GitHub Actions (``GITHUB_ACTIONS != "true"``), without
        ``GITHUB_REPOSITORY`` or a ref, or when ``token`` is ``""`` (``github-token: ''``
        turns the integration off). None with one warning when ``token`` is None (no
        ``github-token`` given at all).
        """
        if env.get("GITHUB_ACTIONS") != "true":
            return None
        repository = env.get("GITHUB_REPOSITORY", "").strip()
        ref = (env.get("GITHUB_SHA") or env.get("GITHUB_REF") or "").strip()
        if not repository or not ref:
            return None
        if token is None:
            warn(
                f"no github-token: skipping the GitHub Deployment of ollama-{name} (pass "
                "github-token: ${{ github.token }} and give the job `permissions: "
                "deployments: write` to get one, or github-token: '' to silence this)"
            )
            return None
        if not token.strip():
            return None
        server = (env.get("GITHUB_SERVER_URL") or DEFAULT_SERVER_URL).rstrip("/")
        run_id = env.get("GITHUB_RUN_ID", "").strip()
        return cls(
            repository=repository,
            ref=ref,
            token=token.strip(),
            name=name,
            warn=warn,
            api_url=env.get("GITHUB_API_URL") or DEFAULT_API_URL,
            log_url=f"{server}/{repository}/actions/runs/{run_id}" if run_id else None,
            provider=provider,
        )

    # -- the lifecycle -------------------------------------------------------------------

    def started(self, description: str) -> None:
        """Create the deployment and mark it ``in_progress``."""

        def work(gh: Github, repo: Repository) -> None:
            url = self._create(repo, description)
            self._status(gh, url, "in_progress", description)

        self._run("create", work)

    def ready(self, url: str, description: str) -> None:
        """Mark the deployment ``success`` with ``url`` as the environment's URL (creating the
        deployment first if :meth:`started` was not called)."""

        def work(gh: Github, repo: Repository) -> None:
            deployment = self._deployment_url or self._create(repo, description)
            self._status(
                gh, deployment, "success", description, environment_url=url, auto_inactive=True
            )

        self._run("update", work)

    def failed(self, description: str) -> None:
        """Mark the deployment ``failure`` (creating it first if :meth:`started` was not
        called)."""

        def work(gh: Github, repo: Repository) -> None:
            deployment = self._deployment_url or self._create(repo, description)
            self._status(gh, deployment, "failure", description)

        self._run("update", work)

    def stopped(self, description: str) -> None:
        """Mark the deployment ``inactive``.

        The one this object created, if any. Otherwise (a ``down`` in a later step or job)
        every deployment among the environment's newest ones whose latest status is not
        already ``inactive``: ``auto_inactive`` leaves transient deployments alone, so an
        ``up`` whose ``down`` never ran would otherwise stay "active" for ever. Nothing to
        mark, nothing posted.
        """

        def work(gh: Github, repo: Repository) -> None:
            if self._deployment_url is not None:
                self._status(gh, self._deployment_url, "inactive", description)
                return
            newest = islice(repo.get_deployments(environment=self.environment), SCAN_DEPLOYMENTS)
            for deployment in newest:
                latest = next(iter(deployment.get_statuses()), None)
                if latest is None or latest.state != "inactive":
                    self._status(gh, deployment.url, "inactive", description)

        self._run("deactivate", work)

    # -- the plumbing --------------------------------------------------------------------

    def _create(self, repo: Repository, description: str) -> str:
        payload: dict[str, Any] = {"name": self.name}
        if self.provider is not None:
            payload["provider"] = self.provider
        deployment = repo.create_deployment(
            ref=self.ref,
            task="deploy",
            auto_merge=False,
            # No commit status has to pass first: the server is being started right now.
            required_contexts=[],
            payload=payload,
            environment=self.environment,
            description=_short(description),
            transient_environment=True,
            production_environment=False,
        )
        self._deployment_url = deployment.url
        return deployment.url

    def _status(
        self,
        gh: Github,
        deployment_url: str,
        state: str,
        description: str,
        *,
        environment_url: str | None = None,
        auto_inactive: bool | None = None,
    ) -> None:
        # Through PyGithub's requester rather than Deployment.create_status, which has no
        # ``log_url`` (the parameter GitHub documents in place of ``target_url``); same URL,
        # same preview media types as create_status.
        from github import Consts

        body: dict[str, Any] = {"state": state, "description": _short(description)}
        if self.log_url is not None:
            body["log_url"] = self.log_url
        if environment_url is not None:
            body["environment_url"] = environment_url
        if auto_inactive is not None:
            body["auto_inactive"] = auto_inactive
        accept = ", ".join(
            [Consts.deploymentEnhancementsPreview, Consts.deploymentStatusEnhancementsPreview]
        )
        gh.requester.requestJsonAndCheck(
            "POST", f"{deployment_url}/statuses", input=body, headers={"Accept": accept}
        )

    @contextmanager
    def _github(self) -> Iterator[Github]:
        from github import Auth, Github

        with Github(
            auth=Auth.Token(self._token),
            base_url=self.api_url,
            timeout=TIMEOUT_SECONDS,
            retry=None,
            per_page=SCAN_DEPLOYMENTS,
            # Objects are not fetched before use: no GET /repos/{owner}/{repo}.
            lazy=True,
            # PyGithub waits 1 s between writes by default; a handful of writes per
            # command cannot trip GitHub's secondary rate limits.
            seconds_between_requests=None,
            seconds_between_writes=None,
            user_agent=f"ollama-ondemand/{__version__}",
        ) as gh:
            yield gh

    def _run(self, action: str, work: Callable[[Github, Repository], None]) -> None:
        if self._broken:
            return
        try:
            with self._github() as gh:
                work(gh, gh.get_repo(self.repository))
        except Exception as error:
            self._broken = True
            try:
                text = self._explain(action, error)
            except Exception:
                text = f"could not {action} the GitHub Deployment for {self.environment}"
            self._warn(text.replace(self._token, "***") if self._token else text)

    def _explain(self, action: str, error: Exception) -> str:
        from github import GithubException

        what = f"could not {action} the GitHub Deployment for {self.environment}"
        if isinstance(error, GithubException):
            data = error.data
            message = data.get("message") if isinstance(data, dict) else None
            detail = f"{error.status}: {message}" if message else str(error.status)
            if error.status == 401:
                hint = f"pass a valid github-token (this one is wrong or expired), or {_OFF}"
            elif "rate limit" in str(message).lower():
                hint = f"GitHub's API rate limit was hit; {_OFF}"
            elif error.status in (403, 404):
                hint = f"give the job `permissions: deployments: write`, or {_OFF}"
            elif error.status == 422:
                hint = f"is {self.ref} a commit of {self.repository}? Or {_OFF}"
            else:
                hint = _OFF
        elif isinstance(error, OSError):
            # requests' ConnectionError, Timeout, ... are OSErrors.
            kind = type(error).__name__
            if isinstance(error, TimeoutError) or "Timeout" in kind:
                detail = f"{self.api_url} did not answer within {TIMEOUT_SECONDS} s: {kind}"
            else:
                detail = f"{self.api_url} unreachable: {kind}"
            hint = f"GitHub may be down or slow; {_OFF}"
        else:
            detail = f"{type(error).__name__}: {error}"
            hint = _OFF
        return f"{what} ({detail}): {hint}; the step goes on without it"
