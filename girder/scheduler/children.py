"""Child processes for slow sync grid functions (`sync_offload="process"`).

A thread running Python bytecode holds the GIL, and the host's event loop waits for it each
time it wakes (see `girder.scheduler.offload`). A function run in another interpreter holds none
of this process's GIL: the loop only waits for the CPU, which the OS shares out.

A `ChildPool` keeps up to `size` children, each started on first need as a fresh interpreter
(`python -c "...serve(fd)"`: spawn semantics, nothing of this process's memory, threads or loop
is copied, and unlike multiprocessing's spawn the host's `__main__` is never imported again),
with a socket to this process. A call takes an idle child (or waits its turn), and a thread of
the pool sends it the function as girder ships it (by reference, or cloudpickle bytes) and the
arguments (cloudpickle, so that classes of `__main__` or a notebook travel too), then waits for
the value. The child times the function itself, so the wait for a child never counts as the
function's time. An exception in the child comes back as a `ChildError` that carries what the
worker reports of any exception: its message, its traceback lines and its type's name (so that
`except ZeroDivisionError:` still catches the `RequestError`).

A child that dies (killed, out of memory, `os._exit`) fails the one request it ran with kind
"crashed"; the next call starts a new child. A function with a time limit tells the host when it
starts; past the limit its child is killed, the one way to stop a sync function. A call
cancelled while its function runs (its job was cancelled, or the worker stops) kills the child
too, and waits until it has exited: nobody wants the value.
`close()` kills every child and waits for each, so a grid that stops leaves no process behind;
a child whose host dies without closing it exits when it reads the end of its socket, or within
a second if it is busy.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from socket import socketpair
from typing import Any

import cloudpickle

from girder.errors import type_name
from girder.functions import (
    FunctionRef,
    GridFunction,
    Request,
    readable_call,
    resolve_function,
)
from girder.scheduler.context import Evaluation, current_evaluation
from girder.scheduler.node import error_lines
from girder.serialization import Outcome

_SERVE = "import sys; from girder.scheduler.children import serve; serve(int(sys.argv[1]))"
"""What a child runs (`python -c`)."""

_PARENT_CHECK = 1.0
"""Seconds between a busy child's checks that its host is still alive."""

_REAP_TIMEOUT = 5.0
"""Seconds a child that closed its socket gets to exit before it is killed."""


class ChildError(Exception):
    """A request that ran (or was to run) in a child process failed: `message`, the traceback
    `lines`, the exception's type as "module:qualname" (None when none was raised there), and
    the `RequestError` kind to report."""

    def __init__(
        self, message: str, lines: list[str], exc_type: str | None, kind: str = "error"
    ) -> None:
        super().__init__(message, lines, exc_type, kind)
        self.message = message
        self.lines = lines
        self.exc_type = exc_type
        self.kind = kind

    @classmethod
    def of(cls, exc: Exception) -> ChildError:
        """What the worker reports of `exc` (as `Worker._failure` does for a local one)."""
        return cls(f"{type(exc).__name__}: {exc}", error_lines(exc), type_name(type(exc)))


@dataclass(slots=True)
class ChildCall:
    """What a child needs to run one request: the function as it travels, its arguments, the
    node, key and job `girder.current_node()` and logs see, and the function's time limit."""

    ref: FunctionRef
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    node: str
    key: str
    job: str
    limit: float | None

    def encode(self, paths: list[str] | None) -> bytes:
        """The message to a child: the arguments as bytes of their own, so that the child
        unpickles them only once it has taken `paths` (this process's `sys.path`, when the
        child's differs) and imported the function: they may be instances of its classes."""
        arguments = cloudpickle.dumps((self.args, self.kwargs), protocol=5)
        fields = (self.ref, arguments, self.node, self.key, self.job, self.limit, paths)
        return pickle.dumps(fields, protocol=5)


def _decoded(data: bytes) -> tuple[GridFunction[..., Any], ChildCall]:
    """In the child: the function and the call a message names (`ChildCall.encode`)."""
    ref, arguments, node, key, job, limit, paths = pickle.loads(data)
    if paths is not None:
        sys.path[:] = paths
    function = resolve_function(ref)
    args, kwargs = pickle.loads(arguments)
    return function, ChildCall(ref, args, kwargs, node, key, job, limit)


_STARTED = b""
"""What a child sends when a function with a time limit starts (a pickled reply is never
empty): its time counts from there, not from the child's start or the function's import."""


