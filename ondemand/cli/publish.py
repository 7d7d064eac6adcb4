"""What the lifecycle commands hand to GitHub Actions: step outputs, the environment of later
steps, and the job summary. Outside Actions all of it is a no-op.

Output names are the action's (interface.md): ``url``, ``openai-url``, ``api-key``,
``status``, ``deployment-id``, ``lease-id``, ``cost``. ``up`` writes ``deployment-id`` and
``url`` as soon as they are known, before it waits, so a cancelled job's cleanup can still
find what it started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ondemand.cli.root import App
    from ondemand.config import ResolvedConfig
    from ondemand.deployments import GithubDeployments
    from ondemand.lifecycle import DownResult, UpResult
    from ondemand.providers.base import Deployment
    from ondemand.watchdog import Verdict

# The action's export-env input; on unless set to one of these.
_OFF = frozenset({"false", "0", "no", "off"})
EXPORTED = ("OLLAMA_HOST", "OPENAI_BASE_URL", "OLLAMA_API_KEY", "OPENAI_API_KEY")


def _outputs(app: App, values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        app.actions.set_output(name, value or "")


def announced(app: App) -> Callable[[Deployment], None]:
    """The hook ``up``/``start`` call once the URL is known, before waiting."""

    def announce(deployment: Deployment) -> None:
        url = deployment.url or ""
        _outputs(
            app,
            {
                "deployment-id": deployment.id,
                "url": url,
                "openai-url": url + "/v1" if url else "",
                "status": deployment.status.value,
            },
        )

    return announce


def export_env_enabled(env: Mapping[str, str]) -> bool:
    return env.get("ONDEMAND_EXPORT_ENV", "true").strip().lower() not in _OFF


def published_up(
    app: App,
    result: UpResult,
    provider: str,
    name: str,
    client: tuple[Mapping[str, str], str | None] = ({}, None),
) -> None:
    """Outputs, exported environment and summary of a successful ``up`` or ``start``.
    ``client`` is the provider's ``client_env()``: what clients need to pass its front
    door, exported too, and a warning when that is missing."""
    if not app.actions.active:
        return
    client_env, client_warning = client
    for secret in client_env.values():
        app.actions.mask(secret)
    if client_warning:
        app.actions.warning(client_warning)
    if result.api_key:
        app.actions.mask(result.api_key)
    _outputs(
        app,
        {
            "deployment-id": result.deployment.id,
            "url": result.url,
            "openai-url": result.openai_url,
            "api-key": result.api_key,
            "status": "ready",
            "lease-id": result.lease.id if result.lease else "",
        },
    )
    if export_env_enabled(app.env):
        values = [result.url, result.openai_url, result.api_key, result.api_key]
        for variable, value in zip(EXPORTED, values, strict=True):
            if value:
                app.actions.set_env(variable, value)
        for variable, secret in client_env.items():
            app.actions.set_env(variable, secret)
    if result.lease is not None:
        # This job's 'down' releases exactly this lease, even without the step output.
        app.actions.set_env("ONDEMAND_LEASE_ID", result.lease.id)
    app.actions.summary(up_summary(result, provider, name))


def up_summary(result: UpResult, provider: str, name: str) -> str:
    from ondemand.lifecycle import describe_models

    if result.reused:
        timing = "already running (reused)"
    else:
        total = result.seconds_to_start + result.seconds_to_warm
        timing = (
            f"{total:.1f} s (provider start {result.seconds_to_start:.1f} s, "
            f"model warm-up {result.seconds_to_warm:.1f} s)"
        )
    models = describe_models({"models": result.models}) or ["(none reported)"]
    rows = [
        ("URL", f"`{result.url}`"),
        ("provider", provider),
        ("models", "<br>".join(_cell(line) for line in models)),
        ("time to ready", timing),
        ("lease", _cell(lease_line(result))),
    ]
    return _table(f"ollama-ondemand: `{name}` is ready", rows)


def lease_line(result: UpResult) -> str:
    lease = result.lease
    if lease is None:
        return f"none: {result.lease_problem or 'not taken'}; a cleanup may stop it under this job"
    key = "; a per-run key that ends with it" if lease.key else ""
    return f"{lease.id} held by {lease.holder} until {lease.expires_at}{key}"


def published_down(app: App, result: DownResult, provider: str, name: str) -> None:
    """Outputs and summary of ``down``, ``stop`` and ``delete``."""
    if not app.actions.active:
        return
    # The action's 'cost' output is this up->down's spend: the lease's share when one was
    # released, else the whole run of a deployment this command stopped.
    cost = result.cost
    spent = result.share or cost
    amount = "" if spent is None or spent.amount is None else f"{spent.amount:.4f}"
    _outputs(
        app,
        {
            "deployment-id": result.deployment.id,
            "status": result.deployment.status.value,
            "cost": amount,
        },
    )
    rows = [("provider", provider), ("status", result.deployment.status.value)]
    released = ", ".join(f"{x.get('id')} ({x.get('holder')})" for x in result.released)
    if released or result.kept:
        left = ", ".join(result.holders) or "none"
        rows.append(("leases", _cell(f"released {released or 'none'}; still held: {left}")))
    if result.share is not None:
        rows.append(("this run's share", _cell(result.share.describe())))
    if cost is not None:
        rows += [("uptime", _duration(cost.seconds)), ("estimated cost", cost.describe())]
    rows.append(("result", _cell(result.message)))
    app.actions.summary(_table(f"ollama-ondemand: `{name}` down", rows))


def published_backstop(app: App, what: str, verdicts: list[Verdict]) -> None:
    """The job summary of ``watchdog`` and ``reap``: what each deployment got, and why."""
    if not app.actions.active:
        return
    lines = [f"### ollama-ondemand: {what}", "", "| deployment | state | action | why | "
             "billed | saves |", "|---|---|---|---|---|---|"]  # fmt: skip
    for v in verdicts:
        billed = "" if v.cost is None else _cell(v.cost.describe())
        saves = f"{v.saved_hourly:.2f}/h" if v.saved_hourly else ""
        lines.append(f"| {v.name} | {v.state} | {v.action} | {_cell(v.reason)} | {billed} | "
                     f"{saves} |")  # fmt: skip
    if not verdicts:
        lines.append("| (none) | | | | | |")
    stopped = sum(v.action == "stopped" for v in verdicts)
    _outputs(app, {"status": f"{stopped} stopped"})
    app.actions.summary("\n".join(lines) + "\n")


def published_status(app: App, report: Mapping[str, object]) -> None:
    if not app.actions.active:
        return
    url = str(report.get("url") or "")
    _outputs(
        app,
        {
            "status": str(report["status"]),
            "url": url,
            "openai-url": url + "/v1" if url else "",
        },
    )
    rows = [("provider", str(report["provider"])), ("status", str(report["status"]))]
    if url:
        rows.append(("URL", f"`{url}`"))
    if report.get("ready") is not None:
        rows.append(("ready", "yes" if report["ready"] else "no"))
    cost = report.get("cost")
    if isinstance(cost, dict):
        rows.append(("estimated cost so far", _cell(str(cost["estimate"]))))
    app.actions.summary(_table(f"ollama-ondemand: `{report['name']}` status", rows))


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {rest:02d}s" if hours else f"{minutes}m {rest:02d}s"


def _cell(text: str) -> str:
    """Markdown table cells cannot hold a pipe or a line break."""
    return text.replace("|", "\\|").replace("\n", " ")


def _table(title: str, rows: list[tuple[str, str]]) -> str:
    lines = [f"### {title}", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines) + "\n"


def github_deployments(
    app: App, resolved: ResolvedConfig, provider: str, name: str | None = None
) -> GithubDeployments | None:
    """The GitHub Deployment of ``ollama-<name>`` (the configured name unless another is
    given: the reaper's deployments) for this command, when in Actions.

    An explicitly empty ``ONDEMAND_GITHUB_TOKEN`` (the action's ``github-token: ''``) turns
    Deployments off without a warning; no token at all warns once.
    """
    from ondemand.deployments import GithubDeployments

    if app.env.get("ONDEMAND_GITHUB_TOKEN", None) == "":
        token: str | None = ""
    else:
        secret = resolved.secrets.github_token
        token = secret.get_secret_value() if secret is not None else None
    return GithubDeployments.from_env(
        app.env, token, name or resolved.config.name, app.actions.warning, provider=provider
    )
