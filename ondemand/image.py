"""``ondemand build``: build the server image (``image/Dockerfile``) with docker buildx.

The build runs ``docker buildx build`` as a child process and streams its log line by line;
everything about registries (login, credentials, credential helpers) stays docker's business,
so no secret ever passes through here.

Without ``--push`` the image is loaded into the local Docker (``--load``): with buildx's
``docker-container`` driver the result would otherwise stay in the build cache, where no
``docker run`` finds it. With ``--push`` it goes only to the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from ondemand.errors import ImageBuildError, UsageError

if TYPE_CHECKING:
    from ondemand.gha import Actions

__all__ = [
    "CONTEXT_ENV",
    "DEFAULT_PLATFORM",
    "DEFAULT_TAG",
    "DOCKERFILE",
    "BuildRequest",
    "BuildResult",
    "ImageRef",
    "build",
    "build_argv",
    "find_context",
    "find_docker",
    "parse_reference",
    "prepare",
]

DOCKERFILE: Final = Path("image", "Dockerfile")
CONTEXT_ENV: Final = "ONDEMAND_IMAGE_CONTEXT"
DEFAULT_TAG: Final = "ollama-ondemand:local"
DEFAULT_PLATFORM: Final = "linux/amd64"
# Enough of the log to show the failing step and its error, short enough for an annotation.
LOG_TAIL_LINES: Final = 20
# `docker buildx version` only reads the plugin; a minute covers a slow, cold runner.
_PROBE_TIMEOUT: Final = 60.0

# Image references as docker parses them (distribution/reference): an optional registry
# host, lowercase path components, an optional tag.
_DOMAIN_RE: Final = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_PATH_RE: Final = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_RE: Final = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
)
_PLATFORM_RE: Final = re.compile(r"[a-z0-9_]+(?:/[a-zA-Z0-9_.-]+){1,2}")


# --------------------------------------------------------------------------------------
# What to build


@dataclass(frozen=True)
class ImageRef:
    """An image reference split the way docker splits it."""

    registry: str | None
    path: str
    tag: str | None


def parse_reference(reference: str) -> ImageRef:
    """Split ``[registry/]path[:tag]``; a UsageError for anything docker would refuse."""
    hint = "use a reference like ghcr.io/OWNER/ollama-ondemand:1 or ollama-ondemand:local"
    if "@" in reference:
        raise UsageError(
            f"cannot build {reference!r}: a digest names an image that already exists",
            cause="the tag (or the configured image) is pinned by digest",
            hint="pass --tag with a tag instead; the build prints the new digest",
        )
    name, tag = reference, None
    head, colon, tail = reference.rpartition(":")
    # A colon followed by a slash belongs to a registry's port, not to a tag.
    if colon and "/" not in tail:
        name, tag = head, tail
    first, slash, rest = name.partition("/")
    # Docker's own rule: the first component is a registry host only if it looks like one.
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry: str | None = first
        path = rest
    else:
        registry, path = None, name
    problems = []
    if registry is not None and not _DOMAIN_RE.fullmatch(registry):
        problems.append(f"registry {registry!r} is not a host name")
    if not _PATH_RE.fullmatch(path):
        problems.append("the repository must be lowercase letters, digits and separators (. _ - /)")
    if tag is not None and not _TAG_RE.fullmatch(tag):
        problems.append("the tag must be letters, digits, '_', '.' or '-' (at most 128)")
    if problems:
        raise UsageError(
            f"invalid image reference {reference!r}", cause="; ".join(problems), hint=hint
        )
    return ImageRef(registry=registry, path=path, tag=tag)


def normalize_ollama_version(version: str) -> str:
    """The ``ollama/ollama`` tag for ``version``: ``v0.33.3`` and ``0.33.3`` both mean 0.33.3."""
    text = version.strip()
    # Release pages say v0.33.3; the Docker Hub tags have no "v".
    if re.fullmatch(r"v\d.*", text):
        text = text[1:]
    if not _TAG_RE.fullmatch(text):
        raise UsageError(
            f"invalid --ollama-version {version!r}",
            cause="it must be a tag of the ollama/ollama image",
            hint="use a release number such as 0.33.3 (tags: hub.docker.com/r/ollama/ollama)",
        )
    return text


def _source_tree() -> Path:
    """Where this package's source sits: the repository root for an editable install."""
    import ondemand

    return Path(ondemand.__file__).resolve().parent.parent


def _checked_context(directory: Path, source: str) -> Path:
    if not (directory / DOCKERFILE).is_file():
        raise UsageError(
            f"no {DOCKERFILE.as_posix()} in {str(directory)!r} (from {source})",
            cause=f"{source} must name the repository root of ollama-ondemand",
            hint=f"point {source} at a checkout of ollama-ondemand, the directory that holds "
            f"{DOCKERFILE.as_posix()}",
        )
    return directory.resolve()


