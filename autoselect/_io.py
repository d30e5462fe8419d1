"""Writing files so that a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from autoselect.errors import AutoselectError, first_line

__all__ = ["atomic_path", "ensure_dir", "read_text", "check_output_dir", "check_output_file", "output_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def read_text(path: str | os.PathLike[str], what: str) -> str:
    """A text file's contents as UTF-8; a file that is missing, unreadable or not text is the user's input
    problem, named in one line (``what``: "plan", "search space", ...)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AutoselectError(f"{what} {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise AutoselectError(f"cannot read {what} {p}: {exc.strerror or first_line(exc)}") from None


def check_output_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written: an existing file, a read-only
    parent. Creates nothing: a probe file in the nearest existing ancestor is written and removed."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise AutoselectError(f"{what} {p} is an existing file, not a folder")
    probe_dir = p
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise AutoselectError(f"{what} {p}: {probe_dir} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".autoselect-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise AutoselectError(f"{what} {p} cannot be written: {exc.strerror or first_line(exc)}") from None
    return p


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, before any work, an output file that would land in a folder that cannot be written, or that names
    an existing folder."""
    p = Path(path)
    if p.is_dir():
        raise AutoselectError(f"{what} {p} is an existing folder, not a file")
    check_output_dir(p.parent, what=f"{what} {p}: folder")  # Path("x.json").parent is "."
    return p


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], *, what: str = "--out",
               worth_keeping: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Check ``path`` before any work (:func:`check_output_dir`), then run the block. If the block fails (or is
    interrupted) and this run created the folder, the folder is removed, so that no empty or half-made output is
    left, unless ``worth_keeping(path)`` names something in it a rerun can continue from (a study with finished
    trials): then it stays, and a line on stderr says so. A folder that existed before is never removed."""
    p = check_output_dir(path, what)
    existed = p.exists()
    try:
        yield p
    except BaseException:
        if not existed and p.is_dir():
            reason = worth_keeping(p) if worth_keeping is not None else None
            if reason:
                print(f"autoselect: kept {p}: {reason}", file=sys.stderr)
            else:
                shutil.rmtree(p, ignore_errors=True)
        raise
