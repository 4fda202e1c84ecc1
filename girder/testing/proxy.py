"""`FaultProxy`: a TCP proxy in front of Redis that injects faults, for testing what a client
does when a reply is lost, a connection drops, the server is slow or gone.

It listens on a free 127.0.0.1 port, forwards each client connection to the server on one of
its own, and runs its own event loop in a daemon thread, so synchronous tests, async tests and
clients in other processes can all use it. It cuts both directions into whole RESP messages
(hiredis parses them), so a fault hits a whole command or a whole reply; it pairs each reply
with the oldest command unanswered, which holds for every command but pub/sub, MONITOR and
CLIENT REPLY OFF|SKIP. Controls take effect before they return and may be called from any
thread.

    with FaultProxy("127.0.0.1", server.port) as proxy:
        client = RedisClient(parse_url(proxy.url))
        proxy.drop_next_reply()  # the next command runs, and its reply never comes back

Only the standard library and hiredis are used.
"""

from __future__ import annotations

import asyncio
import enum
import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import TypeVar

import hiredis

from girder.testing.started import Started

_T = TypeVar("_T")


class _Fault(enum.Enum):
    CUT = "cut the connection before forwarding the command"
    DROP = "forward the command, swallow its reply and cut the connection"


_Fate = _Fault | float
"""What happens to a command: a fault, or the seconds its reply is held on top of `delay`."""

_INCOMPLETE = object()


class _Framer:
    """Cuts a RESP byte stream into whole messages. hiredis parses; a message can only end at a
    CRLF, so feeding hiredis up to one CRLF at a time shows exactly where each message ends."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._buffer = bytearray()
        """The unfinished message's bytes (and any after them)."""
        self._fed = 0
        """How many of them hiredis has seen: always up to the end of a CRLF."""

    def feed(self, data: bytes) -> list[tuple[bytes, str]]:
        """The messages `data` completes, each with its command's name (upper case; "" when
        the message is no command); `hiredis.ProtocolError` if the stream is no RESP."""
        buffer = self._buffer
        buffer += data
        messages = []
        while (crlf := buffer.find(b"\r\n", self._fed)) != -1:
            end = crlf + 2
            self._reader.feed(bytes(buffer[self._fed : end]))
            message = self._reader.gets()
            if message is _INCOMPLETE:
                self._fed = end
            else:
                messages.append((bytes(buffer[:end]), _command_name(message)))
                del buffer[:end]
                self._fed = 0
        return messages


def _command_name(message: object) -> str:
    """The name of the command `message` (parsed RESP) is, in upper case; "" if none."""
    if isinstance(message, list) and message and isinstance(message[0], bytes):
        return message[0].decode(errors="replace").upper()
    return ""


class _Chaos:
    """Seeded random faults: the same sequence of commands meets the same faults."""

    def __init__(
        self, seed: int, p_drop: float, p_cut: float, p_delay: float, max_delay: float
    ) -> None:
        if min(p_drop, p_cut, p_delay, max_delay) < 0 or p_drop + p_cut + p_delay > 1:
            raise ValueError("probabilities must be >= 0 and add up to at most 1")
        self._random = random.Random(seed)
        self._p_drop = p_drop
        self._p_cut = p_cut
        self._p_delay = p_delay
        self._max_delay = max_delay

    def fate(self) -> _Fate:
        # Two draws for every command, whatever its fate, so that a seed replays exactly.
        draw, size = self._random.random(), self._random.random()
        if draw < self._p_cut:
            return _Fault.CUT
        if draw < self._p_cut + self._p_drop:
            return _Fault.DROP
        if draw < self._p_cut + self._p_drop + self._p_delay:
            return size * self._max_delay
        return 0.0


