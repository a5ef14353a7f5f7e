from polytask.cli import _console

_console()
