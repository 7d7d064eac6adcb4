"""An ``ollama`` executable that runs the emulator."""

from __future__ import annotations

import shlex
import stat
import sys
from pathlib import Path


def write_standin(directory: Path) -> Path:
    """Write an executable ``ollama`` in ``directory`` that runs this emulator; return its path.

    Point ``OLLAMA_BIN`` or ``PATH`` at it to rehearse anything that starts ``ollama serve``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ollama"
    python = shlex.quote(sys.executable)
    path.write_text(
        "#!/bin/sh\n"
        "# Stand-in for the ollama binary: the ollama-ondemand emulator.\n"
        f'exec {python} -m ondemand.sandbox.ollama "$@"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
