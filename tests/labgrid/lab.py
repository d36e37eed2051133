"""A real labgrid lab on loopback for the tests: coordinator, exporters and places, each a process of its own.

:class:`Lab` starts ``labgrid-coordinator -l 127.0.0.1:PORT`` in a fresh working directory (the coordinator keeps
``places.yaml`` there and would load an old one), :meth:`Lab.export` starts ``labgrid-exporter -c ADDR -n NAME
--hostname 127.0.0.1`` on a YAML file of resource groups, :meth:`Lab.add_place` makes a place with
``labgrid-client create``, ``add-match`` and ``set-tags``. :meth:`Lab.places` and :meth:`Lab.reservations` are the
coordinator's own view (its ``GetPlaces`` and ``GetReservations`` calls). :meth:`Lab.stop` ends exactly the
processes it started, by pid.

Everything talks to 127.0.0.1 directly: the labgrid processes run with the proxy variables removed (gRPC would
honour ``http_proxy``), and so does the gRPC channel of the views.

To export another SSH target (a qemu guest's forwarded port, say) as a place::

    lab.export("guests", {"guest-x86": {"NetworkService": {"address": "127.0.0.1", "port": 10022,
                                                            "username": "root"}}})
    lab.add_place("guest-x86", "guests/guest-x86/NetworkService", {"arch": "x86_64"})

and run pytest with ``--ktrace-labgrid=<lab.address> --ktrace-labgrid-tags=arch=x86_64``.
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

BIN = Path(sys.executable).parent
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def direct_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """This process's environment without proxies, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in _PROXY_VARIABLES}
    env.update(extra or {})
    return env


def my_owner() -> str:
    """How the coordinator names a client of this process (what labgrid's client sends)."""
    return f"{os.environ.get('LG_HOSTNAME', socket.gethostname())}/{os.environ.get('LG_USERNAME', getpass.getuser())}"


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


@dataclass(frozen=True)
class PlaceView:
    name: str
    tags: dict[str, str]
    acquired: Optional[str]
    reservation: Optional[str]


@dataclass(frozen=True)
class ReservationView:
    token: str
    owner: str
    state: int  # labgrid's numbers: 0 waiting, 1 allocated, 2 acquired, 3 expired, 4 invalid
    place: Optional[str]


@dataclass
class Lab:
    """One coordinator in ``workdir`` and the exporters added to it."""

    workdir: Path
    port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Lab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "coordinator").mkdir()
        self.port = free_port()
        return self.restart()

    def restart(self) -> Lab:
        """Start the coordinator again, on the same port in the same directory (it reloads its places)."""
        self._spawn(
            [str(BIN / "labgrid-coordinator"), "-l", self.address], self.workdir / "coordinator", "coordinator.log"
        )
        wait_until(self._listening, 20, f"labgrid-coordinator on {self.address}")
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _spawn(self, argv: list[str], cwd: Path, log: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log, "ab") as out:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=direct_env()
            )
        self.processes.append(proc)
        return proc

    def export(self, name: str, groups: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> subprocess.Popen[bytes]:
        """Start an exporter called ``name`` for ``groups`` (group -> resource class -> parameters); returns once
        the coordinator lists every resource."""
        config = self.workdir / f"exporter-{name}.yaml"
        config.write_text(_yaml(groups))
        proc = self._spawn(
            [str(BIN / "labgrid-exporter"), "-c", self.address, "-n", name, "--hostname", "127.0.0.1", str(config)],
            self.workdir,
            f"exporter-{name}.log",
        )
        wanted = {f"{name}/{group}/{cls}" for group, resources in groups.items() for cls in resources}
        wait_until(lambda: wanted <= set(self.client("resources").stdout.split()), 30, f"exporter {name}'s resources")
        return proc

    def client(
        self, *args: str, env: Optional[Mapping[str, str]] = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``labgrid-client -x ADDRESS ARGS`` (``env``: e.g. ``LG_USERNAME`` to act as another user)."""
        proc = subprocess.run(
            [str(BIN / "labgrid-client"), "-x", self.address, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=direct_env(env),
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"labgrid-client {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    def add_place(self, name: str, match: str, tags: Optional[Mapping[str, str]] = None) -> None:
        self.client("-p", name, "create")
        self.client("-p", name, "add-match", match)
        if tags:
            self.client("-p", name, "set-tags", *(f"{key}={value}" for key, value in tags.items()))

    def places(self) -> dict[str, PlaceView]:
        response = self._call("GetPlaces", "GetPlacesRequest")
        return {
            place.name: PlaceView(
                place.name,
                dict(place.tags),
                place.acquired or None,
                place.reservation if place.HasField("reservation") else None,
            )
            for place in response.places
        }

    def reservations(self) -> list[ReservationView]:
        response = self._call("GetReservations", "GetReservationsRequest")
        return [
            ReservationView(r.token, r.owner, r.state, r.allocations.get("main") or None) for r in response.reservations
        ]

    def _call(self, method: str, request: str) -> Any:
        import grpc
        from labgrid.remote.generated import labgrid_coordinator_pb2, labgrid_coordinator_pb2_grpc

        with grpc.insecure_channel(self.address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            stub = labgrid_coordinator_pb2_grpc.CoordinatorStub(channel)
            return getattr(stub, method)(getattr(labgrid_coordinator_pb2, request)(), timeout=10)

    def log(self, name: str = "coordinator.log") -> str:
        path = self.workdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """End every process this lab started (its own pids), the exporters first."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.processes.clear()


def _yaml(groups: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The exporter's YAML for plain values (no YAML library needed)."""
    lines = []
    for group, resources in groups.items():
        lines.append(f"{group}:")
        for cls, params in resources.items():
            lines.append(f"  {cls}:")
            for key, value in params.items():
                lines.append(f"    {key}: {value!r}" if isinstance(value, str) else f"    {key}: {value}")
    return "\n".join(lines) + "\n"
