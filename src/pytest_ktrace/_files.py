"""Files pytest-ktrace writes on the controller (cassettes, known_hosts, copies of remote binaries): written so
that a failing write, above all a full disk, raises a :class:`~pytest_ktrace._errors.KtraceError` naming the file
and leaves nothing half-written behind that a later run would trust."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Union

from ._errors import DiskFull, KtraceError, hide_for_ktrace_errors

__all__ = ["DISK_FULL_ERRNOS", "append_atomic", "file_error", "write_atomic", "write_private_temp"]

__tracebackhide__ = hide_for_ktrace_errors

_PathLike = Union[str, "os.PathLike[str]"]

# A write that fails with one of these failed for lack of space, not for a bug or a permission.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def file_error(exc: OSError, path: _PathLike, what: str, *, left: str = "") -> KtraceError:
    """The KtraceError for a failed write of ``what`` (e.g. "cassette") to ``path``: :class:`DiskFull` when the
    filesystem is full, else a KtraceError with the error text and errno name. ``left`` says what the failed
    write left behind (e.g. "the previous cassette is unchanged")."""
    tail = f"; {left}" if left else ""
    if exc.errno in DISK_FULL_ERRNOS:
        detail = "ENOSPC" if exc.errno == errno.ENOSPC else _describe(exc)
        return DiskFull(
            f"cannot write {what} {os.fspath(path)}: no space left on device ({detail}){tail}", path=os.fspath(path)
        )
    return KtraceError(f"cannot write {what} {os.fspath(path)}: {_describe(exc)}{tail}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: _PathLike, data: bytes, *, what: str = "file", mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync'ed and renamed over
    ``path``: readers see the old file or the whole new one, never a part. On any failure the temporary file
    is removed and a KtraceError (:class:`DiskFull` for a full disk) names ``path``."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise file_error(exc, target, what, left="its directory could not be created") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    except OSError as exc:
        raise file_error(exc, target, what, left="nothing was written") from None
    try:
        try:
            os.fchmod(fd, mode & ~_umask())
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        kept = "the previous version is unchanged" if target.exists() else "nothing of it was left behind"
        raise file_error(exc, target, what, left=kept) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_atomic(path: _PathLike, data: bytes, *, what: str = "file") -> None:
    """Append ``data`` with one O_APPEND write; a write that fails part-way (a full disk) is cut off again, so
    the file never ends in half a line (unless another writer appended meanwhile: then it is left alone)."""
    target = Path(path)
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        existed = target.exists()
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise file_error(exc, target, what, left="nothing was written") from None
    try:
        before = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size == before + written:
                    if existed or before:
                        os.ftruncate(fd, before)
                    else:
                        os.unlink(target)  # created by this call, and nothing else wrote to it
            raise file_error(exc, target, what, left="the file is as it was") from None
    finally:
        os.close(fd)


def write_private_temp(data: bytes, *, prefix: str, what: str = "temporary file") -> Path:
    """``data`` in a new file (mode 0600) of the temporary directory; removed again if the write fails."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix)
    except OSError as exc:
        raise file_error(exc, Path(tempfile.gettempdir()) / f"{prefix}*", what, left="nothing was written") from None
    try:
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise file_error(exc, tmp, what, left="the partial file was removed") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