Reply = tuple[Any, ChildError | None, float]
"""A child's answer: the value, or the error; and the seconds the function ran."""


class ChildPool:
    """Up to `size` child interpreters, started as needed, running one sync function each."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        """Every child made and not yet seen dead: idle, busy, or killed while busy."""
        self._threads: ThreadPoolExecutor | None = None

    async def run(self, call: ChildCall) -> Reply:
        """Run `call` in an idle child (waiting for one while all are busy). Past its time
        limit the child is killed: the reply says how long it ran, and the worker reports the
        timeout. Cancelled, it kills the child too and waits until it has exited."""
        async with self._slots:
            child = self._take()
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="girder-child")
            work = self._threads.submit(child.call, call)
            try:
                reply = await asyncio.wrap_future(work)
            except BaseException:  # cancelled: nobody wants the value, stop computing it
                await self._stop(child, work)
                raise
            if child.alive():
                self._idle.append(child)
            else:
                self._children.discard(child)
            return reply

    async def _stop(self, child: _Child, work: Future[Reply]) -> None:
        """Kill a busy child; once the thread that called it is done (it reads the end of the
        socket), wait until the child has exited. Cancelled again meanwhile, `close` reaps it."""
        child.kill()
        await asyncio.wait([asyncio.wrap_future(work)])
        await asyncio.to_thread(child.end)
        self._children.discard(child)

    def _take(self) -> _Child:
        """An idle child that is still alive, or a new one (started by its first call)."""
        while self._idle:
            child = self._idle.pop()
            if child.alive():
                return child
            child.close()
            self._children.discard(child)
        child = _Child()
        self._children.add(child)
        return child

    def pids(self) -> list[int]:
        """The process ids of the children started and still running."""
        return [child.pid for child in self._children if child.pid is not None and child.alive()]

    async def close(self) -> None:
        """Kill every child and wait until each has exited."""
        children, idle = list(self._children), self._idle
        self._children, self._idle = set(), []
        for child in children:
            child.kill()
        await asyncio.to_thread(_reap_all, children)
        for child in idle:  # a busy child's socket is closed by the thread that used it
            child.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
            self._threads = None


def _reap_all(children: list[_Child]) -> None:
    for child in children:
        child.reap()


def pool_size(batons: int) -> int:
    """Children for `batons` batons: one each, leaving one CPU this process may use to the
    host's loop (a loop that must wait for a CPU to wake on stalls as surely as one that waits
    for the GIL), and at least one."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(batons, (cpus or 1) - 1))


