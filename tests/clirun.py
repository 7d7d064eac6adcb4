"""Run the CLI in-process as a user would, and collect its exit code and output."""

from __future__ import annotations

import pytest

from ondemand.cli import main

Result = tuple[int, str, str]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), out, err
