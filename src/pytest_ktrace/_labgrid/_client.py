"""A synchronous client of a labgrid coordinator: labgrid's own ``ClientSession`` (its stream of place and
resource updates, its gRPC stub) on an asyncio loop in a thread of its own, one per pytest process.

gRPC honours ``http_proxy``; a coordinator is reached directly, so the channel is opened with the proxy off.
Every call has a deadline: a coordinator that does not answer is a :class:`~pytest_ktrace.CoordinatorUnreachable`
naming its address and what gRPC said, never a hang. labgrid is imported when the client starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from .._errors import CoordinatorUnreachable, LabgridError, hide_for_ktrace_errors

__all__ = ["INSTALL_HINT", "CoordinatorClient", "PlaceState", "ReservationState", "ResourceState", "labgrid_missing"]

__tracebackhide__ = hide_for_ktrace_errors

INSTALL_HINT = "labgrid is not installed: pip install 'pytest-ktrace[labgrid]'"
_T = TypeVar("_T")
# labgrid's own keepalive settings (a quiet stream must survive NAT and firewalls), no proxy
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 7500),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.ping_timeout_ms", 10000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_http_proxy", 0),
    # a channel of its own connections: a new session after the coordinator restarted must not inherit the
    # back-off of the process-wide pool's failed connection, which refuses at once for seconds
    ("grpc.use_local_subchannel_pool", 1),
]


def labgrid_missing() -> Optional[str]:
    """Why the labgrid client cannot be used here (the install hint), or None."""
    import importlib.util

    try:
        found = importlib.util.find_spec("labgrid.remote.client") is not None
    except ImportError:
        found = False
    return None if found else INSTALL_HINT


@dataclass(frozen=True)
class PlaceState:
    """A place as the coordinator last told us: ``acquired`` is its holder (``host/user``), ``reservation`` the
    token of the reservation it is allocated to."""

    name: str
    tags: dict[str, str] = field(default_factory=dict)
    acquired: Optional[str] = None
    reservation: Optional[str] = None
    acquired_resources: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class ResourceState:
    """A resource an exporter publishes: ``path`` is (exporter, group, class, name)."""

    path: tuple[str, str, str, str]
    params: dict[str, Any]
    avail: bool


@dataclass(frozen=True)
class ReservationState:
    """``state`` is labgrid's name for it: waiting, allocated, acquired, expired, invalid."""

    token: str
    owner: str
    state: str
    place: Optional[str]


