"""Grid functions the tests run (importable, as a worker process would import them)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TextIO

import girder
from girder.scheduler.context import current_evaluation

calls: Counter[tuple[str, object]] = Counter()
"""How often each (function, argument) really ran in this process."""


@girder.function
async def fib(n: int) -> int:
    calls["fib", n] += 1
    if n < 2:
        return n
    a, b = await girder.call_reentrant([(fib, n - 1), (fib, n - 2)])
    return a + b


@girder.function
async def chain(n: int) -> int:
    if n == 0:
        return 0
    (below,) = await girder.call_reentrant([(chain, n - 1)])
    return below + 1


@girder.function
async def tree(depth: int, index: int) -> int:
    if depth == 0:
        return 1
    a, b = await girder.call_reentrant(
        [(tree, depth - 1, 2 * index), (tree, depth - 1, 2 * index + 1)]
    )
    return a + b + 1


@girder.function
def add(a: int, b: int) -> int:
    return a + b


@girder.function
def divide(x: float, y: float) -> float:
    return x / y


@girder.function
async def ratio(i: int) -> float:
    (value,) = await girder.call_reentrant([(divide, i, i - 1)])
    return value


@girder.function
async def ratio_of_ratio(i: int) -> float:
    (value,) = await girder.call_reentrant([(ratio, i)])
    return value


@girder.function
async def self_cycle(n: int) -> int:
    (value,) = await girder.call_reentrant([(self_cycle, n)])
    return value


@girder.function
async def ping(n: int) -> int:
    (value,) = await girder.call_reentrant([(pong, n)])
    return value


@girder.function
async def pong(n: int) -> int:
    (value,) = await girder.call_reentrant([(ping, n)])
    return value


@girder.function
async def slow_square(x: int) -> int:
    calls["slow_square", x] += 1
    await asyncio.sleep(0.05)
    return x * x


@girder.function(cache=False)
async def uncached_square(x: int) -> int:
    calls["uncached_square", x] += 1
    await asyncio.sleep(0.05)
    return x * x


@girder.function
def identity(value: object) -> object:
    return value


@girder.function
def make_lock() -> object:
    return threading.Lock()


@girder.function
async def where(tag: str) -> str | None:
    return girder.current_node()


# The seeds' sharing scenario: A needs B and C, B and C need D, D needs E, Z needs E.
@girder.function
async def share_e(tag: str) -> str:
    calls["E", tag] += 1
    await asyncio.sleep(0.05)
    return "E"


@girder.function
async def share_d(tag: str) -> str:
    calls["D", tag] += 1
    (e,) = await girder.call_reentrant([(share_e, tag)])
    return "D" + e


@girder.function
async def share_b(tag: str) -> str:
    (d,) = await girder.call_reentrant([(share_d, tag)])
    return "B" + d


@girder.function
async def share_c(tag: str) -> str:
    (d,) = await girder.call_reentrant([(share_d, tag)])
    return "C" + d


@girder.function
async def share_a(tag: str) -> str:
    b, c = await girder.call_reentrant([(share_b, tag), (share_c, tag)])
    return "A(" + b + "," + c + ")"


@girder.function
async def share_z(tag: str) -> str:
    (e,) = await girder.call_reentrant([(share_e, tag)])
    return "Z" + e


@girder.function
async def nap(ms: int, index: int) -> int:
    """Sleep `ms` milliseconds (waiting on I/O: its baton is lent meanwhile); return `index`."""
    await asyncio.sleep(ms / 1000)
    return index


@girder.function
async def fan(count: int, ms: int, tag: str) -> int:
    """`count` naps of `ms` each, as re-entrant sub-requests; their sum."""
    values = await girder.call_reentrant([(nap, ms, i) for i in range(count)])
    return sum(values)


@girder.function
async def fan_of_fans(outer: int, inner: int, ms: int, tag: str) -> int:
    values = await girder.call_reentrant([(fan, inner, ms, f"{tag}-{i}") for i in range(outer)])
    return sum(values)


@girder.function
async def times_out(n: int) -> str:
    """Uses asyncio.timeout in its first step: it must time out its own code, nothing else."""
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
    except TimeoutError:
        return "timed out"
    return "finished"


@girder.function
def slow_sync(ms: int, index: int) -> int:
    """A sync function that blocks for `ms` milliseconds."""
    time.sleep(ms / 1000)
    return index


@girder.function
async def then_nap(a: int, b: int, ms: int) -> int:
    """add(a, b) as a sub-request, then a nap of `ms` milliseconds."""
    (total,) = await girder.call_reentrant([(add, a, b)])
    await asyncio.sleep(ms / 1000)
    return int(total)


@girder.function
def touch(path: str) -> str:
    """Create the file `path`: a side effect that proves the request ran."""
    with open(path, "a"):
        pass
    return path


@girder.function
def die(tag: str) -> None:
    """A poison request: kills the worker process that runs it (never call it in process)."""
    os.kill(os.getpid(), signal.SIGKILL)


@girder.function
async def staged(levels: int, ms: int, tag: str) -> int:
    """Nap `ms`, then (above level 0) call two sub-requests of the level below: new nested
    calls keep being made for levels * ms milliseconds. The number of leaves."""
    await asyncio.sleep(ms / 1000)
    if levels == 0:
        return 1
    parts = await girder.call_reentrant([(staged, levels - 1, ms, f"{tag}.{i}") for i in (0, 1)])
    return sum(parts)


# -- runs logged for the chaos test ---------------------------------------------------------------

RUN_LOG_ENV = "CHAOS_RUN_LOG"
"""A directory: when set, the `salted_*` functions log each run to `runs-<pid>.log` in it."""

_run_log: tuple[int, TextIO] | None = None


def _run_log_file() -> TextIO | None:
    """This process's run log (opened on first use, line-buffered), or None when not asked."""
    global _run_log
    folder = os.environ.get(RUN_LOG_ENV)
    if not folder:
        return None
    pid = os.getpid()
    if _run_log is None or _run_log[0] != pid:
        _run_log = (pid, open(os.path.join(folder, f"runs-{pid}.log"), "a", buffering=1))  # noqa: SIM115 - kept for the process
    return _run_log[1]


