"""Ctrl-C during a search lands inside a trial, never inside the study's own bookkeeping.

Optuna records a trial's result after the objective returns; a KeyboardInterrupt raised in that write escapes its
``except Exception`` and ends in an ``UnboundLocalError`` traceback (optuna 4.x ``_run_trial``), with the trial left
RUNNING; one raised inside a trial's own write of its attributes breaks the SQL commit the same way.
:class:`TrialInterrupt` makes SIGINT raise only while a trial's own work runs, outside those writes (``held``); one
that comes between trials is held and raised as the next trial starts (that trial is then the interrupted one, which
``--resume`` reruns), or when the study returns.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["TrialInterrupt"]


class TrialInterrupt:
    def __init__(self) -> None:
        self.pending = False
        self._inside = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._inside:
            raise KeyboardInterrupt
        self.pending = True

    @contextmanager
    def installed(self) -> Iterator[TrialInterrupt]:
        """While the study runs. Only where Python's own Ctrl-C handler is in place (the main thread, SIGINT not
        ignored): elsewhere nothing changes."""
        own = (threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if own:
            signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            if own:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        self.raise_pending()

    @contextmanager
    def trial(self) -> Iterator[None]:
        """Around one trial's work: a Ctrl-C held since the last trial is raised here, a new one raises at once."""
        self.raise_pending()
        self._inside = True
        try:
            yield
        finally:
            self._inside = False

    @contextmanager
    def held(self, *, raise_after: bool = True) -> Iterator[None]:
        """Around a write to the study from inside a trial (its user attributes: an SQL commit that a
        KeyboardInterrupt would break): a Ctrl-C meanwhile is held; with ``raise_after`` it is raised once the
        write is done (the trial is then the interrupted one), else it waits for the next trial or the study's
        end (the trial's work is done and is recorded whole)."""
        inside, self._inside = self._inside, False
        try:
            yield
        finally:
            self._inside = inside
        if raise_after and inside:
            self.raise_pending()

    def raise_pending(self) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
