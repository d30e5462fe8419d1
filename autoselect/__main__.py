"""``python -m autoselect ...``: the same as the ``autoselect`` command."""

from autoselect.cli import run

run()
