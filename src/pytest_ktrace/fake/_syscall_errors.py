"""How the fake tracefs fails a system call: :class:`FakeOSError` with the errno the kernel returns."""

from __future__ import annotations

import errno
import os

__all__ = ["FakeOSError", "FakeUnsupportedError", "errno_code"]


class FakeOSError(OSError):
    """What a failing tracefs system call raises: ``errno`` as the kernel returns it, ``filename`` the path."""

    def __init__(self, code: int, path: str, detail: str = "") -> None:
        message = os.strerror(code) + (f" ({detail})" if detail else "")
        super().__init__(code, message, path)

    @property
    def errno_name(self) -> str:
        """The symbolic errno: ``"EBUSY"``."""
        return errno.errorcode.get(self.errno or 0, str(self.errno))


class FakeUnsupportedError(FakeOSError):
    """A command the fake does not model (eprobe, fprobe, tprobe, synthetic event): ENOSYS, never a kernel errno."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(errno.ENOSYS, path, detail)


def errno_code(name: str) -> int:
    """The number of an errno name (``"EBUSY"``); EINVAL for a name this platform does not know."""
    code = getattr(errno, name, None)
    return code if isinstance(code, int) else errno.EINVAL
