"""``ondemand init``: write ondemand.yml and the GitHub workflows, or bring them up to date.

What it writes (``templates.render``): ``ondemand.yml`` for the chosen provider, and
``.github/workflows/ollama-tests.yml``, ``ollama-nightly-stop.yml`` and ``ollama-manual.yml``.
A file that does not exist is created from its template. A file that exists is **updated**:
the template is merged into it, and the merge only ever adds or refreshes template content:

1. **Missing keys are added**, with the template's comments above them, right after the
   user's entry of the key that precedes them in the template (or before the entry of the
   key that follows them, or at the end of the mapping). This holds at every depth: a new
   top-level section, a new input under a step's ``with:``, a new job.
2. **Missing steps are added** the same way. A template step is present when the file has a
   step with the same ``id``, else the same ``name``, else the same action (``uses:``
   without its ``@ref``; for our action, with the same ``command``). A present step is
   merged like any mapping. A job renamed by the user is recognised by the steps of our
   action it runs.
3. **A value is updated only when it is still a value an earlier template wrote there**
   (``templates.SUPERSEDED``), e.g. the SHA of ``actions/checkout`` after a bump; its
   end-of-line comment is updated with it when it is still the old one (``# v4.2.2``).
   Every other value that differs from the template is the user's and is kept. Lists other
   than ``steps`` (``models``, ``options``, ``schedule``) are values: compared and kept whole,
   never merged item by item.
4. **Nothing of the user's is removed, rewritten or moved**: their keys, steps, jobs,
   comments, blank lines, quoting and indentation stay byte for byte. A key whose value is a
   different kind than the template's (a list where the template has a mapping, an empty
   ``key:``) counts as changed and is kept. Content shared through YAML anchors (``<<:
   *defaults``, ``key: *alias``) is left alone: an edit there would change every user of it.

So re-running ``init`` right away changes nothing, and a key or step the user deleted comes
back on the next run (set ``key:`` empty, or give a step ``if: false``, to keep it out).
Comment-only changes of a template do not reach existing files. Where an addition cannot be
made safely (into a ``{...}`` mapping or a ``[...]`` list), the file is left as it is there
and a note says what to add by hand.

Nothing is written unless every file parses: a file that is not valid YAML stops the run
with its name and line (exit 2). Each file is written atomically (a temporary file in the
same directory, then ``os.replace``), keeping its line endings, byte-order mark and mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import secrets
import stat
from pathlib import Path
from typing import Literal

from ondemand.errors import ConfigError, OndemandError
from ondemand.scaffold import templates
from ondemand.scaffold.merge import merge

__all__ = ["FileChange", "plan", "write"]

_BOM = "\ufeff"

Action = Literal["created", "updated", "unchanged"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FileChange:
    """What ``init`` does to one file."""

    path: str
    """Relative to the repository root, with ``/``: ``.github/workflows/ollama-manual.yml``."""
    target: Path
    """Where it is written (the directory joined with ``path``)."""
    action: Action
    before: str | None
    """The current text (line breaks as ``\\n``); ``None`` when the file does not exist."""
    after: str
    notes: tuple[str, ...] = ()
    newline: str = "\n"
    bom: bool = False

    def diff(self) -> str:
        """A unified diff of the change, as ``git diff`` shows it; empty when unchanged."""
        if self.action == "unchanged":
            return ""
        before = (self.before or "").splitlines(keepends=True)
        after = self.after.splitlines(keepends=True)
        lines = difflib.unified_diff(
            before,
            after,
            fromfile="/dev/null" if self.before is None else f"a/{self.path}",
            tofile=f"b/{self.path}",
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _read(target: Path, display: str) -> tuple[str, str, bool] | None:
    """``(text with \\n line breaks, the file's line break, had a BOM)``; None if absent."""
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(
            f"{display} is a directory", hint="move it away, then run init again"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {display}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{display}: not UTF-8 text", hint="save it as UTF-8; no file was changed"
        ) from None
    bom = text.startswith(_BOM)
    text = text.removeprefix(_BOM)
    newline = "\r\n" if "\r\n" in text else "\n"
    return text.replace("\r\n", "\n"), newline, bom


def plan(directory: Path, *, provider: str, name: str) -> list[FileChange]:
    """What ``init`` would do to each file in ``directory``; reads, never writes.

    Raises ``ConfigError`` (exit 2) naming the file and line when a file is not valid YAML.
    """
    changes = []
    for path, text in templates.render(provider, name).items():
        target = directory / path
        display = str(target)
        current = _read(target, display)
        if current is None:
            changes.append(FileChange(path=path, target=target, action="created", before=None,
                                      after=text))  # fmt: skip
            continue
        before, newline, bom = current
        merged = merge(before, text, templates.SUPERSEDED.get(path, {}), display)
        notes = list(merged.notes)
        if path == templates.CONFIG_FILE:
            notes += _provider_kept(merged.text, provider, display)
        changes.append(
            FileChange(
                path=path,
                target=target,
                action="unchanged" if merged.text == before else "updated",
                before=before,
                after=merged.text,
                notes=tuple(notes),
                newline=newline,
                bom=bom,
            )
        )
    return changes


def _provider_kept(text: str, provider: str, display: str) -> list[str]:
    """A note when the file names another provider than the one the files were made for."""
    from ruamel.yaml import YAML

    data = YAML(typ="rt").load(text)
    mine = data.get("provider") if isinstance(data, dict) else None
    if not isinstance(mine, str) or mine == provider:
        return []
    return [
        f"{display}: provider: kept yours ({mine}); the workflows now pass {provider}'s "
        f"credentials: set provider: {provider} by hand if you are moving to it"
    ]


def write(changes: list[FileChange]) -> None:
    """Write the files that change, each atomically."""
    for change in changes:
        if change.action == "unchanged":
            continue
        data = (_BOM if change.bom else "") + change.after.replace("\n", change.newline)
        _write_atomic(change.target, data.encode("utf-8"))


def _write_atomic(target: Path, data: bytes) -> None:
    # Through a symlink, the file it points to is what changes; the link stays.
    real = target.resolve() if target.is_symlink() else target
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(real.stat().st_mode) if real.exists() else None
        temp = real.with_name(f".{real.name}.{secrets.token_hex(4)}.tmp")
        # 0o666 less the umask, as any new file; an existing file keeps its mode.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if mode is not None:
                temp.chmod(mode)
            temp.replace(real)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
    except OSError as exc:
        raise OndemandError(
            f"cannot write {target}: {exc.strerror or exc}",
            hint="check the directory's permissions; files already written are complete",
        ) from None
