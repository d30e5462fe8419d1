"""The one exception type users see.

Every failure caused by user input (an unknown model, a missing file, weights that do not fit, a malformed plan,
missing data) raises :class:`AutoselectError` with a message that fits on one line. The CLI prints that line and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["AutoselectError", "first_line"]


class AutoselectError(Exception):
    """A problem with the user's input, explained in one line."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none (an empty file
    makes ``torch.load`` raise an error with an empty message)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