class CoordinatorClient:
    """One session with the coordinator at ``address`` (``host:port``). :meth:`start` connects; every other call
    needs it. ``call_timeout`` bounds each call, ``connect_timeout`` the first contact."""

    def __init__(self, address: str, *, connect_timeout: float = 10.0, call_timeout: float = 30.0) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._session: Any = None
        self._pb: Any = None  # labgrid's generated protobuf module
        self._grpc: Any = None

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect: one unary call first (its error names the cause, e.g. connection refused), then labgrid's
        session (its place and resource updates). Raises :class:`CoordinatorUnreachable`."""
        import grpc
        from labgrid.remote.generated import labgrid_coordinator_pb2

        self._grpc, self._pb = grpc, labgrid_coordinator_pb2
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"ktrace-labgrid-{self.address}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._session = self._run(self._open_session(), timeout=self.connect_timeout + self.call_timeout)
        except BaseException:
            self.close()
            raise

    async def _open_session(self) -> Any:
        from labgrid.remote.client import ClientSession
        from labgrid.remote.client import Error as ClientError
        from labgrid.remote.generated import labgrid_coordinator_pb2_grpc

        assert self._loop is not None
        session = ClientSession(self.address, self._loop)
        await session.channel.close()  # labgrid's channel would honour http_proxy: replaced before any use
        session.channel = self._grpc.aio.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        session.stub = labgrid_coordinator_pb2_grpc.CoordinatorStub(session.channel)
        try:
            await session.stub.GetReservations(self._pb.GetReservationsRequest(), timeout=self.connect_timeout)
            await asyncio.wait_for(session.start(), self.call_timeout)
        except ClientError as exc:  # the update stream failed after the first call went through
            await session.channel.close()
            cause = str(exc)
            message = f"cannot reach the labgrid coordinator at {self.address}: {cause}"
            raise CoordinatorUnreachable(message, coordinator=self.address, cause=cause) from None
        except BaseException:
            await session.channel.close()
            raise
        return session

    def reconnect_if_gone(self) -> bool:
        """A new session if the coordinator's update stream ended (it restarted, the network dropped); whether
        one was opened. Raises :class:`CoordinatorUnreachable` if the coordinator is still gone."""
        session = self._session
        if self._loop is None or (session is not None and not session.stopping.is_set()):
            return False  # not started (or closed), or alive
        self._session = None
        if session is not None:
            with contextlib.suppress(Exception):  # what is left of a dead session is not worth waiting for
                self._run(self._close_session(session), timeout=5)
        self._session = self._run(self._open_session(), timeout=self.connect_timeout + self.call_timeout)
        return True

    def close(self) -> None:
        """End the session and its thread (idempotent; never raises)."""
        loop, thread, session = self._loop, self._thread, self._session
        self._loop = self._thread = self._session = None
        if loop is None:
            return
        if session is not None:
            future = asyncio.run_coroutine_threadsafe(self._close_session(session), loop)
            try:
                future.result(timeout=5)
            except Exception:  # a session that is already gone has nothing left to end
                future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()

    @staticmethod
    async def _close_session(session: Any) -> None:
        await session.stop()
        await session.close()
        # gRPC's own tasks of the closed channel: ended here, not destroyed pending with the loop
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    @property
    def owner(self) -> str:
        """Who this process is to the coordinator: ``host/user`` (``LG_HOSTNAME``/``LG_USERNAME`` if set)."""
        session = self._live()
        return f"{session.gethostname()}/{session.getuser()}"

    # --- what the coordinator knows ----------------------------------------------------------------------------

    def places(self) -> dict[str, PlaceState]:
        return self._run(self._places())

    async def _places(self) -> dict[str, PlaceState]:
        session = await self._synced()
        return {
            name: PlaceState(
                name=name,
                tags=dict(place.tags),
                acquired=place.acquired,
                reservation=place.reservation,
                acquired_resources=tuple(tuple(path) for path in place.acquired_resources),
            )
            for name, place in session.places.items()
        }

    def resources(self) -> list[ResourceState]:
        return self._run(self._resources())

    async def _resources(self) -> list[ResourceState]:
        session = await self._synced()
        return [
            ResourceState((exporter, group_name, entry.cls, name), dict(entry.args), bool(entry.avail))
            for exporter, groups in session.resources.items()
            for group_name, group in groups.items()
            for name, entry in group.items()
            if "cls" in entry.data  # a resource its exporter withdrew has no data left
        ]

    def reservations(self) -> list[ReservationState]:
        response = self._rpc("GetReservations", self._pb.GetReservationsRequest())
        return [self._reservation(pb2) for pb2 in response.reservations]

    # --- reservations and places -------------------------------------------------------------------------------

    def create_reservation(self, filters: dict[str, str]) -> ReservationState:
        pb = self._pb
        request = pb.CreateReservationRequest(filters={"main": pb.Reservation.Filter(filter=filters)}, prio=0.0)
        return self._reservation(self._rpc("CreateReservation", request).reservation)

    def poll_reservation(self, token: str) -> Optional[ReservationState]:
        """The reservation's state (polling also keeps it from expiring); None if the coordinator has none."""
        try:
            response = self._rpc("PollReservation", self._pb.PollReservationRequest(token=token))
        except LabgridError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return self._reservation(response.reservation)

    def cancel_reservation(self, token: str) -> bool:
        """Cancel it; False if the coordinator had no such reservation (cancelled or expired already)."""
        try:
            self._rpc("CancelReservation", self._pb.CancelReservationRequest(token=token))
        except LabgridError as exc:
            if "does not exist" in str(exc):
                return False
            raise
        return True

    def acquire_place(self, name: str) -> None:
        """Acquire it as :attr:`owner`. A refusal is a :class:`LabgridError` with the coordinator's words."""
        self._rpc("AcquirePlace", self._pb.AcquirePlaceRequest(placename=name), sync=True)

    def release_place(self, name: str, *, holder: str) -> None:
        """Release it if (and only if) ``holder`` holds it: the coordinator checks, at the moment it releases."""
        self._rpc("ReleasePlace", self._pb.ReleasePlaceRequest(placename=name, fromuser=holder), sync=True)

    # --- plumbing ----------------------------------------------------------------------------------------------

    def _reservation(self, pb2: Any) -> ReservationState:
        from labgrid.remote.common import ReservationState as LabgridState

        place = pb2.allocations.get("main") or None
        return ReservationState(pb2.token, pb2.owner, LabgridState(pb2.state).name, place)

    def _rpc(self, method: str, request: Any, *, sync: bool = False) -> Any:
        return self._run(self._unary(method, request, sync))

    async def _unary(self, method: str, request: Any, sync: bool) -> Any:
        session = self._live()
        try:
            response = await getattr(session.stub, method)(request, timeout=self.call_timeout)
        except self._grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (self._grpc.StatusCode.UNAVAILABLE, self._grpc.StatusCode.DEADLINE_EXCEEDED):
                raise self._unreachable(exc) from None
            raise LabgridError(
                f"labgrid coordinator {self.address} refused {method}: {exc.details()}", coordinator=self.address
            ) from None
        if sync:  # our view of the places includes what this call changed
            await self._synced()
        return response

    async def _synced(self) -> Any:
        """The session, once every update the coordinator sent before now has arrived."""
        session = self._live()
        await asyncio.wait_for(session.sync_with_coordinator(), self.call_timeout)
        return self._live()  # a sync that failed has ended the stream

    def _live(self) -> Any:
        session = self._session
        if session is None:
            raise CoordinatorUnreachable(
                f"no session with the labgrid coordinator {self.address}", coordinator=self.address, cause="closed"
            )
        if session.stopping.is_set():
            raise CoordinatorUnreachable(
                f"the labgrid coordinator {self.address} went away (its update stream ended)",
                coordinator=self.address,
                cause="stream ended",
            )
        return session

    def _unreachable(self, exc: Any) -> CoordinatorUnreachable:
        code, details = exc.code(), exc.details() or ""
        if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
            details = f"no answer within the deadline ({details})" if details else "no answer within the deadline"
        return CoordinatorUnreachable(
            f"cannot reach the labgrid coordinator at {self.address}: {details}",
            coordinator=self.address,
            cause=details,
        )

    def _run(self, coro: Coroutine[Any, Any, _T], *, timeout: Optional[float] = None) -> _T:
        """Run ``coro`` on the session's loop and wait for it, never longer than its deadline (plus a margin)."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise CoordinatorUnreachable(
                f"no session with the labgrid coordinator {self.address}", coordinator=self.address, cause="closed"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        limit = (timeout if timeout is not None else self.call_timeout) + 5
        try:
            return future.result(timeout=limit)
        except (concurrent.futures.TimeoutError, asyncio.TimeoutError):  # one class since Python 3.11
            future.cancel()
            raise CoordinatorUnreachable(
                f"the labgrid coordinator at {self.address} did not answer within {limit:.0f} s",
                coordinator=self.address,
                cause="timeout",
            ) from None
        except Exception as exc:
            if self._grpc is not None and isinstance(exc, self._grpc.aio.AioRpcError):
                raise self._unreachable(exc) from None
            raise
