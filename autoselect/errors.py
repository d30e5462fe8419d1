"""The one exception type users see.

Every failure caused by user input (an unknown model, a missing file, weights that do not fit, a malformed plan,
missing data) raises :class:`AutoselectError` with a message that fits on one line. The CLI prints that line and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["AutoselectError"]


class AutoselectError(Exception):
    """A problem with the user's input, explained in one line."""
