"""Helpers shared by the test modules (a unique module name: several conftest.py files exist in this repo)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

PROG_DIR = Path(__file__).parent / "prog"
PROBED_SOURCE = PROG_DIR / "probed.c"
TRACEFS = Path("/sys/kernel/tracing")
# A snapshot of a development VM's 6.18 kernel: test data (a product ships snapshots of kernels users run)
DEV_VM_SNAPSHOT = Path(__file__).parent / "data" / "dev-vm-6.18-x86_64.json.gz"


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


def tracefs_state() -> dict[str, str]:
    """What tracefs holds that could be ours: probe lists and instance names."""
    state = {}
    for name in ("uprobe_events", "kprobe_events"):
        path = TRACEFS / name
        state[name] = path.read_text() if path.exists() else ""
    state["instances"] = "\n".join(sorted(os.listdir(TRACEFS / "instances")))
    return state


_PLUGIN_NAME = re.compile(r"ktrace_[0-9a-f]{6}_\d+_[0-9a-f]{4}")


def ours(state: dict[str, str]) -> list[str]:
    """Lines naming a group or instance of the plugin (other tools' "ktrace_*" scratch names do not count)."""
    return [line for text in state.values() for line in text.splitlines() if _PLUGIN_NAME.search(line)]


def left_behind(state: dict[str, str]) -> list[str]:
    """Plugin names of runs that ended (their pid is gone) or that run in this process: what a finished run must
    not leave. Names of runs still going elsewhere (other xdist workers of this suite) do not count."""
    left = []
    for line in ours(state):
        found = re.search(r"ktrace_[0-9a-f]{6}_(\d+)_", line)
        pid = int(found.group(1)) if found else 0
        if pid == os.getpid() or not Path(f"/proc/{pid}").exists():
            left.append(line)
    return left


def ours_in_this_process(state: dict[str, str]) -> list[str]:
    """Lines naming a group or instance of a run in this process (pytester's inline runs): other xdist workers'
    runs, with their own pids, do not count."""
    return [line for line in ours(state) if re.search(rf"ktrace_[0-9a-f]{{6}}_{os.getpid()}_", line)]


def append_line(path: Path, line: str) -> None:
    """Append one command the way `echo >>` does (Python's "a" mode lseeks, which tracefs refuses)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def qemu_pids() -> set[int]:
    """PIDs of every qemu-system process on this machine (to prove a run started or left none)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().startswith("qemu-system"):
                    pids.add(int(entry))
            except OSError:
                pass
    return pids


def run_pytest(
    cwd: Union[str, os.PathLike[str]],
    *args: str,
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """pytest in its own process, as a user runs it (``-q -rs``, no cache), from ``cwd``; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
        cwd=cwd,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
