"""Exit statuses and one-line messages for failures that are not layerseal's own errors.

Kept apart from :mod:`layerseal.cli.common` so that ``main`` imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys

from layerseal.errors import LayersealError

#: exit statuses beside the error families' own (README, "Errors")
EXIT_BAD_INPUT = 2
EXIT_TRANSPORT = 4
#: output pipe closed by its reader (``| head``): what a shell reports for SIGPIPE
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(exc: BaseException | None) -> OSError | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def os_error_status(exc: OSError) -> int:
    """A connection that failed outside the registry client's handling is transport (4);
    anything else of the local system is bad input (2)."""
    return EXIT_TRANSPORT if isinstance(exc, ConnectionError | TimeoutError) else EXIT_BAD_INPUT


def describe_os_error(exc: OSError) -> str:
    """One line for an error of the local system, with the file it concerns."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"network: expected a working connection, seen {exc.strerror or type(exc).__name__}"
    where = exc.filename if exc.filename is not None else "local file system"
    if exc.errno in _NO_SPACE:
        seen = f"no space left on the device ({exc.strerror})"
        return f"{where}: expected room to write, seen {seen}: free space or choose another place"
    return f"{where}: expected a usable file or directory, seen {exc.strerror or exc}"


def exit_code_of(exc: LayersealError) -> int:
    """The error family's status; a local disk that filled up counts as bad input (2), not 1."""
    if exc.exit_code == 1 and _no_space(exc) is not None:
        return EXIT_BAD_INPUT
    return exc.exit_code


def broken_pipe() -> int:
    """The reader of our output went away: end quietly, as ``cat | head`` does."""
    # Python would report the unflushable stdout again at exit
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
