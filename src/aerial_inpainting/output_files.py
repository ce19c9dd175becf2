"""Writing results without losing anything: never over an input, never a truncated file.

* :func:`same_file`: whether two paths name one file (symlinks, hard links, ``..`` and case
  folding included), so an output naming an input is refused before anything is read.
* :func:`atomic_output`: the result is written to a temporary file in the output's folder,
  then ``os.replace``-d over the final name. A failed or interrupted write leaves the previous
  file (if any) untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """True when ``first`` and ``second`` are the same file (or folder).

    Both existing: ``os.path.samefile`` (device and inode, so symlinks and hard links count).
    Otherwise the fully resolved paths (symlinks of the folders followed) are compared.
    Never raises.
    """
    try:
        if os.path.exists(first) and os.path.exists(second):
            return os.path.samefile(first, second)
        return os.path.realpath(first) == os.path.realpath(second)
    except (OSError, ValueError):
        return False


def _default_mode(path: Path) -> int:
    """Permission bits for the result: those of the file it replaces, else 0o666 - umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    The caller writes the complete file to the yielded path (``.<name>.<random>.partial``,
    so give writers the format explicitly). When the block exits normally the file gets the
    permission bits of the file it replaces (else the usual ``0o666`` minus umask), is
    fsynced and ``os.replace``-d over ``path``; when it raises (any exception, Ctrl-C too) the
    temporary file is deleted and ``path`` is left as it was. The folder is created if needed.
    Raises OSError from creating the folder, the temporary file or the replacement.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(path))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
