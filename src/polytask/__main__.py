"""``python -m polytask ...``: the same as the ``polytask`` command."""

from polytask.cli import _console

_console()
