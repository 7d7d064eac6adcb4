"""GitHub Actions I/O: masks, outputs, env, path, summary, groups, annotations.

Everything degrades outside Actions (``GITHUB_ACTIONS != "true"``): files are left alone and
annotations become plain ``error: ...`` lines on stderr. Workflow commands go to stdout,
which is where the runner looks for them. Formats follow GitHub's "Workflow commands for
GitHub Actions" page and the runner's file-command parser.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Protocol, TextIO

__all__ = ["Actions", "SupportsSecretValue", "escape_data", "escape_property"]

# Shorter values would mask common text ("on", "dev") all over the log.
MIN_MASK_LENGTH: Final = 4

_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Variables that make every later step run code of the writer's choosing, or that the
# runner owns. GitHub itself refuses NODE_OPTIONS in $GITHUB_ENV.
_REFUSED_ENV: Final = frozenset(
    {
        "NODE_OPTIONS",
        "BASH_ENV",
        "ENV",
        "PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "DYLD_INSERT_LIBRARIES",
        "DYLD_LIBRARY_PATH",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PERL5OPT",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
    }
)
_REFUSED_ENV_PREFIXES: Final = ("GITHUB_", "RUNNER_")


# The runner reads a step's output a line at a time, a line ending at CR, LF or CRLF.
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")


def escape_data(text: str) -> str:
    """Escape a workflow command's message (the part after ``::``).

    The runner unescapes ``%0D`` to CR, ``%0A`` to LF, then ``%25`` to ``%``
    (actions/runner src/Runner.Common/ActionCommand.cs, UnescapeData, commit
    079cdb1d05fe0ec50f8c51de5a4fa51d0eb189b0), so ``%`` is escaped first, as actions/toolkit
    packages/core/src/command.ts escapeData does (commit a944251692e50709e44d95e64d43c80236b9f6af).
    """
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command property value (``title=``, ``file=``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


class SupportsSecretValue(Protocol):
    """pydantic's ``SecretStr`` and friends, without importing pydantic here."""

    def get_secret_value(self) -> str: ...