class _Child:
    """One child process and this process's end of its socket. `call`, `reap` and `close`
    run in the pool's threads; `kill` and `alive` on the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._killed = False
        self._paths: list[str] | None = None
        """The `sys.path` the child was sent last."""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def alive(self) -> bool:
        """Not killed, and (once started) still running."""
        return not self._killed and (self._process is None or self._process.poll() is None)

    def call(self, call: ChildCall) -> Reply:
        """Send `call` and wait for the reply (in a thread: the GIL is released meanwhile), at
        most its time limit once it has started."""
        paths = [path or os.getcwd() for path in sys.path]
        try:
            data = call.encode(paths if paths != self._paths else None)
        except Exception as exc:
            message = f"its arguments cannot be pickled for a child process: {_said(exc)}"
            return None, ChildError(message, [], None, kind="invalid"), 0.0
        try:
            connection = self._connect()
            connection.send_bytes(data)
            self._paths = paths
            reply = connection.recv_bytes()
            if call.limit is not None and reply == _STARTED:
                start = time.perf_counter()
                if not connection.poll(call.limit):
                    return None, self._overran(call.limit), time.perf_counter() - start
                reply = connection.recv_bytes()
        except (EOFError, OSError):
            return None, self._died(), 0.0
        try:
            loaded: Reply = pickle.loads(reply)
        except Exception as exc:
            message = f"its value cannot be unpickled here: {_said(exc)}"
            return None, ChildError(message, [], None, kind="invalid"), 0.0
        return loaded

    def _connect(self) -> Connection:
        with self._lock:
            if self._connection is None:
                if self._killed:
                    raise EOFError
                self._connection = self._start()
            return self._connection

    def _start(self) -> Connection:
        ours, theirs = socketpair()
        with ours, theirs:
            fd = theirs.fileno()
            self._process = subprocess.Popen(
                [sys.executable, "-c", _SERVE, str(fd)],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                env=_environment(),
            )
            return Connection(ours.detach())

    def _died(self) -> ChildError:
        """The socket closed: the child died. Reap it and say how it ended."""
        self.end()
        code = self._process.returncode if self._process is not None else None
        if code is None or self._killed:
            how = "it was stopped"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        message = f"the child process running it died ({how}; sync_offload='process')"
        return ChildError(message, [], None, kind="crashed")

    def _overran(self, limit: float) -> ChildError:
        """The function ran past its time limit: kill its child (the one way to stop it)."""
        self.kill()
        self.end()
        message = f"took longer than its time limit of {limit:g} s: its child process was killed"
        return ChildError(message, [], None, kind="timeout")

    def kill(self) -> None:
        """Stop the child now (and any call: its thread reads the end of the socket)."""
        with self._lock:
            self._killed = True
            if self._process is not None and self._process.poll() is None:
                self._process.kill()

    def reap(self) -> None:
        """Wait until the process has exited (killed after `_REAP_TIMEOUT` if it lingers)."""
        if self._process is None:
            return
        try:
            self._process.wait(_REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def end(self) -> None:
        """Wait until the process has exited, and close the socket."""
        self.reap()
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _environment() -> dict[str, str]:
    """This environment, with this process's `sys.path` as the child's (so that it imports
    girder from where this process does; its first call sets the rest)."""
    paths = [path or os.getcwd() for path in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- the child's side ---------------------------------------------------------------------------


def serve(fd: int) -> None:
    """A child's whole life: answer calls one at a time until the host closes the socket.
    Ctrl-C in a terminal is the host's to handle (it stops the grid, which kills this child)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connection = Connection(fd)
    _exit_with(os.getppid())
    while True:
        try:
            data = connection.recv_bytes()
        except EOFError:
            return
        connection.send_bytes(answer(data, connection))


def answer(data: bytes, connection: Connection) -> bytes:
    """Run the pickled `ChildCall` in `data` (telling the host through `connection` when it
    starts, if it has a time limit); the pickled `Reply`."""
    try:
        function, call = _decoded(data)
    except Exception as exc:
        message = f"it cannot be loaded in the child process: {_said(exc)}"
        return pickle.dumps((None, ChildError(message, [], None, kind="invalid"), 0.0))
    evaluation = Evaluation(
        _Away(call.node), call.key, call.job, function.name, call.args, call.kwargs
    )
    token = current_evaluation.set(evaluation)
    value, error = None, None
    if call.limit is not None:
        connection.send_bytes(_STARTED)
    start = time.perf_counter()
    try:
        value = function.run_sync(call.args, call.kwargs)
    except Exception as exc:
        error = ChildError.of(exc)
    finally:
        seconds = time.perf_counter() - start
        current_evaluation.reset(token)
    try:
        pickled: bytes = cloudpickle.dumps((value, error, seconds), protocol=5)
    except Exception as exc:
        readable = readable_call(function.short_name, call.args, call.kwargs)
        message = (
            f"the result of {readable} (type {type(value).__qualname__}) cannot be pickled "
            f"back from the child process: {_said(exc)}"
        )
        pickled = pickle.dumps((None, ChildError(message, [], None, kind="invalid"), seconds))
    return pickled


def _exit_with(parent: int) -> None:
    """Exit as soon as the host is gone, even while a function runs (a daemon thread checks)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK)
        os._exit(1)

    threading.Thread(target=watch, name="girder-host-watch", daemon=True).start()


_ELSEWHERE = "a sync grid function run in a child process (sync_offload='process') cannot use it"


class _Away:
    """The worker, as a function in a child sees it: its id (`girder.current_node()`), and
    nothing that would need the worker's loop."""

    def __init__(self, node: str) -> None:
        self.id = node

    async def reentrant(self, evaluation: Evaluation, requests: list[Request]) -> list[Any]:
        raise RuntimeError(_ELSEWHERE)

    def stream(self, evaluation: Evaluation, request: Request) -> AsyncIterator[Any]:
        raise RuntimeError(_ELSEWHERE)

    async def peek(self, requests: list[Request]) -> list[Outcome | None]:
        raise RuntimeError(_ELSEWHERE)

    async def pool_size(self) -> int:
        raise RuntimeError(_ELSEWHERE)
