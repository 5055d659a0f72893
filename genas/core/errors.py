"""One base class for every mistake a user can fix (bad option, missing file, wrong layout), and the one way
every command line reports it: ``error: <what, where, how to fix>`` on one stderr line, exit code 2.

Each stage raises its own subclass (``ConfigError``, ``DatasetError``, ``LayoutError``, ...) so callers can tell
them apart; a CLI ``main`` wraps its body in :func:`usage_errors` and so never prints a traceback for them.
Validation happens before the first file is written or the first step runs, so an error leaves nothing behind.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

__all__ = ["UsageError", "EXIT_USAGE", "usage_errors", "report_usage_error"]

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., int])


class UsageError(ValueError):
    """An input the user can fix; the message says what is wrong, where, and how to fix it."""


def report_usage_error(err: BaseException) -> int:
    """Print ``err`` as the one-line CLI error and return :data:`EXIT_USAGE`."""
    message = " ".join(str(err).split("\n"))
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def usage_errors(main: F) -> F:
    """Decorate a CLI ``main``: a :class:`UsageError` becomes one stderr line and exit code 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            return report_usage_error(err)
    return wrapper  # type: ignore[return-value]
