"""A test's place, from reservation to release, through one coordinator (:class:`PlaceBroker`).

For each test: a reservation with the tags (or ``name=PLACE``) is created and written down on this machine
(:mod:`._records`); it is polled until the coordinator allocates a place to its token, with a progress line naming
who holds the matching places while it waits; exactly that place is acquired (every xdist worker of this machine
is the same owner, ``host/user``, to the coordinator, so a worker must never acquire a place allocated to another
worker's token); its ``NetworkService`` becomes the test's SSH endpoint. After the test the place is released and
the reservation cancelled: a released place whose reservation is left returns to "allocated" and stays blocked
until the reservation expires (about a minute).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Optional

from .._errors import (
    LabgridError,
    NoMatchingPlace,
    PlaceAcquiredElsewhere,
    PlaceWithoutNetworkService,
    ReservationTimeout,
    hide_for_ktrace_errors,
)
from ._client import CoordinatorClient, PlaceState, ResourceState
from ._records import HoldingRecord, HoldingRecords
from ._request import LabgridRequest

if TYPE_CHECKING:
    from .._targets import TargetSpec

__all__ = ["Holding", "PlaceBroker", "SshEndpoint", "network_service"]

__tracebackhide__ = hide_for_ktrace_errors

NOTE_AFTER_S = 2.0  # a place allocated this fast needs no progress line
NOTE_EVERY_S = 60.0  # while the holders stay the same
_POLL_FIRST_S = 0.1
_POLL_MAX_S = 0.25  # a place handed over is seen within this (the coordinator expires an unpolled one after 60 s)


@dataclass(frozen=True)
class SshEndpoint:
    """How a place is reached over SSH, from its ``NetworkService``."""

    address: str
    port: int
    username: str
    password: Optional[str] = field(default=None, repr=False)

    @property
    def ssh_target(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.username}@{host}:{self.port}" if self.username else f"{host}:{self.port}"


def network_service(place: PlaceState, resources: list[ResourceState], *, coordinator: str = "") -> SshEndpoint:
    """The SSH endpoint of an acquired place: its first ``NetworkService`` (by exporter, group and name)."""
    held = [resource for resource in resources if resource.path in set(place.acquired_resources)]
    services = sorted((r for r in held if r.path[2] == "NetworkService"), key=lambda r: r.path)
    if not services:
        what = ", ".join("/".join(path) for path in place.acquired_resources)
        raise PlaceWithoutNetworkService(
            f"labgrid place {place.name} has no NetworkService resource to reach it over SSH (its resources: "
            f"{what or 'none: is its exporter running?'}); export one in its group: NetworkService: {{address, "
            "port, username}}",
            coordinator=coordinator,
            place=place.name,
            resources=tuple("/".join(path) for path in place.acquired_resources),
        )
    params = services[0].params
    return SshEndpoint(
        address=str(params.get("address", "")),
        port=int(params.get("port") or 22),
        username=str(params.get("username") or ""),
        password=params.get("password") or None,
    )


def _matches(place: PlaceState, filters: dict[str, str]) -> bool:
    tags = {**place.tags, "name": place.name}  # the coordinator matches the name as a tag too
    return all(tags.get(key) == value for key, value in filters.items())


def _describe_tags(place: PlaceState) -> str:
    tags = ", ".join(f"{key}={value}" for key, value in sorted(place.tags.items()))
    return f"{place.name} ({tags or 'no tags'})"


class Holding:
    """A place this process holds for one test, until :meth:`release`."""

    def __init__(self, broker: PlaceBroker, record: HoldingRecord, place: str, endpoint: SshEndpoint) -> None:
        self.broker = broker
        self.record = record
        self.place = place
        self.endpoint = endpoint
        self.released = False

    @property
    def token(self) -> str:
        return self.record.token

    def target(self, spec: TargetSpec) -> TargetSpec:
        """``spec`` pointed at this place."""
        return replace(
            spec, host=self.endpoint.ssh_target, labgrid_place=self.place, ssh_password=self.endpoint.password
        )

    def release(self) -> None:
        """Release the place and cancel the reservation; never raises (a failure is reported through the
        broker's ``warn``, and tried again when the broker closes)."""
        self.broker.release(self)


class PlaceBroker:
    """The places of one coordinator for this process. ``progress(text)`` shows a line to the person waiting,
    ``warn(text)`` reports what they should know (a place released for a killed run, a release that failed)."""

    def __init__(
        self,
        client: CoordinatorClient,
        records: HoldingRecords,
        *,
        progress: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> None:
        self.client = client
        self.records = records
        self.progress = progress
        self.warn = warn
        self.held: list[Holding] = []
        self.pending: Optional[HoldingRecord] = None  # the reservation being waited for
        self.timed_out: dict[LabgridRequest, ReservationTimeout] = {}

    @property
    def coordinator(self) -> str:
        return self.client.address

    # --- a test's place -----------------------------------------------------------------------------------------

    def hold(self, request: LabgridRequest, who: str) -> Holding:
        """A place for ``who`` (the test's node id, named in the progress line): reserved, allocated, acquired."""
        earlier = self.timed_out.get(request)
        if earlier is not None:
            raise ReservationTimeout(
                f"{earlier} (an earlier test of this run waited already: the rest fail at once)",
                coordinator=earlier.coordinator,
                wanted=earlier.wanted,
                timeout=earlier.timeout,
                holders=earlier.holders,
            )
        self.client.reconnect_if_gone()
        record = self.reserve(request)
        try:
            record = self.wait(request, record, who)
        except ReservationTimeout as exc:
            self.timed_out[request] = exc
            raise
        except BaseException:  # Ctrl-C while waiting: the reservation would hold up the queue for a minute
            self._abandon(self.pending or record)
            raise
        finally:
            self.pending = None
        return self.acquire(record)

    def reserve(self, request: LabgridRequest) -> HoldingRecord:
        """A reservation for a place the coordinator has (else :class:`NoMatchingPlace`), written down here."""
        self._check_matching(request)
        reservation = self.client.create_reservation(request.filters)
        record = HoldingRecord.mine(self.coordinator, reservation.token, reservation.owner or self.client.owner)
        self.records.write(record)
        return record

    def wait(self, request: LabgridRequest, record: HoldingRecord, who: str) -> HoldingRecord:
        """The record once a place is allocated to its reservation (polled, which keeps it from expiring)."""
        started = time.monotonic()
        deadline = started + request.timeout
        interval, noted, noted_at = _POLL_FIRST_S, "", 0.0
        while True:
            self.pending = record
            state = self.client.poll_reservation(record.token)
            if state is None or state.state in ("expired", "invalid"):
                # the coordinator dropped it (not polled in time, or its place was deleted): ask again
                self._abandon(record)
                self._check_matching(request)
                record = self.reserve(request)
                continue
            if state.place is not None:
                return self.records.with_place(record, state.place)
            now = time.monotonic()
            if now >= deadline:
                holders = self._holders(request, record.token)
                self._abandon(record)
                raise ReservationTimeout(
                    f"no labgrid place with {request.wanted} at {self.coordinator} was free within "
                    f"{request.timeout:g} s (--ktrace-labgrid-timeout); " + _holders_text(holders),
                    coordinator=self.coordinator,
                    wanted=request.wanted,
                    timeout=request.timeout,
                    holders=holders,
                )
            if now - started >= NOTE_AFTER_S:
                text = _holders_text(self._holders(request, record.token))
                if text != noted or now - noted_at >= NOTE_EVERY_S:
                    self.progress(
                        f"pytest-ktrace: {who}: waiting for a labgrid place with {request.wanted} at "
                        f"{self.coordinator} ({now - started:.0f} of {request.timeout:g} s): {text}"
                    )
                    noted, noted_at = text, now
            time.sleep(min(interval, max(deadline - now, 0.0)))
            interval = min(interval * 1.5, _POLL_MAX_S)

    def acquire(self, record: HoldingRecord) -> Holding:
        """Acquire the place allocated to ``record``'s reservation, and nothing else; its SSH endpoint."""
        place = record.place
        assert place is not None
        try:
            self.client.acquire_place(place)
        except LabgridError as exc:
            holder = self._holder_of(place)
            self._abandon(record)
            if holder is None:
                raise
            raise PlaceAcquiredElsewhere(
                f"labgrid place {place}, allocated to this test's reservation {record.token}, was acquired by "
                f"{holder} before the test could acquire it ({exc}). A client of the same owner ({record.owner}) "
                "that acquires a place by name takes it from under a reservation: acquire only the place allocated "
                "to your own token (labgrid-client reserve, then acquire with -p +TOKEN)",
                coordinator=self.coordinator,
                place=place,
                holder=holder,
            ) from None
        holding = Holding(self, record, place, SshEndpoint("", 0, ""))
        try:
            state = self.client.places().get(place) or PlaceState(place)
            holding.endpoint = network_service(state, self.client.resources(), coordinator=self.coordinator)
        except BaseException:
            self._release_quietly(holding)
            raise
        self.held.append(holding)
        return holding

    def release(self, holding: Holding) -> None:
        if holding.released:
            return
        problem = self._release_quietly(holding)
        if problem:
            self.warn(
                f"could not release labgrid place {holding.place} at {self.coordinator} ({problem}); trying again "
                "at the end of the run, else the next run on this machine releases it"
            )

    def _release_quietly(self, holding: Holding) -> str:
        """Release and cancel; what failed, or ''. The record goes once both are done."""
        problems = []
        try:
            self.client.release_place(holding.place, holder=holding.record.owner)
        except LabgridError as exc:
            problems.append(str(exc))
        try:
            self.client.cancel_reservation(holding.token)
        except LabgridError as exc:
            problems.append(str(exc))
        if problems:
            return "; ".join(problems)
        self.records.remove(holding.record)
        holding.released = True
        if holding in self.held:
            self.held.remove(holding)
        return ""

    # --- what is known about the places -------------------------------------------------------------------------

    def _check_matching(self, request: LabgridRequest) -> None:
        places = self.client.places()
        if any(_matches(place, request.filters) for place in places.values()):
            return
        existing = ", ".join(_describe_tags(place) for _, place in sorted(places.items()))
        raise NoMatchingPlace(
            f"no labgrid place at {self.coordinator} has {request.wanted}; "
            + (f"the places there: {existing}" if existing else "the coordinator has no places"),
            coordinator=self.coordinator,
            wanted=request.wanted,
            places={name: ",".join(f"{k}={v}" for k, v in sorted(p.tags.items())) for name, p in places.items()},
        )

    def _holders(self, request: LabgridRequest, token: str) -> dict[str, str]:
        """Each matching place and who holds it: ``acquired by host/user``, ``reserved by host/user``, ``free``."""
        owners = {reservation.token: reservation.owner for reservation in self.client.reservations()}
        holders: dict[str, str] = {}
        for name, place in sorted(self.client.places().items()):
            if not _matches(place, request.filters):
                continue
            if place.acquired:
                holders[name] = f"acquired by {place.acquired}"
            elif place.reservation == token:
                holders[name] = "allocated to this test"
            elif place.reservation:
                holders[name] = f"reserved by {owners.get(place.reservation, 'another client')}"
            else:
                holders[name] = "free"
        return holders

    def _holder_of(self, place: str) -> Optional[str]:
        try:
            state = self.client.places().get(place)
        except LabgridError:
            return None
        return state.acquired if state is not None else None

    def _abandon(self, record: HoldingRecord) -> None:
        """Cancel a reservation whose place this process does not hold, and forget it."""
        try:
            self.client.cancel_reservation(record.token)
        except LabgridError:
            return  # the record stays: the next run on this machine cancels it
        self.records.remove(record)

    # --- runs that were killed ----------------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Release the places that dead processes of this machine left acquired, and cancel their reservations;
        what was done, one line each."""
        done: list[str] = []
        with self.records.locked():
            dead = self.records.dead(self.coordinator)
            if not dead:
                return done
            places = self.client.places()
            for record in dead:
                place = places.get(record.place) if record.place else None
                if place is not None and place.acquired == record.owner and place.reservation == record.token:
                    self.client.release_place(place.name, holder=record.owner)
                    done.append(
                        f"released labgrid place {place.name} at {self.coordinator}, left acquired by a run that "
                        f"ended without releasing it (pid {record.pid}, reservation {record.token})"
                    )
                if self.client.cancel_reservation(record.token) and place is None:
                    done.append(f"cancelled reservation {record.token} of an ended run (pid {record.pid})")
                self.records.remove(record)
        return done

    def close(self) -> None:
        """End of the run: release what tests still hold (interrupted runs), then end the session."""
        for holding in list(self.held):
            problem = self._release_quietly(holding)
            if problem:
                self.warn(f"could not release labgrid place {holding.place} at {self.coordinator}: {problem}")
        self.client.close()


def _holders_text(holders: dict[str, str]) -> str:
    return "; ".join(f"{name} {what}" for name, what in holders.items()) or "no matching place now"