class Actions:
    """Actions I/O bound to an environment mapping and two streams.

    Streams default to ``sys.stdout``/``sys.stderr`` looked up at each write, so test
    runners that swap them capture the output.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self._env = env
        self._stdout = stdout
        self._stderr = stderr
        self.active: bool = env.get("GITHUB_ACTIONS") == "true"
        self._masked: set[str] = set()
        self._stop_token: str | None = None

    @property
    def out(self) -> TextIO:
        return self._stdout if self._stdout is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self._stderr if self._stderr is not None else sys.stderr

    # ------------------------------------------------------------------ commands

    def _command(self, command: str, message: str = "", **props: str | int | None) -> None:
        shown = {key: value for key, value in props.items() if value is not None}
        text = "::" + command
        if shown:
            text += " " + ",".join(
                f"{key}={escape_property(str(value))}" for key, value in shown.items()
            )
        text += "::" + escape_data(message)
        out = self.out
        if self._stop_token is not None:
            # Commands are off while untrusted text is printed; ours must still work (an
            # ignored add-mask would leak the secret), so resume, issue, and stop again.
            out.write(f"::{self._stop_token}::\n{text}\n")
            self._stop_token = secrets.token_hex(16)
            out.write(f"::stop-commands::{self._stop_token}\n")
        else:
            out.write(text + "\n")
        # The runner merges stdout and stderr; an add-mask still sitting in a buffer would
        # not protect a secret written to stderr right after.
        out.flush()

    def redact(self, text: str) -> str:
        """``text`` with every masked value replaced by ``***``."""
        for value in sorted(self._masked, key=len, reverse=True):
            text = text.replace(value, "***")
        return text

    def mask(self, value: str | SupportsSecretValue | None) -> None:
        """Register a secret: ``::add-mask::`` per line in Actions, redaction everywhere."""
        if value is None:
            return
        text = value if isinstance(value, str) else value.get_secret_value()
        # The runner masks the value as given, but it matches masks against one log line at
        # a time: a multi-line secret is masked whole and then each of its lines, as the
        # runner itself does for the job's secrets (actions/runner src/Runner.Worker/
        # Worker.cs, InitializeSecretMasker, commit 8456f7667d77990752273e2cd2c68d311d1cb5d5).
        parts = [text, *_LINE_BREAK.split(text)] if _LINE_BREAK.search(text) else [text]
        for part in parts:
            if len(part.strip()) < MIN_MASK_LENGTH or part in self._masked:
                continue
            self._masked.add(part)
            if self.active:
                self._command("add-mask", part)

    def error(
        self,
        message: str,
        *,
        title: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self._annotate("error", message, title=title, file=file, line=line)

    def warning(
        self,
        message: str,
        *,
        title: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self._annotate("warning", message, title=title, file=file, line=line)

    def notice(
        self,
        message: str,
        *,
        title: str | None = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self._annotate("notice", message, title=title, file=file, line=line)

    def _annotate(
        self, level: str, message: str, *, title: str | None, file: str | None, line: int | None
    ) -> None:
        message = self.redact(message)
        title = self.redact(title) if title is not None else None
        if self.active:
            self._command(level, message, title=title, file=file, line=line)
            return
        where = f"{file}:{line}: " if file and line is not None else f"{file}: " if file else ""
        heading = f"{title}: " if title else ""
        self.err.write(f"{level}: {where}{heading}{message}\n")
        self.err.flush()

    def debug(self, message: str) -> None:
        """A line shown only when the run has debug logging on; nothing outside Actions."""
        if self.active:
            self._command("debug", self.redact(message))

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        """Fold everything printed inside into one collapsible log section."""
        title = self.redact(title)
        if not self.active:
            self.err.write(title + "\n")
            self.err.flush()
            yield
            return
        self._command("group", title)
        try:
            yield
        finally:
            self._command("endgroup")

    @contextmanager
    def stop_commands(self) -> Iterator[str]:
        """Print untrusted text (server logs, build output) inside: it cannot issue commands.

        Yields the token. Nested uses share the outer token. Outside Actions nothing is
        printed.
        """
        if not self.active or self._stop_token is not None:
            yield self._stop_token or ""
            return
        token = secrets.token_hex(16)
        self.out.write(f"::stop-commands::{token}\n")
        self.out.flush()
        self._stop_token = token
        try:
            yield token
        finally:
            # _command may have rotated the token meanwhile: resume with the current one.
            self.out.write(f"::{self._stop_token}::\n")
            self.out.flush()
            self._stop_token = None

    # ------------------------------------------------------------------ files

    def _file(self, variable: str) -> str | None:
        if not self.active:
            return None
        return self._env.get(variable) or None

    def _append(self, variable: str, text: str) -> bool:
        path = self._file(variable)
        if path is None:
            return False
        # newline="" keeps "\n" as written on Windows; the runner accepts both endings.
        with Path(path).open("a", encoding="utf-8", newline="") as handle:
            handle.write(text)
        return True

    def _key_value(self, variable: str, name: str, value: str) -> bool:
        if self._file(variable) is None:
            return False
        # The heredoc form is multi-line safe; the delimiter is random and checked against
        # the value so no line of it can end the value early.
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        while delimiter in value:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
        return self._append(variable, f"{name}<<{delimiter}\n{value}\n{delimiter}\n")

    def set_output(self, name: str, value: str) -> bool:
        """Set step output ``name``; False (and nothing written) outside Actions."""
        if not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"invalid output name {name!r}: use letters, digits, '-' and '_', "
                "starting with a letter or '_'"
            )
        return self._key_value("GITHUB_OUTPUT", name, value)

    def set_env(self, name: str, value: str) -> bool:
        """Export ``name`` to the job's later steps; False outside Actions."""
        if not _ENV_NAME_RE.fullmatch(name):
            raise ValueError(
                f"invalid environment variable name {name!r}: use letters, digits and '_', "
                "not starting with a digit"
            )
        upper = name.upper()
        if upper in _REFUSED_ENV or upper.startswith(_REFUSED_ENV_PREFIXES):
            raise ValueError(
                f"refusing to set {name} for later steps: it would change how they run code "
                "or overwrite a variable the runner owns"
            )
        return self._key_value("GITHUB_ENV", name, value)

    def add_path(self, directory: str | os.PathLike[str]) -> bool:
        """Prepend ``directory`` to PATH for later steps; False outside Actions."""
        text = os.fspath(directory)
        if not text or "\n" in text or "\r" in text:
            raise ValueError(f"invalid PATH entry {text!r}")
        return self._append("GITHUB_PATH", text + "\n")

    def summary(self, markdown: str) -> bool:
        """Append markdown to the job summary; False outside Actions."""
        text = self.redact(markdown)
        if not text.endswith("\n"):
            text += "\n"
        return self._append("GITHUB_STEP_SUMMARY", text)
