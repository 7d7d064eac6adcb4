"""Check the action's venv before a later use in the job runs it with secrets.

    python -I -S -B verify_venv.py VENV BASE_PYTHON

Run by the runner's Python in isolated mode and without ``site`` (``-S``), so that nothing
in the venv runs while it is being checked. Every file in the venv must be one that an
installed distribution recorded (its ``*.dist-info/RECORD``, with the same sha256), or one
of the few files that creating a venv writes (``pyvenv.cfg``, ``bin/activate*``, the
``bin/python*`` links to BASE_PYTHON). A file nobody recorded (a planted ``.pth`` or
module), a changed one, a missing one or a symlink out of the venv makes it unfit: the
script lists what it found and exits 1, and install.sh builds the venv again.

Compiled bytecode is never trusted across steps: Python loads a ``.pyc`` whose header
matches its source without looking at the code inside, and RECORD carries no hash for the
ones pip compiles. Every ``.pyc`` is removed here; the action runs Python with ``-B``.

Only the standard library: the venv's own packages must not run before they are checked.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import sys
from pathlib import Path

# What `python -m venv` and `uv venv` write besides the interpreter links; none is
# imported by Python at start-up (activate scripts run only when a shell sources them).
_VENV_FILES = frozenset({"pyvenv.cfg", ".installed-from", ".gitignore", "CACHEDIR.TAG"})
_BIN_PREFIXES = ("activate", "Activate.ps1", "deactivate.bat", "pydoc.bat")
_MAX_LISTED = 10


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return "sha256=" + base64.urlsafe_b64encode(sha.digest()).rstrip(b"=").decode()


def _recorded(venv: Path) -> tuple[dict[str, str], list[str]]:
    """Every file the installed distributions recorded (path relative to the venv ->
    expected hash, empty when RECORD gives none), and the problems found reading them."""
    files: dict[str, str] = {}
    problems: list[str] = []
    for record in sorted(venv.glob("lib/python*/site-packages/*.dist-info/RECORD")):
        site = record.parent.parent
        with record.open(newline="", encoding="utf-8") as handle:
            for row in csv.reader(handle):
                if not row or not row[0]:
                    continue
                target = os.path.normpath(site / row[0])
                relative = os.path.relpath(target, venv)
                if relative.startswith(".."):
                    problems.append(f"{record.relative_to(venv)} names a file outside the venv")
                    continue
                files[relative] = row[1] if len(row) > 1 else ""
    return files, problems


def _python_link(path: Path, base: str) -> bool:
    return path.is_symlink() and os.path.realpath(path) == os.path.realpath(base)


def _venv_own(relative: str, path: Path, base: str) -> bool:
    if relative in _VENV_FILES:
        return not path.is_symlink()
    head, _, name = relative.partition(os.sep)
    if head == "bin" and os.sep not in name:
        if name.startswith("python"):
            return _python_link(path, base)
        return name.startswith(_BIN_PREFIXES) and not path.is_symlink()
    return False


def _home_is_base(venv: Path, base: str) -> bool:
    """pyvenv.cfg points at BASE_PYTHON and keeps the system's site-packages out."""
    settings: dict[str, str] = {}
    for line in (venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            settings[key.strip().lower()] = value.strip()
    home = Path(settings.get("home", "")).resolve()
    bases = {Path(base).parent.resolve(), Path(base).resolve().parent}
    system_site = settings.get("include-system-site-packages", "false").lower()
    return home in bases and system_site == "false"


def check(venv: Path, base: str) -> list[str]:
    """What makes ``venv`` unfit for use, after removing every ``.pyc`` in it."""
    if not (venv / "pyvenv.cfg").is_file():
        return ["pyvenv.cfg is missing"]
    problems: list[str] = []
    if not _home_is_base(venv, base):
        problems.append("pyvenv.cfg names another Python, or the system's site-packages")
    recorded, record_problems = _recorded(venv)
    problems += record_problems
    seen: set[str] = set()
    for directory, dirnames, filenames in os.walk(venv):
        here = Path(directory)
        for name in list(dirnames):
            path = here / name
            if path.is_symlink():
                dirnames.remove(name)
                if path.relative_to(venv) == Path("lib64") and path.readlink() == Path("lib"):
                    continue
                problems.append(f"{path.relative_to(venv)}: a symlink nobody installed")
        for name in filenames:
            path = here / name
            relative = str(path.relative_to(venv))
            if name.endswith(".pyc"):
                path.unlink()
                continue
            seen.add(relative)
            expected = recorded.get(relative)
            if expected is None:
                if not _venv_own(relative, path, base):
                    problems.append(f"{relative}: not installed by any package")
            elif path.is_symlink():
                problems.append(f"{relative}: replaced by a symlink")
            elif expected and _digest(path) != expected:
                problems.append(f"{relative}: changed since it was installed")
    for relative in sorted(set(recorded) - seen):
        if not relative.endswith(".pyc") and "__pycache__" not in relative:
            problems.append(f"{relative}: missing")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: verify_venv.py VENV BASE_PYTHON", file=sys.stderr)
        return 2
    problems = check(Path(argv[1]), argv[2])
    for line in problems[:_MAX_LISTED]:
        print(line)
    if len(problems) > _MAX_LISTED:
        print(f"... and {len(problems) - _MAX_LISTED} more")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
