"""The one exception tree of ondemand, with the exit codes of the public interface.

    OndemandError                 1  unexpected / generic
    ├── UsageError                2  bad flags or arguments
    │   ├── ConfigError           2  ondemand.yml or env values that do not validate
    │   └── NotAvailableError     2  a command this version does not have yet
    ├── ProviderError             3  the provider API answered with an error
    ├── CredentialsError          4  missing or refused credentials
    ├── CapacityError             5  no capacity / provider unavailable
    ├── ReadyTimeoutError         6  timed out waiting for ready
    ├── ImageBuildError           7  image build or push failed
    ├── GitHubError               8  GitHub API failed
    └── UnhealthyError            9  server unhealthy (preload failed, model on CPU, ...)

Codes are distinct on purpose: a workflow can branch on them. Every error carries three
parts a user needs: what failed (``message``), the likely cause (``cause``) and the next
step (``hint``). Domain code raises these; only ``cli.main`` turns them into output and an
exit status.
"""

from __future__ import annotations

from typing import ClassVar


class OndemandError(Exception):
    """Base of every error ondemand reports to a user."""

    exit_code: ClassVar[int] = 1
    title: ClassVar[str] = "ondemand failed"

    def __init__(self, message: str, *, cause: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.hint = hint
        # What was done after the failure (a cleanup), and where to look: one line each.
        self.notes: list[str] = []

    def render(self) -> str:
        """The full text: message, then cause and next step on their own lines."""
        lines = [self.message]
        if self.cause:
            lines.append(f"Likely cause: {self.cause}")
        if self.hint:
            lines.append(f"Next step: {self.hint}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class UsageError(OndemandError):
    """Bad flags or arguments."""

    exit_code = 2
    title = "usage error"


class ConfigError(UsageError):
    """A configuration value (file, env or flag) that does not validate."""

    title = "configuration error"


class NotAvailableError(UsageError):
    """A command or provider that this version does not implement yet."""

    title = "not available"


class ProviderError(OndemandError):
    """The provider API answered with an error, or could not be reached."""

    exit_code = 3
    title = "provider API error"


class CredentialsError(OndemandError):
    """Credentials are missing, or the provider refused them."""

    exit_code = 4
    title = "credentials error"


class CapacityError(OndemandError):
    """The provider has no capacity for the request, or is unavailable."""

    exit_code = 5
    title = "no capacity"


class ReadyTimeoutError(OndemandError):
    """The deployment did not become ready before the deadline."""

    exit_code = 6
    title = "timed out waiting for ready"


class ImageBuildError(OndemandError):
    """Building or pushing the server image failed."""

    exit_code = 7
    title = "image build failed"


class GitHubError(OndemandError):
    """The GitHub API failed."""

    exit_code = 8
    title = "GitHub API error"


class UnhealthyError(OndemandError):
    """The server reported itself unhealthy (preload failed, model on CPU, Ollama down)."""

    exit_code = 9
    title = "server unhealthy"


EXIT_CODES: dict[int, str] = {
    0: "ok",
    1: "unexpected error",
    2: "usage or configuration error",
    3: "provider API error",
    4: "credentials error",
    5: "no capacity / provider unavailable",
    6: "timed out waiting for ready",
    7: "image build or push failed",
    8: "GitHub API error",
    9: "server unhealthy",
}