@contextmanager
def logged_run() -> Iterator[None]:
    """Log `start` and `end <how>` lines (key, pid, node, monotonic time) around a run."""
    log = _run_log_file()
    evaluation = current_evaluation.get()
    if log is None or evaluation is None:
        yield
        return
    # The process group: a `girder worker` and the node it supervises are one process to the
    # tests (faults are sent to the group).
    where = f"{evaluation.key} {os.getpgrp()} {girder.current_node()}"
    log.write(f"start {where} {time.monotonic():.6f}\n")
    how = "error"
    try:
        yield
        how = "ok"
    except asyncio.CancelledError:
        how = "cancelled"
        raise
    finally:
        log.write(f"end {where} {time.monotonic():.6f} {how}\n")


@girder.function
async def salted_tree(depth: int, index: int, salt: str, ms: int) -> int:
    """A binary tree of `depth` levels; each leaf naps `ms` milliseconds. Returns its size."""
    with logged_run():
        if depth == 0:
            await asyncio.sleep(ms / 1000)
            return 1
        a, b = await girder.call_reentrant(
            [
                (salted_tree, depth - 1, 2 * index, salt, ms),
                (salted_tree, depth - 1, 2 * index + 1, salt, ms),
            ]
        )
        return a + b + 1


@girder.function
async def salted_fib(n: int, salt: str) -> int:
    with logged_run():
        if n < 2:
            return n
        a, b = await girder.call_reentrant([(salted_fib, n - 1, salt), (salted_fib, n - 2, salt)])
        return a + b


@girder.function
async def salted_chain(n: int, salt: str, ms: int) -> int:
    """A chain `n` deep; the bottom naps `ms` milliseconds. Returns `n`."""
    with logged_run():
        if n == 0:
            await asyncio.sleep(ms / 1000)
            return 0
        (below,) = await girder.call_reentrant([(salted_chain, n - 1, salt, ms)])
        return below + 1


BLOB_VALUE_BYTES = 3072
"""The size of the values `salted_blobs` passes around: over the chaos test's
GIRDER_LARGE_VALUE_BYTES (2048), so that they are stored as blobs."""


