"""The line between a user's mistake and a bug.

A bad dataset, config or checkpoint is the user's to fix: the command line prints the message (which names the file,
the record and the problem) and exits with status 2, without a traceback. Every other exception is a bug and keeps
its traceback. Errors of the first kind derive from :class:`UserError`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Something in the user's data, config or files that they can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
    """Options that cannot work together (e.g. a class count that differs from the dataset's)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder named on the command line or in a config does not exist."""


class InputError(UserError, ValueError):
    """An input file that cannot be read as what it is meant to be (corrupt image, 4-D volume, broken DICOM series)."""


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Turn a :class:`UserError` into ``error: <message>`` on stderr and exit status 2."""
    try:
        yield
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