class _Hub:
    """The proxy's state, touched only on its event loop: faults to come, counters, and what is
    open (so that stopping can wait until everything is closed)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.commands = 0
        self.named: Counter[str] = Counter()
        self.replies_dropped = 0
        self.connections_cut = 0
        self.drops = 0
        self.cut_next = False
        self.delay = 0.0
        self.refusing = False
        self.stopping = False
        self.chaos: _Chaos | None = None
        self.links: set[_Link] = set()
        self.transports: set[asyncio.Transport] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def fate(self, name: str) -> _Fate:
        """Count a command from a client, named `name`, and say what happens to it."""
        self.commands += 1
        self.named[name] += 1
        if self.cut_next:
            self.cut_next = False
            return _Fault.CUT
        if self.drops:
            self.drops -= 1
            return _Fault.DROP
        return 0.0 if self.chaos is None else self.chaos.fate()

    def drop_next_reply(self, count: int) -> None:
        self.drops += count

    def cut_before_next_command(self) -> None:
        self.cut_next = True

    def set_delay(self, seconds: float) -> None:
        self.delay = seconds

    def set_chaos(self, chaos: _Chaos | None) -> None:
        self.chaos = chaos

    def refuse(self, refusing: bool) -> None:
        self.refusing = refusing
        if refusing:
            self.cut_all()

    def cut_all(self) -> None:
        for link in list(self.links):
            link.cut()

    async def shut(self, server: asyncio.Server) -> None:
        """Close the listener and everything, and wait until every transport has finished
        closing."""
        self.stopping = True
        server.close()
        while self.links or self.tasks or self.transports:
            for link in list(self.links):
                link.close(abort=True)
            for transport in list(self.transports):
                transport.abort()  # one accepted as the proxy stopped
            await asyncio.sleep(0)  # their connection_lost runs next
        await server.wait_closed()


class _Link(asyncio.Protocol):
    """A client's connection through the proxy, and the proxy's connection to the server for
    it; faults are applied to whole messages on the way."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self._loop = asyncio.get_running_loop()
        self._client: asyncio.Transport | None = None
        self._server: asyncio.Transport | None = None
        self._commands = _Framer()
        self._replies = _Framer()
        self._fates: deque[_Fate] = deque()
        """The fate of each command forwarded and not answered yet, oldest first."""
        self._held: deque[tuple[float, bytes]] = deque()
        """Replies not passed on yet, in order, with when each is due."""
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        hub = self._hub
        hub.transports.add(transport)
        self._client = transport
        hub.links.add(self)
        if hub.refusing or hub.stopping:
            self.cut()
            return
        transport.pause_reading()  # until the server's connection is open
        self._connecting = self._loop.create_task(self._connect())
        hub.tasks.add(self._connecting)
        self._connecting.add_done_callback(hub.tasks.discard)

    async def _connect(self) -> None:
        hub = self._hub
        try:
            await self._loop.create_connection(
                lambda: _Upstream(self), hub.target_host, hub.target_port
            )
        except OSError:
            self.close()

    def server_made(self, transport: asyncio.Transport) -> None:
        self._hub.transports.add(transport)
        self._server = transport
        if self.closed:
            transport.abort()
        else:
            assert self._client is not None
            self._client.resume_reading()

    def data_received(self, data: bytes) -> None:
        """Commands from the client: forward each whole one, unless it is to be cut."""
        try:
            commands = self._commands.feed(data)
        except hiredis.ProtocolError:
            self.close(abort=True)
            return
        forward = []
        fault = False
        for command, name in commands:
            fate = self._hub.fate(name)
            if fate is _Fault.CUT:
                fault = True
                break
            forward.append(command)
            self._fates.append(fate)
        assert self._server is not None
        self._server.write(b"".join(forward))
        if fault:
            self.cut()

    def reply_received(self, data: bytes) -> None:
        """Replies from the server: pass each on when due, unless it is to be dropped."""
        try:
            replies = self._replies.feed(data)
        except hiredis.ProtocolError:
            self.close(abort=True)
            return
        for reply, _ in replies:
            fate = self._fates.popleft() if self._fates else 0.0
            if fate is _Fault.DROP:
                self._hub.replies_dropped += 1
                self.cut()
                return
            assert isinstance(fate, float)
            self._held.append((self._loop.time() + self._hub.delay + fate, reply))
        self._pass_on()

    def _pass_on(self) -> None:
        """Write the held replies that are due, in order; wake up again for the next one."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held = self._held
        now = self._loop.time()
        due = []
        while held and held[0][0] <= now:
            due.append(held.popleft()[1])
        if due:
            assert self._client is not None
            self._client.write(b"".join(due))
        if held:
            self._timer = self._loop.call_at(held[0][0], self._pass_on)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._client is not None
        self._hub.transports.discard(self._client)
        self.close()

    def server_lost(self, transport: asyncio.Transport) -> None:
        self._hub.transports.discard(transport)
        self.close()

    def cut(self) -> None:
        """Close both sides at once, as a fault."""
        if not self.closed:
            self._hub.connections_cut += 1
        self.close(abort=True)

    def close(self, *, abort: bool = False) -> None:
        """Close both sides: at once if `abort`, else after what is written (the other side
        closed)."""
        if self.closed:
            return
        self.closed = True
        self._hub.links.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        for transport in (self._client, self._server):
            if transport is not None:
                if abort:
                    transport.abort()
                else:
                    transport.close()


class _Upstream(asyncio.Protocol):
    """The proxy's connection to the server, on behalf of one link."""

    def __init__(self, link: _Link) -> None:
        self._link = link
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._link.server_made(transport)

    def data_received(self, data: bytes) -> None:
        self._link.reply_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self._transport is not None
        self._link.server_lost(self._transport)