def large_value(salt: str, n: int) -> bytes:
    """A value of BLOB_VALUE_BYTES bytes, one per (salt, n)."""
    return hashlib.sha256(f"{salt}:{n}".encode()).digest() * (BLOB_VALUE_BYTES // 32)


def _mix(*values: bytes) -> bytes:
    return hashlib.sha256(b"".join(values)).digest() * (BLOB_VALUE_BYTES // 32)


def blob_link(n: int, salt: str, data: bytes) -> bytes:
    """What `salted_blob(n, salt, data)` returns, computed here."""
    value = _mix(large_value(salt, 0), b"bottom")
    for link in range(1, n + 1):
        value = _mix(data if link == n else large_value(salt, link), value)
    return value


def blobs_answer(width: int, depth: int, salt: str, pad: str) -> int:
    """What `salted_blobs(width, depth, salt, pad)` returns, computed here."""
    links = [
        blob_link(depth, f"{salt}/{i}", large_value(f"{salt}/{i}", depth)) for i in range(width)
    ]
    return int.from_bytes(hashlib.sha256(pad.encode() + b"".join(links)).digest()[:6], "big")


@girder.function
async def salted_blob(n: int, salt: str, data: bytes, ms: int = 20) -> bytes:
    """A chain `n` deep of large values: each link takes one as its arguments (a blob) and
    returns one (a blob) mixed from it and the link below; the bottom naps `ms` milliseconds."""
    with logged_run():
        if n == 0:
            await asyncio.sleep(ms / 1000)
            return _mix(large_value(salt, 0), b"bottom")
        (below,) = await girder.call_reentrant(
            [(salted_blob, n - 1, salt, large_value(salt, n - 1), ms)]
        )
        return _mix(data, below)


@girder.function
async def salted_blobs(width: int, depth: int, salt: str, pad: str) -> int:
    """`width` chains of large values (`salted_blob`) under one request whose arguments are
    large too (`pad`); a number that depends on every byte of their values."""
    with logged_run():
        links = await girder.call_reentrant(
            [
                (salted_blob, depth, f"{salt}/{i}", large_value(f"{salt}/{i}", depth))
                for i in range(width)
            ]
        )
        return int.from_bytes(hashlib.sha256(pad.encode() + b"".join(links)).digest()[:6], "big")


def _mark(directory: str, name: str) -> None:
    with open(os.path.join(directory, name), "w"):
        pass


def network_namespace() -> str:
    """The inode of this process's network namespace (which host it runs on, in a test)."""
    return "".join(ch for ch in os.readlink("/proc/self/ns/net") if ch.isdigit())


def host_tag() -> str:
    """Which host this process plays in a test: `GRIDFNS_HOST`, else its network namespace."""
    return os.environ.get("GRIDFNS_HOST") or network_namespace()


@girder.function
async def partition_leaf(index: int, ms: int, directory: str) -> list[object]:
    """Sleeps `ms`; marks `start-`, then `done-` or `dropped-` (cancelled), `<index>-<host>-<run>`
    in `directory` (the host: `host_tag`). Returns the index squared and the host that ran it
    (so a test sees whose completion the grid kept)."""
    where = host_tag()
    run = os.urandom(3).hex()
    _mark(directory, f"start-{index}-{where}-{run}")
    try:
        await asyncio.sleep(ms / 1000)
    except asyncio.CancelledError:
        _mark(directory, f"dropped-{index}-{where}-{run}")
        raise
    _mark(directory, f"done-{index}-{where}-{run}")
    return [index * index, where]


@girder.function
async def partition_job(durations: list[int], directory: str) -> list[list[object]]:
    """One `partition_leaf` per duration (ms), all at once."""
    leaves = [(partition_leaf, index, ms, directory) for index, ms in enumerate(durations)]
    return list(await girder.call_reentrant(leaves))


_stall_leaf_runs = itertools.count()
"""Runs of `stall_leaf` in this process."""


@girder.function
def stall_leaf(index: int, directory: str, hold: str) -> list[object]:
    """A quick sync leaf: marks `start-`, then `done-`, `<index>-<host>-<run>` in `directory`
    (the host: `host_tag`). On the host `stalled`, every run after its process's first waits
    while the file `hold` exists (on the event loop, once the leaf is known quick), so the
    worker's other claims wait behind it. Returns the index squared and the host."""
    where = host_tag()
    run = os.urandom(3).hex()
    _mark(directory, f"start-{index}-{where}-{run}")
    if next(_stall_leaf_runs) > 0 and where == "stalled":
        while os.path.exists(hold):
            time.sleep(0.01)
    _mark(directory, f"done-{index}-{where}-{run}")
    return [index * index, where]


@girder.function
async def sleepy_tree(depth: int, fanout: int, index: int, directory: str) -> int:
    """A tree whose leaves sleep a minute; each leaf marks `start-<index>` and, when it stops
    however it stops, `stop-<index>` in `directory`; each parent marks `pstart-<depth>-<index>`
    when it starts and `pstop-<depth>-<index>` when it stops."""
    if depth == 0:
        _mark(directory, f"start-{index}")
        try:
            await asyncio.sleep(60)
        finally:
            _mark(directory, f"stop-{index}")
        return 1
    children = [
        (sleepy_tree, depth - 1, fanout, index * fanout + i, directory) for i in range(fanout)
    ]
    _mark(directory, f"pstart-{depth}-{index}")
    try:
        return sum(await girder.call_reentrant(children))
    finally:
        _mark(directory, f"pstop-{depth}-{index}")


@girder.function
async def slow_shared(tag: str, directory: str) -> str:
    """Sleeps 0.5 s; marks `shared-<pid>-<n>` in `directory` each time it starts."""
    _mark(directory, f"shared-{os.getpid()}-{len(os.listdir(directory))}")
    await asyncio.sleep(0.5)
    return f"shared {tag}"


@girder.function
async def needs_shared(job_tag: str, tag: str, directory: str) -> str:
    """A request of its own that waits for `slow_shared(tag)`, shared with other jobs."""
    (value,) = await girder.call_reentrant([(slow_shared, tag, directory)])
    return f"{job_tag}: {value}"


@girder.function(timeout=0.5)
async def limited_parent(directory: str) -> int:
    """Waits for sleeping leaves longer than its half-second limit."""
    (total,) = await girder.call_reentrant([(sleepy_tree, 1, 2, 0, directory)])
    return total


@girder.function(timeout=0.2)
def sync_over_limit(ms: int) -> int:
    """A sync function that may run past its 0.2 s limit."""
    time.sleep(ms / 1000)
    return ms


@girder.function(timeout=1.0, cache=False)
def stuck(directory: str) -> None:
    """A sync function in an endless loop; marks `stuck-<pid>` each time it starts."""
    _mark(directory, f"stuck-{os.getpid()}")
    while True:
        time.sleep(0.01)


# -- streaming functions (several answers per request) -----------------------------------------


async def _until_exists(path: str) -> None:
    """Wait until the file `path` exists: a gate that a test in another process opens (no
    event crosses processes; a stat is quick)."""
    while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - a file another process writes
        await asyncio.sleep(0.01)


@girder.function
async def gated_answers(tag: str, directory: str) -> AsyncIterator[str]:
    """Three answers; the second waits for `open-2` in `directory`, the third for `open-3`.
    Marks `run-<pid>-<n>` each time it starts."""
    _mark(directory, f"run-{os.getpid()}-{len(os.listdir(directory))}")
    yield f"{tag}:1"
    await _until_exists(os.path.join(directory, "open-2"))
    yield f"{tag}:2"
    await _until_exists(os.path.join(directory, "open-3"))
    yield f"{tag}:3"


@girder.function
async def counting(tag: str, count: int) -> AsyncIterator[str]:
    """`count` answers at once: `<tag>:1` ... `<tag>:<count>`."""
    for index in range(1, count + 1):
        yield f"{tag}:{index}"


@girder.function
async def whereabouts(count: int) -> AsyncIterator[tuple[int, int]]:
    """`count` answers, each (the process id that runs it, its index)."""
    for index in range(count):
        yield os.getpid(), index
        await asyncio.sleep(0.01)


@girder.function
async def last_of_counting(tag: str, count: int) -> str:
    """`call_reentrant` on a streaming function: its last answer."""
    (value,) = await girder.call_reentrant([(counting, tag, count)])
    return str(value)


@girder.function
async def big_answers(size: int, count: int) -> AsyncIterator[bytes]:
    """`count` large answers: `pattern(size, 1)` ... `pattern(size, count)`."""
    for index in range(1, count + 1):
        yield pattern(size, index)


@girder.function
async def every_answer(tag: str, count: int) -> list[str]:
    """Every answer of a streamed sub-request, in order (parking between answers)."""
    return [answer async for answer in girder.stream(counting, tag, count)]


@girder.function
async def every_gated_answer(tag: str, directory: str) -> list[str]:
    """Every answer of a streamed sub-request that waits for gates between answers."""
    return [answer async for answer in girder.stream(gated_answers, tag, directory)]


@girder.function
async def endless(directory: str) -> AsyncIterator[int]:
    """One answer, then waits forever; marks `start-0` and, however it stops, `stop-0`."""
    _mark(directory, "start-0")
    try:
        yield 1
        await asyncio.sleep(3600)
        yield 2
    finally:
        _mark(directory, "stop-0")


@girder.function
async def fails_after(tag: str, count: int) -> AsyncIterator[str]:
    """`count` answers, then a `ValueError`."""
    for index in range(1, count + 1):
        yield f"{tag}:{index}"
    raise ValueError(f"{tag} broke after {count}")


class Overdrawn(Exception):
    """A user's own exception, with an `__init__` of its own (not just a message)."""

    def __init__(self, account: str, amount: int) -> None:
        super().__init__(f"account {account} is overdrawn by {amount}")
        self.account = account
        self.amount = amount


@girder.function
def withdraw(account: str, amount: int) -> int:
    raise Overdrawn(account, amount)


@girder.function
async def withdraw_twice(account: str) -> int:
    first = await girder.call_reentrant(withdraw, account, 1)
    return first + await girder.call_reentrant(withdraw, account, 2)


@girder.function
async def divide_below(x: int) -> float:
    """Fails one level down, with ZeroDivisionError."""
    return await girder.call_reentrant(divide, x, 0)


@girder.function
async def catch_below(x: int) -> str:
    """Catches a sub-request's failure by the type of its root cause, as a caller would."""
    try:
        await girder.call_reentrant(divide, x, 0)
    except ZeroDivisionError as exc:
        return f"caught {type(exc).__name__} ({isinstance(exc, girder.RequestError)})"
    return "not caught"


class Scale:
    """A callable object: its state (the factor) is part of its identity."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, x: int) -> int:
        return self.factor * x


class AsyncScale(Scale):
    async def __call__(self, x: int) -> int:  # type: ignore[override]
        await asyncio.sleep(0)
        return self.factor * x


@girder.function
def returns_coroutine(x: int) -> object:
    """A sync function that returns a coroutine: a mistake girder must explain."""
    return asyncio.sleep(0, result=x)


# -- large values (tests/test_large_values.py) -----------------------------------------------------


def pattern(size: int, seed: int) -> bytes:
    """`size` bytes that depend on `seed` (cheap to make, the same in every process)."""
    unit = seed.to_bytes(8, "big") + bytes(range(256))
    return (unit * (size // len(unit) + 1))[:size]


@girder.function
def big(size: int, seed: int) -> bytes:
    return pattern(size, seed)


@girder.function
def big_again(size: int, seed: int) -> bytes:
    """The same value as `big` under another key."""
    return pattern(size, seed)


@girder.function(cache=False)
def big_uncached(size: int, seed: int) -> bytes:
    return pattern(size, seed)


@girder.function
def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@girder.function
async def digest_through_a_child(size: int, seed: int) -> str:
    """Passes large arguments to a sub-request."""
    (digest,) = await girder.call_reentrant([(digest_of, pattern(size, seed))])
    return str(digest)


@girder.function
async def length_of_big(size: int, seed: int) -> int:
    """Needs its child's value (so it fetches it) and returns a small one."""
    (value,) = await girder.call_reentrant([(big, size, seed)])
    return len(value)


@girder.function
def sync_sleep(ms: int, index: int) -> int:
    """A slow sync function: blocks `ms` milliseconds (the GIL released, as blocking I/O does)."""
    time.sleep(ms / 1000)
    return index


@girder.function
def which_thread(index: int) -> tuple[int, str, str | None]:
    """The thread that ran this sync request, and its node."""
    return index, threading.current_thread().name, girder.current_node()


@girder.function(cache=False)
def sync_marked_sleep(ms: int, directory: str) -> str:
    """Marks `started` in `directory`, then blocks `ms` milliseconds."""
    _mark(directory, "started")
    time.sleep(ms / 1000)
    return "slept"


@girder.function
def sync_spin(ms: int, index: int) -> int:
    """A CPU-bound sync function: `ms` milliseconds of Python bytecode (holding the GIL)."""
    _spin(ms)
    return index


def _spin(ms: int) -> None:
    deadline = time.perf_counter() + ms / 1000
    while time.perf_counter() < deadline:
        pass


@girder.function(cache=False)
def sync_marked_spin(ms: int, directory: str) -> str:
    """Marks `spinning-<pid>` in `directory`, then spins `ms` milliseconds of Python bytecode."""
    _mark(directory, f"spinning-{os.getpid()}")
    _spin(ms)
    return "spun"


@girder.function
def sync_where(ms: int, index: int) -> tuple[int, int, str | None]:
    """Blocks `ms` milliseconds; the process that ran it, and the node `current_node` names."""
    time.sleep(ms / 1000)
    return index, os.getpid(), girder.current_node()


@girder.function(cache=False)
def sync_marked_pid_sleep(ms: int, directory: str) -> str:
    """Marks `started-<pid>` in `directory`, then blocks `ms` milliseconds."""
    _mark(directory, f"started-{os.getpid()}")
    time.sleep(ms / 1000)
    return "slept"


@girder.function
def sync_divide_slowly(ms: int, divisor: int) -> float:
    """Blocks `ms` milliseconds (never inline), then divides (by zero, if asked)."""
    time.sleep(ms / 1000)
    return _divided(divisor)


def _divided(divisor: int) -> float:
    return 1 / divisor


@girder.function
def sync_unpicklable(ms: int) -> threading.Lock:
    """Blocks `ms` milliseconds, then returns what pickle cannot carry."""
    time.sleep(ms / 1000)
    return threading.Lock()
