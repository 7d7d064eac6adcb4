"""Record the action's venv right after it is installed; check it before a later use.

    python -I -S -B verify_venv.py record VENV
    python -I -S -B verify_venv.py check VENV

Run by the runner's Python in isolated mode and without ``site`` (``-S``), so that nothing
in the venv runs while it is recorded or checked. ``record`` writes the sha256 of every
file in the venv, and the target of every symlink, to ``VENV/.installed-files``. ``check``
compares the venv with it: a file that was not there (a planted ``.pth`` or module), a
changed or missing one, or a symlink pointing elsewhere makes the venv unfit; the script
lists what it found and exits 1, and install.sh builds the venv again. Bytecode that was not
there at install time is removed rather than refused: Python writes it on its own, and
loads a ``.pyc`` whose header matches its source without looking at the code in it.

Only the standard library: the venv's own packages must not run before they are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

MANIFEST = ".installed-files"
_MAX_LISTED = 10


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()


def _entries(venv: Path) -> Iterator[tuple[str, Path]]:
    """Every file and symlink in ``venv`` (symlinked directories are not entered)."""
    for directory, dirnames, filenames in os.walk(venv):
        here = Path(directory)
        for name in [*dirnames, *filenames]:
            path = here / name
            if path.is_symlink() or name in filenames:
                yield str(path.relative_to(venv)), path


def _state(path: Path) -> str:
    return f"link:{path.readlink()}" if path.is_symlink() else _digest(path)


def record(venv: Path) -> None:
    state = {rel: _state(path) for rel, path in _entries(venv) if rel != MANIFEST}
    (venv / MANIFEST).write_text(json.dumps(state, indent=0, sort_keys=True), encoding="utf-8")


def check(venv: Path) -> list[str]:
    """What makes ``venv`` unfit for use, after removing bytecode written since install."""
    try:
        recorded = json.loads((venv / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"{MANIFEST} is missing or unreadable"]
    if not isinstance(recorded, dict):
        return [f"{MANIFEST} is unreadable"]
    problems: list[str] = []
    seen: set[str] = set()
    for relative, path in list(_entries(venv)):
        if relative == MANIFEST:
            continue
        expected = recorded.get(relative)
        if expected is None:
            if relative.endswith(".pyc") and not path.is_symlink():
                path.unlink()
            else:
                problems.append(f"{relative}: not installed by the action")
            continue
        seen.add(relative)
        if _state(path) != expected:
            problems.append(f"{relative}: changed since it was installed")
    problems += [f"{relative}: missing" for relative in set(recorded) - seen]
    return sorted(problems)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("record", "check"):
        print("usage: verify_venv.py record|check VENV", file=sys.stderr)
        return 2
    venv = Path(argv[2])
    if argv[1] == "record":
        record(venv)
        return 0
    problems = check(venv)
    for line in problems[:_MAX_LISTED]:
        print(line)
    if len(problems) > _MAX_LISTED:
        print(f"... and {len(problems) - _MAX_LISTED} more")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
