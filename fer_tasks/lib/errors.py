"""The project's exception types for what a user can fix: bad input, bad params, a refused run.

`fer` prints such an error as one line naming the file, row or key at fault
and exits 1. Anything else is a bug: it gets a one-line summary, a hint to
rerun with -v for the traceback, and exit status 2, never passed off as bad
input.
"""

from __future__ import annotations


class FerError(Exception):
    """Expected and fixable by the user; the message says what and where."""


class InputError(FerError, ValueError):
    """An input file, row, image or value that cannot be used."""


class MissingInput(FerError, FileNotFoundError):
    """An input file or folder that is not there."""
