"""The technical-workflow engine and the platform's 15 technical workflows.

From ``python manage.py shell``: ``from workflows import run, pause, resume, stop, restart``.
"""

from typing import Any

_SHELL_COMMANDS = ("run", "start", "pause", "resume", "stop", "restart")


def __getattr__(name: str) -> Any:
    # Imported lazily: this package is loaded by Django before its models are ready.
    if name in _SHELL_COMMANDS:
        from workflows import shell

        return getattr(shell, name)
    raise AttributeError(f"module 'workflows' has no attribute {name!r}")
