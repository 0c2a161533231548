"""``python -m powergate`` runs the ``powergate`` command."""

from powergate.cli import run

run()
