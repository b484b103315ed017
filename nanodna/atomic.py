"""Atomic outputs: a file or folder appears whole or not at all.

A folder is built under a hidden temp name beside its final place and renamed into place only
when everything succeeded (`staging_dir`); a file is written to a temp file beside it and
moved over with `os.replace` (`write_text`, `write_bytes`, `open_atomic`). An interrupted or
failed run leaves the old output (or nothing) behind, never a half-written one. Renames within
one folder are atomic on POSIX file systems.

Imports nothing from nanodna but the error base, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from nanodna.errors import UserError


class OutputExistsError(UserError):
    """The output folder exists and replacing it was not asked for."""


@contextlib.contextmanager
def staging_dir(out_dir: str, replace: bool = False) -> Iterator[str]:
    """Yield a temp folder beside `out_dir` that becomes `out_dir` on success.

    With `replace` an existing `out_dir` is swapped out (moved aside, the new one moved in,
    the old one deleted), so readers see either the old or the new folder. On any exception the
    temp folder, and any parent folder this call created, is removed.

    Raises OutputExistsError if `out_dir` exists and `replace` is False.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not replace:
        raise OutputExistsError(f"{out_dir}: already exists (pass --force to replace it)")
    parent = os.path.dirname(out_dir)
    made = parent  # the outermost folder this call creates, removed again on failure
    while not os.path.exists(os.path.dirname(made)):
        made = os.path.dirname(made)
    made = None if os.path.exists(parent) else made
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(out_dir)
    tmp = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output should not be
    try:
        yield tmp
        if os.path.exists(out_dir):  # replace: swap, then delete the old one
            old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
            os.replace(out_dir, os.path.join(old, base))
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(made or tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` on a temp file beside `path`, moved over `path` when the block ends
    without an exception (and deleted when it raises). `mode` must write ("w" or "wb")."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.partial-",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a plain open() would not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with open_atomic(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with open_atomic(path, "wb") as f:
        f.write(data)
