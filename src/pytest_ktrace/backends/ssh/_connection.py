"""The SSH connection to the target. :class:`Dialer` opens a paramiko transport to an
:class:`~._config.Endpoint` over TCP, a ``ProxyCommand``, or a ``direct-tcpip`` channel of the previous hop of its
``ProxyJump`` chain, then does the handshake, the host-key check (:mod:`._hostkeys`), authentication
(:mod:`._auth`) and keepalive. :class:`SshConnection` keeps the live transports, reconnects when they are gone,
closes them, counts the channels opened (round trips), and words the errors: each names the target host and the
cause, and a connection that dropped mid-call is a :class:`~pytest_ktrace.ConnectionLost`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import paramiko

from ..._errors import ConnectionLost, TargetError, hide_for_ktrace_errors
from ._auth import authenticate
from ._config import Endpoint, EndpointResolver, SshOptions, parse_target
from ._hostkeys import HostKeyChecker

__all__ = ["TRANSPORT_ERRORS", "Dialer", "SshConnection", "Transports", "connection_lost"]

__tracebackhide__ = hide_for_ktrace_errors  # pytest shows the test line, not our internals

_MAX_JUMPS = 8
_KEEPALIVE_S = 15
_Sock = Union[socket.socket, paramiko.Channel, paramiko.ProxyCommand]
# what paramiko raises when the connection fails under a call
TRANSPORT_ERRORS = (paramiko.SSHException, EOFError, OSError)


@dataclass
class Transports:
    """The transport to the target and those of the jump hosts it was reached through."""

    transport: paramiko.Transport
    jumps: list[paramiko.Transport] = field(default_factory=list)

    def close(self) -> None:
        for t in (self.transport, *reversed(self.jumps)):
            with contextlib.suppress(Exception):  # a transport already gone has nothing left to release
                t.close()


class Dialer:
    """Opens an authenticated transport to an endpoint, through its jump hosts."""

    def __init__(
        self, resolver: EndpointResolver, host_keys: HostKeyChecker, options: SshOptions, *, host: str
    ) -> None:
        self._resolver = resolver
        self._host_keys = host_keys
        self._options = options
        self._host = host

    def dial(self, endpoint: Endpoint) -> Transports:
        jumps: list[paramiko.Transport] = []
        try:
            transport = self._connect_to(endpoint, jumps, 0)
        except BaseException:
            for t in reversed(jumps):
                t.close()
            raise
        return Transports(transport, jumps)

    def _connect_to(self, endpoint: Endpoint, jumps: list[paramiko.Transport], depth: int) -> paramiko.Transport:
        if depth > _MAX_JUMPS:
            raise TargetError(
                f"ProxyJump chain to {self._host} is longer than {_MAX_JUMPS} hops (a loop?)",
                host=self._host,
                cause="proxy jump loop",
            )
        sock: _Sock
        if endpoint.proxy_jump:
            via = self._through_jumps(endpoint.proxy_jump, jumps, depth)
            sock = self._channel_to(via, endpoint, endpoint.proxy_jump[-1])
        elif endpoint.proxy_command:
            sock = self._proxy_command(endpoint.proxy_command)
        else:
            sock = self._tcp(endpoint)
        return self._handshake(endpoint, sock)

    def _through_jumps(self, hops: list[str], jumps: list[paramiko.Transport], depth: int) -> paramiko.Transport:
        """The transport to the last of ``hops``, each reached through the one before (the first directly)."""
        via: Optional[paramiko.Transport] = None
        for hop in hops:
            hop_user, hop_host, hop_port = parse_target(hop)
            hop_endpoint = self._resolver.resolve(hop_host, hop_user, hop_port)
            if via is None:
                via = self._connect_to(hop_endpoint, jumps, depth + 1)
            else:
                via = self._handshake(hop_endpoint, self._channel_to(via, hop_endpoint, hop))
            jumps.append(via)
        assert via is not None
        return via

    def _proxy_command(self, command: str) -> paramiko.ProxyCommand:
        try:
            return paramiko.ProxyCommand(command)
        except (OSError, paramiko.SSHException) as exc:
            raise TargetError(
                f"ProxyCommand for {self._host} failed to start: {exc}",
                host=self._host,
                cause="proxy command failed",
            ) from None

    def _tcp(self, endpoint: Endpoint) -> socket.socket:
        where = f"{endpoint.hostname}:{endpoint.port}"
        label = endpoint.alias
        timeout = self._options.connect_timeout
        try:
            sock = socket.create_connection((endpoint.hostname, endpoint.port), timeout=timeout)
            # small scripts then EOF: without this, Nagle holds the EOF back for a delayed ACK (~40 ms a call)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except socket.gaierror as exc:
            raise TargetError(
                f"cannot resolve host name {endpoint.hostname!r} of {label} (DNS failure: {exc.strerror})",
                host=self._host,
                cause="DNS failure",
            ) from None
        except ConnectionRefusedError:
            raise TargetError(
                f"connection refused by {label} at {where}: no SSH server listens on that port",
                host=self._host,
                cause="connection refused",
            ) from None
        except (socket.timeout, TimeoutError):
            raise TargetError(
                f"connecting to {label} at {where} timed out after {timeout} s",
                host=self._host,
                cause="timeout",
            ) from None
        except OSError as exc:
            raise TargetError(
                f"cannot connect to {label} at {where}: {exc.strerror or exc}",
                host=self._host,
                cause=exc.strerror or str(exc),
            ) from None

    def _channel_to(self, via: paramiko.Transport, endpoint: Endpoint, hop: str) -> paramiko.Channel:
        try:
            return via.open_channel(
                "direct-tcpip",
                (endpoint.hostname, endpoint.port),
                ("127.0.0.1", 0),
                timeout=self._options.connect_timeout,
            )
        except TRANSPORT_ERRORS as exc:
            raise TargetError(
                f"jump host {hop} could not connect to {endpoint.hostname}:{endpoint.port} for {self._host}: {exc}",
                host=self._host,
                cause="proxy jump failed",
            ) from None

    def _handshake(self, endpoint: Endpoint, sock: _Sock) -> paramiko.Transport:
        transport = paramiko.Transport(sock)
        try:
            timeout = self._options.connect_timeout
            transport.banner_timeout = timeout
            transport.handshake_timeout = timeout
            transport.auth_timeout = timeout
            known = self._host_keys.known_hosts.entries(endpoint)
            self._host_keys.prefer_known_key_types(transport, known)
            server_key = self._start_client(transport, endpoint)
            self._host_keys.check(endpoint, server_key, known)
            try:
                authenticate(
                    transport,
                    endpoint,
                    host=self._host,
                    identity=self._options.identity,
                    password=self._options.password,
                )
            except paramiko.SSHException as exc:
                raise connection_lost(self._host, f"authentication to {endpoint.alias}", str(exc)) from None
            transport.set_keepalive(_KEEPALIVE_S)
            return transport
        except BaseException:
            transport.close()
            raise

    def _start_client(self, transport: paramiko.Transport, endpoint: Endpoint) -> paramiko.PKey:
        """The key the server offers, once key exchange is done."""
        timeout = self._options.connect_timeout
        started = time.monotonic()
        try:
            # returns quietly when the timeout passes first: the key fetch below then fails
            transport.start_client(timeout=timeout)
            return transport.get_remote_server_key()
        except TRANSPORT_ERRORS as exc:
            where = f"{endpoint.alias} ({endpoint.hostname}:{endpoint.port})"
            if time.monotonic() - started >= timeout * 0.9:
                raise TargetError(
                    f"SSH handshake with {where} timed out after {timeout} s (no SSH server answering?)",
                    host=self._host,
                    cause="timeout",
                ) from None
            raise TargetError(
                f"SSH handshake with {where} failed: {exc}", host=self._host, cause="SSH handshake failed"
            ) from None


class SshConnection:
    """The backend's one connection: (re)opened on demand, shared by its batches and streams.

    ``before_use`` runs each time the connection is handed out (it applies the backend's deferred teardown, which
    itself uses the connection: it must guard against running inside itself)."""

    def __init__(
        self,
        dialer: Dialer,
        resolver: EndpointResolver,
        options: SshOptions,
        *,
        host: str,
        user: Optional[str],
        port: Optional[int],
        before_use: Callable[[], None],
    ) -> None:
        self._dialer = dialer
        self._resolver = resolver
        self._options = options
        self._host = host
        self._user = user
        self._port = port
        self._before_use = before_use
        self._transports: Optional[Transports] = None
        self._endpoint: Optional[Endpoint] = None
        self._round_trips = 0

    @property
    def endpoint(self) -> Optional[Endpoint]:
        """The target as last resolved through ssh_config (``None`` before the first connection)."""
        return self._endpoint

    @property
    def round_trips(self) -> int:
        return self._round_trips

    @property
    def local_port(self) -> Optional[int]:
        transports = self._transports
        if transports is None or not transports.transport.is_active():
            return None
        sock = transports.transport.sock
        if isinstance(sock, socket.socket):
            return int(sock.getsockname()[1])
        return None

    def transport(self) -> paramiko.Transport:
        """The live transport, (re)connecting if needed; ``before_use`` runs first."""
        transports = self._transports
        if transports is None or not transports.transport.is_active():
            self.drop()
            endpoint = self._resolver.resolve(self._host, self._user, self._port)
            self._endpoint = endpoint
            transports = self._dialer.dial(endpoint)
            self._transports = transports
        self._before_use()
        return transports.transport

    def open_session(self, transport: paramiko.Transport) -> paramiko.Channel:
        """An exec channel of ``transport``: one round trip (paramiko's errors propagate)."""
        chan = transport.open_session(timeout=self._options.connect_timeout)
        self._round_trips += 1
        return chan

    def drop(self) -> None:
        if self._transports is not None:
            self._transports.close()
            self._transports = None

    def lost(self, what: str, cause: str) -> ConnectionLost:
        return connection_lost(self._host, what, cause)


def connection_lost(host: str, what: str, cause: str) -> ConnectionLost:
    return ConnectionLost(
        f"the SSH connection to {host} dropped during {what}: {cause}; the next call reconnects "
        "(operations of this call may or may not have been applied)",
        host=host,
        cause=cause,
    )
