"""A small asyncio Redis client: RESP2 over a socket, replies parsed by hiredis.

`RedisBackend` sends little else than EVALSHA and a few pipelines, on its hot paths thousands of
times a second, so the client's own cost per command matters: this one writes a packed command
and resolves a future when hiredis has parsed the reply, about half the CPU of a general-purpose
client per command. Concurrent commands share one connection and are pipelined on it (replies
come back in order); blocking commands (BLPOP, BLMOVE) each take a connection of their own, which
is closed if the wait is cancelled.

Failures: a command is sent again (on a new connection, a few times) only when it certainly did
not reach the server (`NotSent`); once written, it never is, since a script such as `claim` must
not run twice, and the caller gets `ReplyLost`, meaning it may or may not have run. A reply that
does not come in time aborts its connection; TCP keepalive notices a peer that vanished.

URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS, verified against the
system's CAs unless `?ssl_cert_reqs=none`; `ssl_ca_certs=<file>` trusts that CA file instead;
`ssl_certfile=<file>` and `ssl_keyfile=<file>` present a client certificate) and
`unix://[[user]:password@]/path/to/socket[?db=N]`; `password`, `username` and `db` may also come
from the query. A server whose certificate cannot be verified is a `NotSent` that says so.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Command = Sequence[str | bytes | int | float]

_SCHEMES = ("redis", "rediss", "unix")

_KEEPALIVE = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
"""TCP keepalive: probe after 10 s of silence, every 5 s, and drop the connection after 3 missed
probes, so a dead peer is noticed in about 25 s (where the platform has these options)."""

_Waiter = tuple[asyncio.Future[list[Any]], int, list[Any], float | None]
"""A command batch in flight: its future, how many replies it has, those come so far, and when
they are due (`loop.time()`; None: no limit)."""


class RespError(Exception):
    """Base of what this client raises."""


class ReplyError(RespError):
    """An error reply from the server (for example `NOSCRIPT ...` or `WRONGTYPE ...`)."""


class ConnectionLost(RespError):
    """The connection failed: a `NotSent` or a `ReplyLost`."""


class NotSent(ConnectionLost):
    """The command certainly did not reach the server (no connection, or it was known broken
    before the write): safe to send again."""


class ReplyLost(ConnectionLost):
    """The command was written and its reply did not arrive: the server may or may not have run
    it, so it is not sent again (a script such as `claim` must not run twice)."""


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where and how to connect, parsed from a URL."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str | None = None
    """A unix socket (then host and port are unused)."""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None


def parse_url(url: str) -> ServerAddress:
    """The address a Redis URL names; `ValueError` saying what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"the scheme must be one of {', '.join(_SCHEMES)}, not {parts.scheme!r}")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    username = unquote(parts.username) if parts.username else query.get("username")
    password = unquote(parts.password) if parts.password is not None else query.get("password")
    db_text = query.get("db", "0")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path")
        return ServerAddress(
            path=unquote(parts.path), db=_db(db_text), username=username, password=password
        )
    path = parts.path.strip("/")
    if path:
        db_text = path
    tls = tls_context(query) if parts.scheme == "rediss" else None
    return ServerAddress(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,  # urlsplit raises ValueError for a port that is no number
        db=_db(db_text),
        username=username,
        password=password,
        tls=tls,
    )


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """The TLS context a URL's query asks for: `ssl_ca_certs=<file>` (a CA file to trust
    instead of the system's CAs), `ssl_cert_reqs=required|none` (none: no verification of
    the certificate nor of the host name), and `ssl_certfile=<file>` with `ssl_keyfile=<file>`
    (the client certificate to present to a server that asks for one, `--tls-auth-clients`;
    the key may be in the certificate's file); `ValueError` saying what is wrong."""
    cert_reqs = query.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in ("required", "none"):
        raise ValueError(f"ssl_cert_reqs must be 'required' or 'none', not {cert_reqs!r}")
    cafile = query.get("ssl_ca_certs")
    try:
        context = ssl.create_default_context(cafile=cafile)
    except OSError as exc:  # ssl.SSLError is one: a file that holds no certificate
        raise ValueError(f"cannot load ssl_ca_certs {cafile!r}: {exc}") from exc
    certfile, keyfile = query.get("ssl_certfile"), query.get("ssl_keyfile")
    if keyfile and not certfile:
        raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile)
        except OSError as exc:
            raise ValueError(f"cannot load ssl_certfile {certfile!r}: {exc}") from exc
    if cert_reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Protocol(asyncio.Protocol):
    """Feeds replies to hiredis and hands them, in order, to the futures waiting for them.

    Each command in flight carries its deadline; one watchdog timer per connection, re-armed
    for the oldest command when it fires, aborts the connection if that reply is overdue (a
    timer per command would cost more than the rest of the hot path)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._waiting: deque[_Waiter] = deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost: ReplyLost | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := self._reader.gets()) is not False:
                if not waiting:  # a reply nobody asked for: the stream cannot be trusted
                    self._fail(ReplyLost("unexpected reply from the server"))
                    return
                future, count, replies, _ = waiting[0]
                replies.append(reply)
                if len(replies) == count:
                    waiting.popleft()
                    if not future.done():  # its caller may have been cancelled
                        future.set_result(replies)
        except hiredis.ProtocolError as exc:
            self._fail(ReplyLost(f"garbled reply from the server: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc else ""
        self._fail(ReplyLost(f"connection closed{reason}"))

    def _fail(self, error: ReplyLost) -> None:
        if self.lost is None:
            self.lost = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future, _, _, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def send(self, packed: bytes, count: int, timeout: float | None) -> asyncio.Future[list[Any]]:
        """Write `count` packed commands; the future gets their `count` replies, or `ReplyLost`
        if they have not all come within `timeout` seconds (None: no limit)."""
        if self.lost is not None:
            raise NotSent(f"the connection was already broken ({self.lost})")
        assert self._transport is not None
        if self._transport.is_closing():  # it broke, and connection_lost has not run yet
            raise NotSent("the connection is closing")
        loop = self._loop
        future = loop.create_future()
        now = loop.time()
        deadline = None if timeout is None else now + timeout
        self._waiting.append((future, count, [], deadline))
        self._transport.write(packed)
        if deadline is not None and self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._watch)
        return future

    def broken(self) -> bool:
        """Whether the connection is known to be broken. One the server closed while it sat
        idle may not be known yet: a command sent on it fails with `ReplyLost`, and the
        backend sends it again (every operation is safe to repeat)."""
        return self.lost is not None

    def _watch(self) -> None:
        """Abort the connection if the oldest reply is overdue; otherwise wait for its deadline."""
        self._watchdog = None
        if not self._waiting:
            return
        deadline = self._waiting[0][3]
        if deadline is None:
            return
        if deadline > self._loop.time():
            self._watchdog = self._loop.call_at(deadline, self._watch)
        else:
            self._fail(ReplyLost("no reply in time; the connection was aborted"))

    def close(self) -> None:
        """Drop the connection now: abort, not close, since a TLS transport's close waits for
        the server's close_notify (up to 30 s), keeping its socket open past the end of the
        event loop; nothing still buffered matters (its commands' callers are gone)."""
        if self._transport is not None:
            self._transport.abort()


class Connection:
    """One connection; commands from several tasks are pipelined on it in order."""

    def __init__(self, protocol: _Protocol, timeout: float | None) -> None:
        self._protocol = protocol
        self.timeout = timeout
        """Seconds the oldest reply may take before the connection is aborted (None: no limit)."""

    @classmethod
    async def open(
        cls, address: ServerAddress, *, timeout: float | None = None, connect_timeout: float = 5.0
    ) -> Connection:
        """A connection that has answered: AUTH and SELECT as the URL says, then PING, so that a
        proxy or balancer that accepts and then drops the connection fails the opening (a
        `NotSent`) rather than a caller's command (a `ReplyLost`). All of it within
        `connect_timeout` seconds; any failure is a `NotSent`, but an error reply (such as a
        wrong password) is raised as it is."""
        try:
            async with asyncio.timeout(connect_timeout):
                protocol = await _handshake(address)
        except TimeoutError as exc:  # before OSError: it is one
            raise NotSent(f"cannot connect within {connect_timeout} s") from exc
        except ssl.SSLCertVerificationError as exc:  # an OSError too
            raise NotSent(
                f"the TLS certificate of {address.host}:{address.port} could not be verified "
                f"({exc.verify_message}); trust its CA with ?ssl_ca_certs=<file>"
            ) from exc
        except OSError as exc:
            raise NotSent(f"cannot connect: {exc}") from exc
        except ReplyLost as exc:
            hint = (
                " (if the server speaks only TLS, use rediss://)"
                if address.tls is None
                else " (if the server asks for a client certificate: ssl_certfile=, ssl_keyfile=)"
            )
            raise NotSent(f"the connection broke while opening: {exc}{hint}") from exc
        return cls(protocol, timeout)

    @property
    def closed(self) -> bool:
        """Whether the connection is known to be broken (a command sent on it would be lost)."""
        return self._protocol.broken()

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Send the commands at once and return their replies, an error reply as a
        `ReplyError` in its place. No commands: no replies, at once (nothing is written, so no
        reply would ever come)."""
        if not commands:
            return []
        return await self._protocol.send(_pack(commands), len(commands), self.timeout)

    def close(self) -> None:
        self._protocol.close()


async def _handshake(address: ServerAddress) -> _Protocol:
    """Connect, then AUTH, SELECT and PING (closing the connection if that fails)."""
    loop = asyncio.get_running_loop()
    if address.path is not None:
        _, protocol = await loop.create_unix_connection(_Protocol, address.path)
    else:
        transport, protocol = await loop.create_connection(
            _Protocol, address.host, address.port, ssl=address.tls
        )
        _keep_alive(transport.get_extra_info("socket"))
    setup: list[Command] = []
    if address.password is not None:
        if address.username:
            setup.append(("AUTH", address.username, address.password))
        else:
            setup.append(("AUTH", address.password))
    if address.db:
        setup.append(("SELECT", address.db))
    setup.append(("PING",))
    try:  # not through `Connection.pipeline`: these are no caller's commands
        for reply in await protocol.send(_pack(setup), len(setup), None):
            if isinstance(reply, ReplyError):
                raise reply
    except BaseException:
        protocol.close()
        raise
    return protocol


class Pipelined(ABC):
    """A client that sends batches of commands (`pipeline`); `execute` is a batch of one."""

    @abstractmethod
    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one round trip; error replies are returned, not raised."""

    async def execute(self, *command: str | bytes | int | float) -> Any:
        """One command's reply; an error reply raises `ReplyError`."""
        [reply] = await self.pipeline([command])
        if isinstance(reply, ReplyError):
            raise reply
        return reply


class RedisClient(Pipelined):
    """A shared pipelined connection for ordinary commands, and one connection per blocking
    command in flight. A command that could not be written (`NotSent`) is sent on a new
    connection, up to `retries` times with a short backoff; one that was written is never sent
    again: if its reply is lost, the caller gets `ReplyLost` at once.

    A reply on the shared connection that has not come `timeout` seconds after its command was
    written aborts that connection (every command in flight on it gets `ReplyLost`; the next
    opens a new one), so a half-dead connection cannot hang its callers; opening a connection
    takes at most `connect_timeout` seconds."""

    def __init__(
        self,
        address: ServerAddress,
        *,
        retries: int = 3,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.address = address
        self._retries = retries
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._shared: Connection | None = None
        self._opening: asyncio.Future[Connection] | None = None
        self._idle: list[Connection] = []
        self._closed = False

    async def pipeline(self, commands: Sequence[Command]) -> list[Any]:
        """Several commands in one round trip, on the shared connection."""
        for attempt in range(self._retries + 1):
            try:
                connection = await self._connection()
                return await connection.pipeline(commands)
            except NotSent:
                if attempt == self._retries or self._closed:
                    raise
            await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def blocking(
        self, commands: Sequence[Command], *, timeout: float | None = None
    ) -> list[Any]:
        """Commands that may block the connection (BLPOP, BLMOVE), on a connection of their
        own; it is closed if anything goes wrong, including cancellation. Only opening the
        connection is retried: once written, the commands are not sent again.

        `timeout` is the longest the commands may legitimately block; their replies may take
        the client's `timeout` more than that before they count as lost. None sets no limit
        (the caller bounds the wait itself)."""
        connection = await self._blocking_connection()
        connection.timeout = None if timeout is None else timeout + self._timeout
        try:
            replies = await connection.pipeline(commands)
        except BaseException:
            connection.close()
            raise
        if self._closed:
            connection.close()
        else:
            self._idle.append(connection)
        return replies

    async def _blocking_connection(self) -> Connection:
        """An idle blocking connection that still works, or a new one."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
        for attempt in range(self._retries + 1):
            try:
                return await self._open(None)
            except NotSent:
                if attempt == self._retries or self._closed:
                    raise
            await asyncio.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    async def _open(self, timeout: float | None) -> Connection:
        if self._closed:
            raise NotSent("the client is closed")
        return await Connection.open(
            self.address, timeout=timeout, connect_timeout=self._connect_timeout
        )

    async def _connection(self) -> Connection:
        shared = self._shared
        if shared is not None and not shared.closed:
            return shared
        if self._opening is None:  # one task opens; the others wait for the same connection
            self._opening = asyncio.ensure_future(self._open(self._timeout))
        opening = self._opening
        try:
            self._shared = await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None
        return self._shared

    def close(self) -> None:
        self._closed = True
        if self._shared is not None:
            self._shared.close()
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def _keep_alive(sock: socket.socket) -> None:
    """Turn TCP keepalive on, so that a connection to a peer that vanished (a host down, a
    cable cut) fails instead of waiting for ever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _pack(commands: Sequence[Command]) -> bytes:
    # hiredis's stub types the command as a 1-tuple; any length is accepted.
    return b"".join(hiredis.pack_command(tuple(command)) for command in commands)  # type: ignore[arg-type]


def _backoff(attempt: int) -> float:
    """Seconds to wait before sending again after `attempt` (0 for the first) found no
    connection: 50 ms, doubling, at most half a second (as redis-py's default retry does)."""
    return min(0.5, 0.05 * 2.0**attempt)
