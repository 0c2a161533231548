"""The ``powergate`` command answers ``--help`` and lists its sub-commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from powergate.cli import main


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "PowerGate" in out
    assert "commands" in out


def test_the_installed_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "powergate", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "usage: powergate" in result.stdout
