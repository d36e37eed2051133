"""A real OpenSSH server on 127.0.0.1 for the benchmarks (the tests' harness, tests/ssh/sshd.py)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]


def _harness() -> Any:
    name = "ktrace_bench_sshd"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "ssh" / "sshd.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@contextlib.contextmanager
def ssh_backend(scratch: Path) -> Iterator[Any]:
    """An SshBackend on a freshly started sshd (alias ``ktrace-test``); the server is stopped afterwards."""
    from pytest_ktrace.backends.ssh._backend import SshBackend

    harness = _harness()
    harness.ensure_users()
    scratch.chmod(0o755)  # sshd reads authorized_keys as the logging-in user
    server = harness.SshServer(scratch / "sshd")
    server.start()
    try:
        with SshBackend("ktrace-test", ssh_config=server.ssh_config) as backend:
            yield backend
    finally:
        server.stop()
