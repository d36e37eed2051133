"""Build tests/prog/probed.c for the uprobe tests: ``build_probed(tmpdir) -> Path`` (gcc -O0 -g, cached).

The binary is cached per (source hash, flags) both in-process and on disk inside ``tmpdir``, so any number of
tests (or xdist workers sharing a base temp dir) compile it once. ``pie=False`` builds with ``-no-pie``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, Tuple, Union

__all__ = ["PROBED_SOURCE", "build_probed"]

PROBED_SOURCE = Path(__file__).resolve().parent / "probed.c"

_lock = threading.Lock()
_built: Dict[Tuple[str, str, bool], Path] = {}


def build_probed(tmpdir: Union[str, os.PathLike[str]], *, pie: bool = True) -> Path:
    """Compile probed.c into ``tmpdir`` (once) and return the executable's path.

    Raises ``RuntimeError`` if gcc is missing or the compile fails (message carries gcc's output)."""
    source = PROBED_SOURCE.read_bytes()
    digest = hashlib.sha256(source + (b"pie" if pie else b"nopie")).hexdigest()[:16]
    out_dir = Path(os.fspath(tmpdir))
    key = (str(out_dir.resolve()), digest, pie)
    with _lock:
        cached = _built.get(key)
        if cached is not None and cached.exists():
            return cached
        out = out_dir / f"probed-{'pie' if pie else 'nopie'}-{digest}"
        if not out.exists():
            gcc = shutil.which("gcc") or shutil.which("cc")
            if gcc is None:
                raise RuntimeError("gcc is needed to build tests/prog/probed.c (apt-get install gcc)")
            out_dir.mkdir(parents=True, exist_ok=True)
            flags = ["-O0", "-g", "-Wall"] + (["-fPIE", "-pie"] if pie else ["-fno-pie", "-no-pie"])
            # compile to a temp name and rename: concurrent builders never see a half-written binary
            fd, tmp = tempfile.mkstemp(prefix=".probed-", dir=str(out_dir))
            os.close(fd)
            try:
                proc = subprocess.run(
                    [gcc, *flags, "-o", tmp, str(PROBED_SOURCE)], capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"building probed.c failed ({' '.join(flags)}):\n{proc.stderr}")
                os.chmod(tmp, 0o755)
                os.replace(tmp, out)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        _built[key] = out
        return out