class FaultProxy(Started):
    """A proxy to the Redis server at `target_host`:`target_port` that injects faults on
    command; `start` it (or use it as a context), point clients at `url`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._hub = _Hub(target_host, target_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (on 127.0.0.1)."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """`redis://` URL of database 0 through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def commands(self) -> int:
        """Whole commands received from clients (forwarded or cut)."""
        return self._hub.commands

    def commands_named(self, name: str) -> int:
        """Whole commands received named `name` (any case). Unlike `commands`, a count that
        a stray client cannot swell: another test's process that keeps dialing a port this
        proxy now holds sends PINGs and INFOs, not the test's own commands."""
        return self._hub.named[name.upper()]

    @property
    def replies_dropped(self) -> int:
        """Replies swallowed (by `drop_next_reply` or chaos)."""
        return self._hub.replies_dropped

    @property
    def connections_cut(self) -> int:
        """Client connections cut or refused as a fault (not those a peer closed)."""
        return self._hub.connections_cut

    def start(self) -> None:
        """Listen on a free port, with the proxy's loop running in a daemon thread."""
        if self._loop is not None:
            raise RuntimeError("the proxy is already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
        thread.start()
        hub = self._hub
        listening = loop.create_server(lambda: _Link(hub), "127.0.0.1", 0)
        try:
            self._server = asyncio.run_coroutine_threadsafe(listening, loop).result()
        except BaseException:
            _end(loop, thread)
            raise
        self._loop, self._thread = loop, thread
        self._port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close every connection and the listener, and end the thread."""
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None or server is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._hub.shut(server), loop).result()
        finally:
            _end(loop, thread)
            self._loop = self._thread = self._server = None

    def drop_next_reply(self, count: int = 1) -> None:
        """Let the next `count` commands reach the server and run, swallow each one's reply,
        and cut its connection: a reply lost after the command ran."""
        if count < 1:
            raise ValueError("count must be at least 1")
        self._call(lambda: self._hub.drop_next_reply(count))

    def cut_before_next_command(self) -> None:
        """Cut the next connection that sends a command, before forwarding it: the command
        never runs."""
        self._call(self._hub.cut_before_next_command)

    def delay(self, seconds: float) -> None:
        """Hold every reply from now on `seconds` before passing it on (0 to stop)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._call(lambda: self._hub.set_delay(seconds))

    def cut_all(self) -> None:
        """Close every open connection now, both sides."""
        self._call(self._hub.cut_all)

    def refuse(self, refusing: bool) -> None:
        """While `refusing`, close new connections at once and cut the open ones: an outage."""
        self._call(lambda: self._hub.refuse(refusing))

    def chaos(
        self,
        seed: int,
        *,
        p_drop: float = 0.0,
        p_cut: float = 0.0,
        p_delay: float = 0.0,
        max_delay: float = 0.1,
    ) -> None:
        """From now on, each command meets a random fault: with probability `p_cut` its
        connection is cut before it is forwarded, `p_drop` its reply is dropped (as with
        `drop_next_reply`), `p_delay` its reply is held up to `max_delay` seconds more. The
        same seed and the same sequence of commands give the same faults."""
        chaos = _Chaos(seed, p_drop, p_cut, p_delay, max_delay)
        self._call(lambda: self._hub.set_chaos(chaos))

    def calm(self) -> None:
        """No more random faults."""
        self._call(lambda: self._hub.set_chaos(None))

    def _call(self, action: Callable[[], _T]) -> _T:
        """Run `action` on the proxy's loop and wait for it, so that a control has taken effect
        when it returns (no loop yet: run it here)."""
        loop = self._loop
        if loop is None or threading.current_thread() is self._thread:
            return action()

        async def act() -> _T:
            return action()

        return asyncio.run_coroutine_threadsafe(act(), loop).result()


def _end(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    """Stop the loop running in `thread`, wait for the thread, close the loop."""
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