def find_context(explicit: Path | None, env: Mapping[str, str], cwd: Path) -> Path:
    """The build context: the directory that holds ``image/Dockerfile``.

    ``--context`` and ``ONDEMAND_IMAGE_CONTEXT`` are taken as given (a wrong one is an
    error, not a reason to build something else). Otherwise the first of these that holds
    the Dockerfile: the source tree this package runs from (an editable install or a
    checkout), ``$GITHUB_ACTION_PATH`` (the action's checkout), the current directory.
    """
    if explicit is not None:
        return _checked_context(cwd / explicit, "--context")
    configured = env.get(CONTEXT_ENV, "").strip()
    if configured:
        return _checked_context(cwd / configured, CONTEXT_ENV)
    candidates = [_source_tree()]
    action_path = env.get("GITHUB_ACTION_PATH", "").strip()
    if action_path:
        candidates.append(Path(action_path))
    candidates.append(cwd)
    for candidate in candidates:
        if (candidate / DOCKERFILE).is_file():
            return candidate.resolve()
    searched = ", ".join(str(candidate) for candidate in candidates)
    raise UsageError(
        f"cannot find {DOCKERFILE.as_posix()} to build",
        cause=f"none of these directories holds it: {searched}",
        hint=f"run from a checkout of ollama-ondemand, or pass --context DIR (or set "
        f"{CONTEXT_ENV}) naming one",
    )


@dataclass(frozen=True)
class BuildRequest:
    """A validated build: what ``build_argv`` turns into a command line."""

    context: Path
    tag: str
    platform: str
    push: bool
    ollama_version: str | None

    @property
    def dockerfile(self) -> Path:
        return self.context / DOCKERFILE


def prepare(
    *,
    tag: str,
    push: bool,
    platform: str,
    ollama_version: str | None,
    context: Path | None,
    env: Mapping[str, str],
    cwd: Path,
) -> BuildRequest:
    """Check every argument before docker runs: a bad one is a UsageError (exit 2)."""
    ref = parse_reference(tag.strip())
    if push and ref.registry is None:
        raise UsageError(
            f"--push needs a tag that names a registry, got {tag!r}",
            cause="without a registry host docker would push to Docker Hub, which is rarely "
            "what a deployment pulls from",
            hint="tag it with the registry, e.g. --tag ghcr.io/OWNER/ollama-ondemand:1 (for "
            "Docker Hub: docker.io/USER/ollama-ondemand:1)",
        )
    platforms = [item.strip() for item in platform.split(",")]
    if not all(_PLATFORM_RE.fullmatch(item) for item in platforms):
        raise UsageError(
            f"invalid --platform {platform!r}",
            cause="a platform is OS/ARCH[/VARIANT], several separated by commas",
            hint=f"use {DEFAULT_PLATFORM} (what OVHcloud AI Deploy and RunPod run)",
        )
    if len(platforms) > 1 and not push:
        raise UsageError(
            f"cannot load a multi-platform image ({platform}) into the local Docker",
            cause="docker's image store takes one platform at a time",
            hint="build one platform, or add --push to send them all to a registry",
        )
    return BuildRequest(
        context=find_context(context, env, cwd),
        tag=tag.strip(),
        platform=",".join(platforms),
        push=push,
        ollama_version=normalize_ollama_version(ollama_version) if ollama_version else None,
    )


def build_argv(docker: str, request: BuildRequest, metadata_file: Path) -> list[str]:
    """The exact ``docker buildx build`` command line for ``request``."""
    argv = [
        docker,
        "buildx",
        "build",
        "--file",
        str(request.dockerfile),
        "--tag",
        request.tag,
        "--platform",
        request.platform,
    ]
    # No override unless asked: the Dockerfile's ARG is the one pinned, reviewed version.
    if request.ollama_version is not None:
        argv += ["--build-arg", f"OLLAMA_VERSION={request.ollama_version}"]
    argv += [
        "--progress",
        "plain",
        "--metadata-file",
        str(metadata_file),
        "--push" if request.push else "--load",
        str(request.context),
    ]
    return argv


# --------------------------------------------------------------------------------------
# Running docker


@dataclass(frozen=True)
class BuildResult:
    """What a successful build produced."""

    image: str
    digest: str | None
    pushed: bool
    platform: str

    @property
    def reference(self) -> str:
        """``image@digest``, or the bare tag when docker reported no digest."""
        return f"{self.image}@{self.digest}" if self.digest else self.image

    def as_dict(self) -> dict[str, object]:
        return {
            "image": self.image,
            "digest": self.digest,
            "pushed": self.pushed,
            "platform": self.platform,
        }


def find_docker(env: Mapping[str, str]) -> str:
    """The ``docker`` executable on PATH, and a working ``docker buildx``; else exit 7."""
    docker = shutil.which("docker", path=env.get("PATH", os.defpath))
    if docker is None:
        raise ImageBuildError(
            "docker not found on PATH",
            cause="the image is built with the docker CLI and its buildx plugin",
            hint="install Docker with the buildx plugin (Docker Desktop or docker-ce with "
            "docker-buildx-plugin), or run this on a runner that has them, such as "
            "GitHub's ubuntu-latest",
        )
    try:
        probe = subprocess.run(
            [docker, "buildx", "version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=dict(env),
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageBuildError(
            f"could not run '{docker} buildx version'",
            cause=str(exc),
            hint="check that the docker CLI on PATH works: run 'docker buildx version'",
        ) from exc
    if probe.returncode != 0:
        # The first line is docker's error ("unknown command: docker buildx"); what
        # follows is advice about 'docker --help'.
        said = [line for line in (probe.stderr or probe.stdout).splitlines() if line.strip()]
        raise ImageBuildError(
            "docker buildx is not available",
            cause=(
                said[0].strip() if said else f"'docker buildx version' exited {probe.returncode}"
            ),
            hint="install the buildx plugin (docker-buildx-plugin), or add "
            "docker/setup-buildx-action before this step in a workflow",
        )
    return docker


def _stream(
    argv: list[str],
    env: Mapping[str, str],
    tail: deque[str],
    out: TextIO | None,
    redact: Callable[[str], str],
) -> int:
    """Run ``argv``, copy each line of its output to ``out`` as it comes; the exit status."""
    try:
        # stderr into stdout: buildx writes its progress to stderr and a few notes to
        # stdout, and one ordered log is what a reader wants.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
    except OSError as exc:
        raise ImageBuildError(
            f"could not run {argv[0]}", cause=str(exc), hint="check the docker installation"
        ) from exc
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip("\r\n"))
            tail.append(line)
            if out is not None:
                out.write(line + "\n")
                out.flush()
        return proc.wait()
    finally:
        # Interrupted (Ctrl-C, a cancelled job): do not leave the build running behind us.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _diagnose(log: str, request: BuildRequest) -> tuple[str, str]:
    """The likely cause and next step of a failed build, from the end of its log."""
    text = log.lower()
    if "cannot connect to the docker daemon" in text or "docker daemon running" in text:
        return (
            "the Docker daemon is not running, or this user may not use it",
            "start Docker (or add this user to the 'docker' group) and run the build again",
        )
    if request.push and any(
        word in text
        # Registry answers, not a RUN step's "Permission denied".
        for word in (
            "unauthorized",
            "authentication required",
            "requested access to the resource is denied",
            "denied: ",
            "403 forbidden",
        )
    ):
        return (
            "the registry refused the push: not logged in, or no write access to the repository",
            "log in with 'docker login REGISTRY' before building (in a workflow: "
            "docker/login-action; pushing to ghcr.io needs 'permissions: packages: write')",
        )
    if "ollama/ollama" in text and ("not found" in text or "manifest unknown" in text):
        base = (
            f"ollama/ollama:{request.ollama_version}"
            if request.ollama_version
            else "ollama/ollama at the version image/Dockerfile pins"
        )
        return (
            f"the base image {base} could not be found",
            "check the tag on hub.docker.com/r/ollama/ollama, or leave out --ollama-version",
        )
    if "no space left on device" in text:
        return (
            "the disk is full",
            "free space (for example 'docker builder prune') and build again",
        )
    return (
        "a step of image/Dockerfile failed, or docker could not export the image",
        "read the build log above for the failing step; the same command reproduces it",
    )


def _read_digest(metadata_file: Path) -> str | None:
    try:
        data = json.loads(metadata_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = data.get("containerimage.digest") if isinstance(data, dict) else None
    return digest if isinstance(digest, str) and _DIGEST_RE.fullmatch(digest) else None


def build(
    request: BuildRequest,
    *,
    env: Mapping[str, str],
    actions: Actions,
    show_log: bool = True,
) -> BuildResult:
    """Run the build (and push); stream its log to stderr; exit 7 on any failure."""
    docker = find_docker(env)
    with tempfile.TemporaryDirectory(prefix="ondemand-build-") as scratch:
        metadata_file = Path(scratch, "metadata.json")
        argv = build_argv(docker, request, metadata_file)
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        action = "Building and pushing" if request.push else "Building"
        out = actions.err if show_log else None
        # The log is untrusted text: inside stop_commands a line such as "::set-output ..."
        # printed by a RUN step is shown, not obeyed by the runner.
        with (
            actions.group(f"{action} {request.tag} ({request.platform})")
            if show_log
            else contextlib.nullcontext()
        ):
            if out is not None:
                out.write("$ " + shlex.join(["docker", *argv[1:]]) + "\n")
                out.flush()
            with actions.stop_commands():
                status = _stream(argv, env, tail, out, actions.redact)
        if status != 0:
            cause, hint = _diagnose("\n".join(tail), request)
            raise ImageBuildError(
                f"docker buildx build of {request.tag} failed (exit status {status}); "
                f"the last {len(tail)} lines of its log:\n" + "\n".join(tail),
                cause=cause,
                hint=hint,
            )
        digest = _read_digest(metadata_file)
    if digest is None and request.push:
        raise ImageBuildError(
            f"{request.tag} was pushed, but docker buildx reported no digest for it",
            cause="the build metadata file has no containerimage.digest (an old buildx?)",
            hint="upgrade docker buildx, or read the digest with "
            f"'docker buildx imagetools inspect {request.tag}'",
        )
    return BuildResult(
        image=request.tag, digest=digest, pushed=request.push, platform=request.platform
    )
