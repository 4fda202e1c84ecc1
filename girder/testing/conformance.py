"""The backend conformance suite: every rule of the `StateBackend` protocol, one test each.

It ships with girder so that a third-party backend can prove itself against the same rules as
the built-in ones. Subclass `BackendConformance` in a test module and override the `backend`
fixture with one that yields a connected backend holding no state::

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        async def backend(self) -> AsyncIterator[StateBackend]:
            backend = MyBackend("my://test")
            await backend.connect()
            await backend.flush()
            yield backend
            await backend.close()

The tests are coroutines: run them with pytest-asyncio (`asyncio_mode = "auto"`, or use
`pytest_asyncio.fixture` for the override in strict mode). Nodes that must die get leases of
`lease` seconds; everything that must happen is polled for with a deadline of `patience` seconds,
so a slow machine makes the suite slower, never wrong. "At once" means within `prompt` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar

import pytest

from girder.backends.base import (
    Assignment,
    CacheStats,
    CacheUsage,
    Claimed,
    Completion,
    Event,
    EventKind,
    NewRequest,
    NodeInfo,
    NodeKind,
    Notification,
    Reaped,
    RequestState,
    ServerLoad,
    StateBackend,
    Submitted,
)

LONG = 60.0
"""A lease that does not run out during a test."""


def new(key: str) -> NewRequest:
    """A request whose payload is derived from its key (binary, to catch text-only storage)."""
    return NewRequest(key, b"\x00\xffpayload:" + key.encode())


def out(key: str, tag: str = "") -> bytes:
    """An outcome for `key` (binary, like a real serialized outcome)."""
    return b"\x80\x00outcome:" + key.encode() + tag.encode()


def blob(tag: str, size: int = 1000) -> tuple[str, bytes]:
    """(digest, bytes) of a binary blob of `size` bytes derived from `tag`."""
    data = (b"\x00\xffblob:" + tag.encode()) * (size // (7 + len(tag)) + 1)
    data = data[:size]
    return hashlib.sha256(data).hexdigest(), data


def cached_size(*keys: str) -> int:
    """The bytes `cache_stats` counts for the cached outcomes `out(key)` (a done key keeps no
    payload)."""
    return sum(len(out(key)) for key in keys)


async def live_reaper(backend: StateBackend, reaper: str) -> None:
    """Make `reaper` a registered node with a long lease (a reaper whose own lease ran out
    reaps nobody)."""
    if not (await backend.heartbeat(reaper, LONG)).registered:
        await backend.join(reaper, NodeKind.CLIENT, None, LONG)


async def put(
    backend: StateBackend,
    node: str,
    keys: Sequence[str],
    *,
    into: str | None = None,
    on_top: bool = True,
    waiter_key: str | None = None,
    dispatch: bool = False,
) -> list[Submitted]:
    """Submit `keys` as `node`, by default onto the top of `node`'s own list."""
    return await backend.submit(
        node,
        [new(key) for key in keys],
        into=node if into is None else into,
        on_top=on_top,
        waiter_key=waiter_key,
        dispatch=dispatch,
    )


async def watch(backend: StateBackend) -> None:
    """Read the events once, as a dashboard does: from then on the backend publishes them."""
    await backend.events(None, 0)


async def events_of(backend: StateBackend, *kinds: EventKind) -> list[Event]:
    """Every event the backend keeps (of `kinds`, when given), oldest first."""
    found = await backend.events(None, 100_000)
    return [event for event in found if not kinds or event.kind in kinds]


async def volunteer(backend: StateBackend, distributor: str, node: str) -> None:
    """Volunteer `node`, joining it first if needed (a volunteer must be registered)."""
    if node not in {info.node for info in await backend.nodes()}:
        await backend.join(node, NodeKind.WORKER, distributor, LONG)
    await backend.volunteer(distributor, node)


async def claim_all(backend: StateBackend, node: str) -> list[str]:
    """Claim until `node`'s list runs out; the keys in the order they came up."""
    keys: list[str] = []
    while (claimed := await backend.claim(node)) is not None:
        keys.append(claimed.key)
    return keys


async def run(backend: StateBackend, node: str, key: str, *, cache: bool = True) -> None:
    """Submit `key` onto `node`'s list, claim it and complete it with `out(key)`."""
    await put(backend, node, [key])
    claimed = await backend.claim(node)
    assert claimed is not None
    assert claimed.key == key
    await backend.complete(node, key, out(key), cache=cache)


async def run_until_running(backend: StateBackend, node: str, key: str) -> None:
    """Submit `key` onto `node`'s list and claim it there."""
    await put(backend, node, [key])
    assert await backend.claim(node) == Claimed(key, new(key).payload)


async def run_claimed(backend: StateBackend, node: str, key: str) -> None:
    """Claim `key` from the top of `node`'s list and complete it (cached) with `out(key)`."""
    claimed = await backend.claim(node)
    assert claimed is not None
    assert claimed.key == key
    await backend.complete(node, key, out(key), cache=True)


async def make_unknown_done_and_running(backend: StateBackend, *, also_into: str) -> None:
    """Push three keys on top of `also_into` that nobody may claim from there.

    "unknown" completed without caching (its record is gone), "done" completed with caching,
    "running" is claimed by another node. Each is pushed onto a scratch list "x" as well and
    claimed there.
    """
    for key in ("unknown", "done", "running"):
        await put(backend, "c", [key], into=also_into)
        await put(backend, "c", [key], into="x")
        claimed = await backend.claim("x")
        assert claimed is not None
        assert claimed.key == key
    await backend.complete("x", "unknown", out("unknown"), cache=False)
    await backend.complete("x", "done", out("done"), cache=True)


async def timed(awaitable: Awaitable[object]) -> float:
    """Seconds `awaitable` took."""
    start = time.monotonic()
    await awaitable
    return time.monotonic() - start


async def eventually(check: Callable[[], Awaitable[bool]], patience: float, what: str) -> None:
    """Poll `check` until it holds; fail after `patience` seconds."""
    deadline = time.monotonic() + patience
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {patience} s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
class BackendConformance:
    """The rules of `girder.backends.base.StateBackend`; subclass and provide `backend`."""

    lease: ClassVar[float] = 0.2
    """Seconds of lease given to nodes that a test lets die."""

    patience: ClassVar[float] = 5.0
    """Seconds to wait for something that must happen (and the timeout of waits that must end)."""

    prompt: ClassVar[float] = 1.0
    """Seconds within which a wait that has its answer must return."""

    @pytest.fixture
    async def backend(self) -> AsyncIterator[StateBackend]:
        """Override: yield a connected backend that holds no state, and close it afterwards."""
        raise NotImplementedError(f"{type(self).__name__} must override the `backend` fixture")
        yield  # noqa: PT022 -- unreachable; makes this an async generator like the overrides

    async def reap_until(
        self, backend: StateBackend, reaper: str, dead: set[str], max_crashes: int = 3
    ) -> Reaped:
        """Reap until every node of `dead` was declared dead; what all those reaps did."""
        names: list[str] = []
        requeued = 0
        crashed_out: list[str] = []
        await live_reaper(backend, reaper)
        deadline = time.monotonic() + self.lease + self.patience
        while not dead <= set(names):
            if time.monotonic() > deadline:
                pytest.fail(f"reap never reported {sorted(dead - set(names))}")
            reaped = await backend.reap(reaper, max_crashes)
            names.extend(reaped.dead)
            requeued += reaped.requeued
            crashed_out.extend(reaped.crashed_out)
            await asyncio.sleep(0.02)
        return Reaped(tuple(names), requeued, tuple(crashed_out))

    async def test_is_a_state_backend(self, backend: StateBackend) -> None:
        assert isinstance(backend, StateBackend)
        assert isinstance(backend.url, str)

    # -- submit -----------------------------------------------------------------------------------

    async def test_submit_reports_each_request_in_order(self, backend: StateBackend) -> None:
        found = await put(backend, "c", ["k1", "k2", "k3"], into="d", on_top=False)
        assert found == [Submitted("k1"), Submitted("k2"), Submitted("k3")]

    async def test_submit_says_which_keys_were_in_flight_already(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        assert await put(backend, "c1", ["k"], into="d") == [Submitted("k")]
        assert await put(backend, "c2", ["k", "j"], into="d") == [
            Submitted("k", shared=True),
            Submitted("j"),
        ]
        await put(backend, "w", ["k"])
        assert await backend.claim("w") == Claimed("k", new("k").payload)
        assert await put(backend, "c3", ["k"], into="d") == [Submitted("k", shared=True)]
        await backend.complete("w", "k", out("k"), cache=False)
        assert await put(backend, "c4", ["k"], into="d") == [Submitted("k")]

    async def test_submit_stores_a_pending_record(self, backend: StateBackend) -> None:
        assert await backend.state("k") == RequestState.UNKNOWN
        await put(backend, "c", ["k"], into="w")
        assert await backend.state("k") == RequestState.PENDING
        assert await backend.payloads(["k"]) == [new("k").payload]
        assert await backend.result("k") is None

    async def test_submit_keeps_the_payload_of_an_existing_record(
        self, backend: StateBackend
    ) -> None:
        await backend.submit("c1", [NewRequest("k", b"first")], into="w1", on_top=True)
        await backend.submit("c2", [NewRequest("k", b"second")], into="w2", on_top=True)
        assert await backend.payloads(["k"]) == [b"first"]
        assert await backend.claim("w2") == Claimed("k", b"first")

    async def test_submit_on_top_comes_up_last_in_first_out(self, backend: StateBackend) -> None:
        await put(backend, "w", ["a", "b"])
        await put(backend, "w", ["c"])
        assert await claim_all(backend, "w") == ["c", "b", "a"]

    async def test_submit_at_the_bottom_comes_up_first_in_first_out(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["a", "b"], into="d", on_top=False)
        await put(backend, "c", ["e"], into="d", on_top=False)
        assert await claim_all(backend, "d") == ["a", "b", "e"]

    async def test_submit_at_the_bottom_goes_under_existing_work(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "w", ["t1"])
        await put(backend, "c", ["b1"], into="w", on_top=False)
        await put(backend, "w", ["t2"])
        assert await claim_all(backend, "w") == ["t2", "t1", "b1"]

    async def test_submit_of_a_done_key_returns_the_outcome_and_does_nothing_else(
        self, backend: StateBackend
    ) -> None:
        await run(backend, "w", "k")
        found = await put(backend, "c", ["k"], into="d", on_top=False, waiter_key="parent")
        assert found == [Submitted("k", outcome=out("k"))]
        assert await backend.lengths(["d"]) == [0]
        # No wait edge parent -> k was added, so k waiting for parent closes no cycle.
        assert (await put(backend, "w2", ["parent"], waiter_key="k"))[0].cycle is None

    async def test_submit_of_a_running_key_registers_the_waiter_without_pushing(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "w1", ["k"])
        assert await backend.claim("w1") == Claimed("k", new("k").payload)
        assert await put(backend, "c", ["k"], into="w2") == [Submitted("k", shared=True)]
        assert await backend.lengths(["w2"]) == [0]
        await backend.complete("w1", "k", out("k"), cache=True)
        assert await backend.take_notifications("c", self.patience) == [Notification("k", out("k"))]

    async def test_submit_of_a_pending_key_pushes_it_again(self, backend: StateBackend) -> None:
        await put(backend, "c1", ["k"], into="w1")
        await put(backend, "c2", ["k"], into="w2")
        assert await backend.lengths(["w1", "w2"]) == [1, 1]
        assert await backend.claim("w2") == Claimed("k", new("k").payload)
        assert await backend.claim("w1") is None
        await backend.complete("w2", "k", out("k"), cache=True)
        for waiter in ("c1", "c2"):
            notes = await backend.take_notifications(waiter, self.patience)
            assert notes == [Notification("k", out("k"))]

    async def test_concurrent_submits_of_a_key_make_one_record(self, backend: StateBackend) -> None:
        clients = [f"c{i}" for i in range(10)]
        await asyncio.gather(
            *(
                backend.submit(c, [NewRequest("k", c.encode())], into=f"w-{c}", on_top=True)
                for c in clients
            )
        )
        [payload] = await backend.payloads(["k"])
        assert payload in {c.encode() for c in clients}
        claims = {c: await backend.claim(f"w-{c}") for c in clients}
        [(winner, claimed)] = [(c, found) for c, found in claims.items() if found is not None]
        assert claimed == Claimed("k", payload)
        await backend.complete(f"w-{winner}", "k", out("k"), cache=True)
        for client in clients:
            notes = await backend.take_notifications(client, self.patience)
            assert notes == [Notification("k", out("k"))]

    async def test_submit_with_dispatch_hands_the_work_to_waiting_volunteers(
        self, backend: StateBackend
    ) -> None:
        await volunteer(backend, "d", "v1")
        await volunteer(backend, "d", "v2")
        keys = ["k1", "k2", "k3"]
        found = await put(backend, "c", keys, into="d", on_top=False, dispatch=True)
        assert found == [Submitted(key) for key in keys]
        assert await backend.volunteers("d") == []
        assert await backend.lengths(["d", "v1", "v2"]) == [0, 2, 1]
        assert await timed(backend.wait_for_work("v2", self.patience)) < self.prompt
        assert await claim_all(backend, "v1") == ["k1", "k2"]
        assert await claim_all(backend, "v2") == ["k3"]

    async def test_submit_with_dispatch_wakes_the_distributor_only_for_leftover_work(
        self, backend: StateBackend
    ) -> None:
        await volunteer(backend, "d", "v")
        await put(backend, "c", ["k1"], into="d", on_top=False, dispatch=True)
        assert await backend.lengths(["d", "v"]) == [0, 1]
        assert await timed(backend.wait_for_work("d", 0.2)) >= 0.1  # nothing left: no wake-up
        await put(backend, "c", ["k2"], into="d", on_top=False, dispatch=True)
        assert await timed(backend.wait_for_work("d", self.patience)) < self.prompt

    async def test_submit_with_dispatch_and_no_volunteer_queues_the_work(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k1", "k2"], into="d", on_top=False, dispatch=True)
        assert await backend.lengths(["d"]) == [2]
        assert await claim_all(backend, "d") == ["k1", "k2"]

    # -- wait edges and cycles --------------------------------------------------------------------

    async def test_waiting_for_itself_is_a_cycle(self, backend: StateBackend) -> None:
        await run_until_running(backend, "w", "k")
        [found] = await put(backend, "w", ["k"], waiter_key="k")
        assert found.cycle == ("k", "k")

    async def test_two_step_cycle(self, backend: StateBackend) -> None:
        assert (await put(backend, "w", ["b"], waiter_key="a"))[0].cycle is None
        assert (await put(backend, "w", ["a"], waiter_key="b"))[0].cycle == ("b", "a", "b")

    async def test_three_step_cycle(self, backend: StateBackend) -> None:
        assert (await put(backend, "w", ["b"], waiter_key="a"))[0].cycle is None
        assert (await put(backend, "w", ["c"], waiter_key="b"))[0].cycle is None
        [found] = await put(backend, "w", ["a"], waiter_key="c")
        assert found.cycle == ("c", "a", "b", "c")

    async def test_shared_sub_requests_are_no_cycle(self, backend: StateBackend) -> None:
        edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("x", "b"), ("d", "e")]
        for waiter, key in edges:
            assert (await put(backend, "w", [key], waiter_key=waiter))[0].cycle is None
        [found] = await put(backend, "w", ["a"], waiter_key="d")
        assert found.cycle in {("d", "a", "b", "d"), ("d", "a", "c", "d")}

    async def test_a_cycle_still_registers_the_waiter(self, backend: StateBackend) -> None:
        await run_until_running(backend, "w1", "a")
        await put(backend, "w1", ["b"], into="w2", waiter_key="a")
        assert await backend.claim("w2") == Claimed("b", new("b").payload)
        [found] = await put(backend, "w2", ["a"], waiter_key="b")
        assert found.cycle == ("b", "a", "b")
        await backend.complete("w1", "a", out("a"), cache=True)
        notes = await backend.take_notifications("w2", self.patience)
        assert notes == [Notification("a", out("a"))]

    async def test_complete_drops_the_wait_edges_of_the_key(self, backend: StateBackend) -> None:
        await run_until_running(backend, "w1", "a")
        await put(backend, "w1", ["b"], waiter_key="a")
        await backend.complete("w1", "a", out("a"), cache=False)
        # a waits for nothing any more, so b waiting for a new run of a is no cycle.
        assert (await put(backend, "w2", ["a"], waiter_key="b"))[0].cycle is None

    async def test_complete_drops_the_wait_edges_into_the_key(self, backend: StateBackend) -> None:
        await run_until_running(backend, "w1", "a")
        await put(backend, "w1", ["b"], into="w2", waiter_key="a")
        assert await backend.claim("w2") == Claimed("b", new("b").payload)
        await backend.complete("w2", "b", out("b"), cache=False)
        # a got b's outcome and waits for it no more; a new run of b may wait for a.
        await put(backend, "c", ["b"], into="w3")
        assert await backend.claim("w3") == Claimed("b", new("b").payload)
        assert (await put(backend, "w3", ["a"], waiter_key="b"))[0].cycle is None

    # -- claim ------------------------------------------------------------------------------------

    async def test_claim_of_an_empty_list_is_none(self, backend: StateBackend) -> None:
        assert await backend.claim("w") is None

    async def test_claim_marks_the_key_running(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await put(backend, "c", ["k"], into="w")
        assert await backend.claim("w") == Claimed("k", new("k").payload)
        assert await backend.state("k") == RequestState.RUNNING
        [info] = await backend.nodes()
        assert (info.work, info.running) == (0, 1)

    async def test_claim_discards_done_running_and_unknown_keys(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["pending"], into="w")
        await make_unknown_done_and_running(backend, also_into="w")
        assert await backend.claim("w") == Claimed("pending", new("pending").payload)
        assert await backend.lengths(["w"]) == [0]
        assert await backend.claim("w") is None

    async def test_concurrent_claims_run_each_key_once(self, backend: StateBackend) -> None:
        keys = [f"k{i}" for i in range(20)]
        await put(backend, "c", keys, into="w1")
        await put(backend, "c", keys, into="w2")
        claims = await asyncio.gather(*(backend.claim(f"w{1 + i % 2}") for i in range(60)))
        claimed = [c.key for c in claims if c is not None]
        assert sorted(claimed) == sorted(keys)

    # -- complete ---------------------------------------------------------------------------------

    async def test_complete_with_cache_stores_the_outcome(self, backend: StateBackend) -> None:
        await run(backend, "w", "k", cache=True)
        assert await backend.state("k") == RequestState.DONE
        assert await backend.result("k") == out("k")
        assert await backend.payloads(["k"]) == [None]
        assert await backend.cache_size() == 1

    async def test_a_done_key_keeps_no_payload(self, backend: StateBackend) -> None:
        """A pending or running key keeps its payload (a worker runs it, an error names it); a
        done one does not, whatever its size (Redis stores up to 512 bytes in chunks): nothing
        runs it again, and a submission that makes it pending again brings its own."""
        block = bytes(range(256)) * 4
        requests = [NewRequest(f"k{size}", block[:size]) for size in (1, 65, 512, 1000)]
        keys = [request.key for request in requests]
        payloads = [request.payload for request in requests]
        await backend.submit("c", requests, into="w", on_top=False)
        assert await backend.payloads(keys) == payloads
        claimed = [await backend.claim("w") for _ in requests]
        assert claimed == [Claimed(r.key, r.payload) for r in requests]
        assert await backend.payloads(keys) == payloads
        for key in keys[:3]:
            await backend.complete("w", key, out(key), cache=True)
        assert await backend.payloads(keys) == [None, None, None, payloads[3]]
        # A repeated completion and a submission of a done key change nothing.
        await backend.complete("w", keys[0], out("other"), cache=True)
        again = await backend.submit("c", requests[:3], into="w", on_top=False)
        assert [submitted.outcome for submitted in again] == [out(key) for key in keys[:3]]
        assert await backend.payloads(keys) == [None, None, None, payloads[3]]
        assert await backend.result(keys[0]) == out(keys[0])
        # Computed again once its result is gone: with the payload of that submission, whole.
        assert await backend.cache_clear() == 3
        await backend.submit("c", [NewRequest(keys[2], b"fresh")], into="w", on_top=False)
        assert await backend.payloads([keys[2]]) == [b"fresh"]
        assert await backend.claim("w") == Claimed(keys[2], b"fresh")

    async def test_complete_without_cache_forgets_the_key(self, backend: StateBackend) -> None:
        await run(backend, "w", "k", cache=False)
        assert await backend.state("k") == RequestState.UNKNOWN
        assert await backend.result("k") is None
        assert await backend.payloads(["k"]) == [None]
        assert await backend.cache_size() == 0
        assert await put(backend, "c", ["k"], into="w") == [Submitted("k")]
        assert await backend.state("k") == RequestState.PENDING
        assert await backend.lengths(["w"]) == [1]

    async def test_complete_notifies_every_waiter_but_the_completing_node(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c1", ["k"], into="w", on_top=False)
        await put(backend, "c2", ["k"], into="w", on_top=False)
        await put(backend, "w", ["k"])
        assert await backend.claim("w") == Claimed("k", new("k").payload)
        await backend.complete("w", "k", out("k"), cache=True)
        for waiter in ("c1", "c2"):
            notes = await backend.take_notifications(waiter, self.patience)
            assert notes == [Notification("k", out("k"))]
        assert await backend.take_notifications("w", 0.05) == []

    async def test_complete_clears_the_waiters(self, backend: StateBackend) -> None:
        await put(backend, "c1", ["k"], into="w")
        await run(backend, "w", "k", cache=False)
        assert await backend.take_notifications("c1", self.patience) == [
            Notification("k", out("k"))
        ]
        await put(backend, "c2", ["k"], into="w")
        await run(backend, "w", "k", cache=False)
        assert await backend.take_notifications("c2", self.patience) == [
            Notification("k", out("k"))
        ]
        assert await backend.take_notifications("c1", 0.05) == []

    async def test_completing_twice_changes_nothing(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k"], into="w")
        assert await backend.claim("w") is not None
        await backend.complete("w", "k", out("k", "first"), cache=True)
        await backend.complete("w", "k", out("k", "second"), cache=True)
        await backend.complete("w", "k", out("k", "third"), cache=False)
        assert await backend.state("k") == RequestState.DONE
        assert await backend.result("k") == out("k", "first")
        assert await backend.cache_size() == 1
        notes = await backend.take_notifications("c", self.patience)
        assert notes == [Notification("k", out("k", "first"))]
        assert await backend.take_notifications("c", 0.05) == []

    async def test_complete_frees_the_running_slot(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await run(backend, "w", "k")
        [info] = await backend.nodes()
        assert (info.work, info.running) == (0, 0)

    async def test_wait_and_claim_wakes_up_holding_the_pushed_request(
        self, backend: StateBackend
    ) -> None:
        assert await backend.wait_and_claim("w", 0.05) is None
        waiting = asyncio.ensure_future(backend.wait_and_claim("w", self.patience))
        await asyncio.sleep(0.05)
        await put(backend, "c", ["k"], into="w")
        assert await asyncio.wait_for(waiting, self.patience + 1) == Claimed("k", new("k").payload)
        assert await backend.state("k") == RequestState.RUNNING

    async def test_complete_and_claim_completes_in_order_then_claims_from_the_top(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["a", "b"], into="w")
        assert await claim_all(backend, "w") == ["b", "a"]
        await put(backend, "w", ["x", "y", "z"])
        done = [Completion("b", out("b"), True), Completion("a", out("a"), False)]
        claimed = await backend.complete_and_claim("w", done, claim=2, volunteer_at="d")
        assert claimed == [Claimed("z", new("z").payload), Claimed("y", new("y").payload)]
        assert await backend.state("b") == RequestState.DONE
        assert await backend.result("b") == out("b")
        assert await backend.state("a") == RequestState.UNKNOWN  # not cached
        assert [await backend.state(key) for key in "zyx"] == [
            RequestState.RUNNING,
            RequestState.RUNNING,
            RequestState.PENDING,
        ]
        notes = await backend.take_notifications("c", self.patience)
        assert notes == [Notification("b", out("b")), Notification("a", out("a"))]
        assert await backend.volunteers("d") == []  # it claimed something: no volunteering

    async def test_submit_and_claim_claims_the_new_top(self, backend: StateBackend) -> None:
        await put(backend, "w", ["old"])
        found, claimed = await backend.submit_and_claim(
            "w", [new("a"), new("b")], into="w", on_top=True, waiter_key="p", claim=1
        )
        assert found == [Submitted("a"), Submitted("b")]
        assert claimed == [Claimed("b", new("b").payload)]
        assert await backend.state("b") == RequestState.RUNNING
        assert await claim_all(backend, "w") == ["a", "old"]
        _, more = await backend.submit_and_claim("w", [], into="w", on_top=True, claim=2)
        assert more == []

    async def test_complete_and_claim_volunteers_when_nothing_is_left(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k"], into="w")
        assert await backend.claim("w") == Claimed("k", new("k").payload)
        done = [Completion("k", out("k"), True)]
        assert await backend.complete_and_claim("w", done, claim=4, volunteer_at="d") == []
        assert await backend.state("k") == RequestState.DONE
        assert await backend.volunteers("d") == ["w"]
        # Once queued, volunteering again keeps one place.
        assert await backend.complete_and_claim("w", [], claim=1, volunteer_at="d") == []
        assert await backend.volunteers("d") == ["w"]

    async def test_complete_and_claim_without_a_claim_neither_claims_nor_volunteers(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["a", "b"], into="w")
        assert await backend.claim("w") == Claimed("b", new("b").payload)
        done = [Completion("b", out("b"), True)]
        assert await backend.complete_and_claim("w", done, claim=0, volunteer_at="d") == []
        assert await backend.state("a") == RequestState.PENDING
        assert await backend.volunteers("d") == []

    async def test_a_completion_by_another_node_than_the_owner_changes_nothing(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w1", NodeKind.WORKER, None, LONG)
        await put(backend, "c", ["k"], into="w1")
        assert await backend.claim("w1") is not None
        await backend.complete("w2", "k", out("k", "late"), cache=True)  # reaped, now late
        assert await backend.state("k") == RequestState.RUNNING
        await backend.complete("w1", "k", out("k"), cache=True)
        assert await backend.result("k") == out("k")

    async def test_a_late_completion_of_a_pending_key_is_taken(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k"], into="w1")
        await backend.complete("w2", "k", out("k"), cache=True)
        assert await backend.result("k") == out("k")
        assert await backend.take_notifications("c", self.patience) == [Notification("k", out("k"))]
        assert await backend.claim("w1") is None

    async def test_completing_a_done_key_still_frees_the_running_slot(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w1", NodeKind.WORKER, None, LONG)
        await put(backend, "c", ["k"], into="w1")
        assert await backend.claim("w1") is not None
        await backend.complete("w1", "k", out("k"), cache=True)
        await backend.complete("w1", "k", out("k", "late"), cache=True)
        [info] = await backend.nodes()
        assert info.running == 0
        assert await backend.result("k") == out("k")

    async def test_a_notification_posted_before_the_call_is_returned_at_once(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k"], into="w")
        await run(backend, "w", "k")
        start = time.monotonic()
        notes = await backend.take_notifications("c", self.patience)
        assert time.monotonic() - start < self.prompt
        assert notes == [Notification("k", out("k"))]

    async def test_take_notifications_returns_nothing_after_its_timeout(
        self, backend: StateBackend
    ) -> None:
        start = time.monotonic()
        assert await backend.take_notifications("c", 0.2) == []
        assert 0.1 <= time.monotonic() - start < 0.2 + self.prompt

    async def test_take_notifications_wakes_when_one_arrives(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k"], into="w")
        taker = asyncio.create_task(backend.take_notifications("c", self.patience))
        await asyncio.sleep(0.05)
        assert not taker.done()
        start = time.monotonic()
        await run(backend, "w", "k")
        assert await asyncio.wait_for(taker, self.patience) == [Notification("k", out("k"))]
        assert time.monotonic() - start < self.prompt

    async def test_take_notifications_drains_the_inbox(self, backend: StateBackend) -> None:
        keys = ["k1", "k2", "k3"]
        await put(backend, "c", keys, into="w")
        for key in keys:
            await run(backend, "w", key)
        notes = await backend.take_notifications("c", self.patience)
        assert sorted(notes, key=lambda n: n.key) == [Notification(k, out(k)) for k in keys]
        assert await backend.take_notifications("c", 0.05) == []

    async def test_no_notification_is_lost_or_repeated(self, backend: StateBackend) -> None:
        keys = [f"k{i:02}" for i in range(30)]
        await put(backend, "c", keys, into="w", on_top=False)
        taken: list[str] = []

        async def listen() -> None:
            while len(taken) < len(keys):
                taken.extend(n.key for n in await backend.take_notifications("c", 0.05))

        listener = asyncio.create_task(listen())
        for index in range(len(keys)):
            claimed = await backend.claim("w")
            assert claimed is not None
            await backend.complete("w", claimed.key, out(claimed.key), cache=index % 2 == 0)
            if index % 3 == 0:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(listener, self.patience)
        assert sorted(taken) == keys
        assert await backend.take_notifications("c", 0.05) == []

    # -- cancel -----------------------------------------------------------------------------------

    async def cancel_all(self, backend: StateBackend, job: str, *roots: str) -> set[str]:
        """Cancel `job`, whose top-level keys were `roots`, to the end; the keys cancelled."""
        cancelled: set[str] = set()
        first: tuple[str, ...] = roots
        while True:
            step = await backend.cancel("canceller", job, roots=first)
            first = ()
            cancelled.update(step.cancelled)
            if not step.remaining:
                return cancelled

    async def test_cancel_deletes_a_pending_root_and_tells_its_waiters(
        self, backend: StateBackend
    ) -> None:
        await backend.submit("c", [new("k")], into="d", on_top=False, job="j1")
        assert await self.cancel_all(backend, "j1", "k") == {"k"}
        assert await backend.state("k") == RequestState.UNKNOWN
        assert await backend.take_notifications("c", self.patience) == [
            Notification("k", b"", cancelled_by="j1")
        ]
        assert await backend.claim("d") is None  # never started

    async def test_cancel_tells_the_owner_of_a_running_root(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await backend.submit("c", [new("k")], into="w", on_top=True, job="j1")
        assert await backend.claim("w") is not None
        assert await self.cancel_all(backend, "j1", "k") == {"k"}
        assert await backend.state("k") == RequestState.RUNNING
        assert await backend.take_notifications("w", self.patience) == [
            Notification("k", b"", cancelled_by="j1")
        ]
        await backend.complete("w", "k", out("k", "cancelled"), cache=False)
        assert await backend.take_notifications("c", self.patience) == [
            Notification("k", out("k", "cancelled"))
        ]

    async def test_cancel_follows_the_wait_edges_down(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await backend.submit("c", [new("top")], into="w", on_top=True, job="j1")
        assert await backend.claim("w") is not None
        await put(backend, "w", ["a", "b"], waiter_key="top")
        await put(backend, "w", ["a1"], waiter_key="a")
        assert await self.cancel_all(backend, "j1", "top") == {"top", "a", "b", "a1"}
        assert await claim_all(backend, "w") == []  # the pending ones are never started

    async def test_cancel_leaves_what_another_job_or_waiting_key_needs(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await backend.submit("c1", [new("r1")], into="w", on_top=True, job="j1")
        await backend.submit("c2", [new("r2")], into="w", on_top=True, job="j2")
        assert await claim_all(backend, "w") == ["r2", "r1"]
        await put(backend, "w", ["shared", "only1"], waiter_key="r1")
        await put(backend, "w", ["shared"], waiter_key="r2")
        await backend.submit("c3", [new("rooted")], into="w", on_top=True, job="j3")
        await backend.submit("c1", [new("rooted")], into="w", on_top=True, job="j1")
        assert await self.cancel_all(backend, "j1", "r1", "rooted") == {"r1", "only1"}
        assert await backend.state("shared") == RequestState.PENDING
        assert await backend.state("rooted") == RequestState.PENDING
        assert await self.cancel_all(backend, "j2", "r2") == {"r2", "shared"}

    async def test_cancel_below_a_request_lets_go_of_what_it_waits_for(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await backend.submit("c", [new("top")], into="w", on_top=True, job="j1")
        assert await backend.claim("w") is not None
        await put(backend, "w", ["a", "b"], waiter_key="top")
        await put(backend, "c2", ["b"], waiter_key="other")
        cancelled: set[str] = set()
        while True:
            step = await backend.cancel("w", "timeout of top", below="top")
            cancelled.update(step.cancelled)
            if not step.remaining:
                break
        assert cancelled == {"a"}  # not `top` itself (its worker fails it), nor `b` (needed)
        assert await backend.state("top") == RequestState.RUNNING
        assert await backend.state("b") == RequestState.PENDING

    async def test_asking_a_client_to_cancel_its_job_reaches_its_inbox(
        self, backend: StateBackend
    ) -> None:
        await backend.join("c", NodeKind.CLIENT, None, LONG)
        assert await backend.ask_to_cancel("c", "c:7")
        notes = await backend.take_notifications("c", self.patience)
        # (a request sent twice asks twice: the client cancels once, the second finds nothing)
        assert notes
        assert set(notes) == {Notification("", b"", cancelled_by="c:7")}
        assert not await backend.ask_to_cancel("nobody", "nobody:1")

    async def test_cancel_leaves_done_keys_and_is_safe_to_repeat(
        self, backend: StateBackend
    ) -> None:
        await backend.submit("c", [new("k")], into="w", on_top=True, job="j1")
        await run_claimed(backend, "w", "k")
        assert await self.cancel_all(backend, "j1", "k") == set()
        assert await backend.result("k") == out("k")
        assert await self.cancel_all(backend, "j1", "k") == set()
        assert await self.cancel_all(backend, "never-submitted") == set()

    # -- partial answers (publish) -----------------------------------------------------------

    async def test_publish_notifies_every_waiter_but_the_owner_and_keeps_them(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c1", ["k"], into="w")
        await put(backend, "c2", ["k"], into="w")
        await run_until_running(backend, "w", "k")
        assert await backend.publish("w", "k", out("k", "1")) is True
        assert await backend.publish("w", "k", out("k", "2")) is True
        for waiter in ("c1", "c2"):
            assert await backend.take_notifications(waiter, self.patience) == [
                Notification("k", out("k", "1"), partial=True),
                Notification("k", out("k", "2"), partial=True),
            ]
        assert await backend.take_notifications("w", 0.05) == []
        await backend.complete("w", "k", out("k", "3"), cache=True)
        assert await backend.take_notifications("c1", self.patience) == [
            Notification("k", out("k", "3"))
        ]

    async def test_a_late_waiter_gets_the_latest_partial_from_submit(
        self, backend: StateBackend
    ) -> None:
        await run_until_running(backend, "w", "k")
        assert await put(backend, "c1", ["k"], into="d") == [Submitted("k", shared=True)]
        await backend.publish("w", "k", out("k", "1"))
        await backend.publish("w", "k", out("k", "2"))
        assert await put(backend, "c2", ["k"], into="d") == [
            Submitted("k", partial=out("k", "2"), shared=True)
        ]
        await backend.publish("w", "k", out("k", "3"))
        assert await backend.take_notifications("c2", self.patience) == [
            Notification("k", out("k", "3"), partial=True)
        ]
        assert await backend.state("k") == RequestState.RUNNING

    async def test_completion_drops_the_partial(self, backend: StateBackend) -> None:
        await run_until_running(backend, "w", "k")
        await backend.publish("w", "k", out("k", "1"))
        await backend.complete("w", "k", out("k", "2"), cache=True)
        assert await put(backend, "c", ["k"]) == [Submitted("k", outcome=out("k", "2"))]
        await run_until_running(backend, "w", "u")
        await backend.publish("w", "u", out("u", "1"))
        await backend.complete("w", "u", out("u", "2"), cache=False)
        assert await put(backend, "c", ["u"]) == [Submitted("u")]

    async def test_publish_by_a_node_that_does_not_run_the_key_changes_nothing(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k"], into="w")
        assert await backend.publish("w", "k", out("k", "pending")) is False
        await run_claimed(backend, "w", "k")
        assert await backend.publish("w", "k", out("k", "done")) is False
        await put(backend, "c", ["r"], into="w")
        assert await backend.claim("w") is not None
        assert await backend.publish("x", "r", out("r", "other")) is False
        assert await backend.publish("w", "never", out("never")) is False
        assert await backend.take_notifications("c", self.patience) == [Notification("k", out("k"))]
        assert await backend.take_notifications("c", 0.05) == []
        assert await put(backend, "c2", ["r"], into="d") == [Submitted("r", shared=True)]

    # -- waiting for work -------------------------------------------------------------------------

    async def test_wait_for_work_returns_at_once_after_a_push(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k"], into="w")
        assert await timed(backend.wait_for_work("w", self.patience)) < self.prompt

    async def test_wait_for_work_wakes_on_a_push(self, backend: StateBackend) -> None:
        waiter = asyncio.create_task(backend.wait_for_work("w", self.patience))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        start = time.monotonic()
        await put(backend, "c", ["k"], into="w", on_top=False)
        await asyncio.wait_for(waiter, self.patience)
        assert time.monotonic() - start < self.prompt

    async def test_wait_for_work_ends_by_its_timeout(self, backend: StateBackend) -> None:
        assert await timed(backend.wait_for_work("idle", 0.2)) < 0.2 + self.prompt

    async def test_volunteering_wakes_a_distributor_with_work(self, backend: StateBackend) -> None:
        await volunteer(backend, "d", "w1")
        assert await timed(backend.wait_for_work("d", 0.2)) >= 0.1  # nothing to hand out
        await put(backend, "c", ["k"], into="d", on_top=False)
        assert await timed(backend.wait_for_work("d", self.patience)) < self.prompt
        await volunteer(backend, "d", "w2")
        assert await timed(backend.wait_for_work("d", self.patience)) < self.prompt

    async def test_hand_out_wakes_the_volunteer(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k"], into="d", on_top=False)
        await volunteer(backend, "d", "w")
        assert await backend.hand_out("d") == [Assignment("k", "w")]
        assert await timed(backend.wait_for_work("w", self.patience)) < self.prompt

    async def test_stealing_wakes_the_distributor(self, backend: StateBackend) -> None:
        await put(backend, "w", ["k"])
        assert await backend.steal("d", "w", 1) == 1
        assert await timed(backend.wait_for_work("d", self.patience)) < self.prompt

    async def test_leaving_wakes_the_distributor(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await put(backend, "w", ["k"])
        assert await backend.leave("w") == 1
        assert await timed(backend.wait_for_work("d", self.patience)) < self.prompt

    # -- volunteers and hand_out ------------------------------------------------------------------

    async def test_volunteers_queue_first_in_first_out(self, backend: StateBackend) -> None:
        for node in ("v1", "v2", "v3"):
            await volunteer(backend, "d", node)
        assert await backend.volunteers("d") == ["v1", "v2", "v3"]

    async def test_volunteering_twice_keeps_one_entry(self, backend: StateBackend) -> None:
        for node in ("v1", "v2", "v1", "v2"):
            await volunteer(backend, "d", node)
        assert await backend.volunteers("d") == ["v1", "v2"]

    async def test_hand_out_gives_the_top_of_the_queue_to_the_oldest_volunteer(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k1", "k2", "k3"], into="d", on_top=False)
        await volunteer(backend, "d", "v1")
        await volunteer(backend, "d", "v2")
        assert await backend.hand_out("d") == [Assignment("k1", "v1"), Assignment("k2", "v2")]
        assert await backend.volunteers("d") == []
        assert await backend.lengths(["d", "v1", "v2"]) == [1, 1, 1]
        assert await backend.claim("v1") == Claimed("k1", new("k1").payload)

    async def test_hand_out_skips_keys_nobody_can_claim(self, backend: StateBackend) -> None:
        await put(backend, "c", ["pending"], into="d")
        await make_unknown_done_and_running(backend, also_into="d")
        await volunteer(backend, "d", "v")
        assert await backend.hand_out("d") == [Assignment("pending", "v")]
        assert await backend.lengths(["d", "v"]) == [0, 1]

    async def test_hand_out_without_pending_work_keeps_the_volunteers(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["done"], into="d")
        await run(backend, "x", "done")
        await volunteer(backend, "d", "v")
        assert await backend.hand_out("d") == []
        assert await backend.volunteers("d") == ["v"]
        assert await backend.lengths(["v"]) == [0]

    async def test_hand_out_without_volunteers_keeps_the_work(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k"], into="d", on_top=False)
        assert await backend.hand_out("d") == []
        assert await backend.lengths(["d"]) == [1]

    async def test_hand_out_pushes_on_top_of_the_volunteers_list(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "v", ["own"])
        await put(backend, "c", ["k"], into="d", on_top=False)
        await volunteer(backend, "d", "v")
        assert await backend.hand_out("d") == [Assignment("k", "v")]
        assert await claim_all(backend, "v") == ["k", "own"]

    async def test_handed_out_keys_count_as_pops_of_the_distributor(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k1", "k2", "k3"], into="d", on_top=False)
        await volunteer(backend, "d", "v1")
        await volunteer(backend, "d", "v2")
        assert len(await backend.hand_out("d")) == 2
        assert await backend.trim("p", ["d"]) == 0
        assert await backend.lengths(["d", "p"]) == [1, 0]
        assert await backend.trim("p", ["d"]) == 1
        assert await backend.lengths(["d", "p"]) == [0, 1]

    async def test_hand_out_an_even_share_of_the_queue(self, backend: StateBackend) -> None:
        keys = ["k1", "k2", "k3", "k4", "k5"]
        await put(backend, "c", keys, into="d", on_top=False)
        await volunteer(backend, "d", "v1")
        await volunteer(backend, "d", "v2")
        handed = await backend.hand_out("d", even_share=True)
        assert sorted(handed, key=lambda a: a.key) == [
            Assignment("k1", "v1"),
            Assignment("k2", "v1"),
            Assignment("k3", "v1"),
            Assignment("k4", "v2"),
            Assignment("k5", "v2"),
        ]
        assert await backend.lengths(["d"]) == [0]
        assert await claim_all(backend, "v1") == ["k1", "k2", "k3"]
        assert await claim_all(backend, "v2") == ["k4", "k5"]
        # All five count as the distributor's pops.
        await put(backend, "c", ["j1", "j2", "j3", "j4"], into="d", on_top=False)
        assert await backend.trim("p", ["d"]) == 0

    async def test_an_even_share_of_a_short_queue_is_one_key_each(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["k1", "k2"], into="d", on_top=False)
        for node in ("v1", "v2", "v3"):
            await volunteer(backend, "d", node)
        handed = await backend.hand_out("d", even_share=True)
        assert sorted(handed, key=lambda a: a.key) == [
            Assignment("k1", "v1"),
            Assignment("k2", "v2"),
        ]
        assert await backend.volunteers("d") == ["v3"]

    async def test_hand_out_drops_volunteers_that_are_no_registered_node(
        self, backend: StateBackend
    ) -> None:
        await backend.volunteer("d", "nobody")  # never joined: a forged or stale name
        await backend.join("gone", NodeKind.WORKER, "d", LONG)
        await backend.volunteer("d", "gone")
        await backend.leave("gone")
        await volunteer(backend, "d", "v")
        await put(backend, "c", ["k1", "k2"], into="d", on_top=False)
        assert await backend.hand_out("d") == [Assignment("k1", "v")]
        assert await backend.volunteers("d") == []
        assert await backend.lengths(["nobody", "gone"]) == [0, 0]

    # -- trim and steal ---------------------------------------------------------------------------

    async def test_trim_leaves_each_member_what_it_claimed(self, backend: StateBackend) -> None:
        await put(backend, "w1", ["k1", "k2", "k3", "k4", "k5"])
        await put(backend, "w2", ["j1", "j2"])
        assert await backend.claim("w1") == Claimed("k5", new("k5").payload)
        assert await backend.claim("w1") == Claimed("k4", new("k4").payload)
        assert await backend.trim("d", ["w1", "w2"]) == 3
        assert await backend.lengths(["w1", "w2", "d"]) == [2, 0, 3]
        assert await claim_all(backend, "w1") == ["k3", "k2"]

    async def test_trim_moves_the_oldest_first(self, backend: StateBackend) -> None:
        await put(backend, "c", ["x"], into="d", on_top=False)
        await put(backend, "w", ["k1", "k2", "k3", "k4"])
        assert await backend.trim("d", ["w"]) == 4
        assert await claim_all(backend, "d") == ["x", "k1", "k2", "k3", "k4"]

    async def test_trim_resets_the_claim_count(self, backend: StateBackend) -> None:
        await put(backend, "w", ["k1", "k2", "k3"])
        assert await backend.claim("w") == Claimed("k3", new("k3").payload)
        assert await backend.trim("d", ["w"]) == 1
        assert await backend.trim("d", ["w"]) == 1
        assert await backend.lengths(["w", "d"]) == [0, 2]
        assert await claim_all(backend, "d") == ["k1", "k2"]

    async def test_trim_moves_nothing_when_claims_exceed_the_list(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "w", ["k1", "k2", "k3"])
        assert len(await claim_all(backend, "w")) == 3
        await put(backend, "w", ["m1", "m2"])
        assert await backend.trim("d", ["w"]) == 0
        assert await backend.lengths(["w", "d"]) == [2, 0]

    async def test_steal_takes_the_oldest_from_the_bottom(self, backend: StateBackend) -> None:
        await put(backend, "c", ["x"], into="d", on_top=False)
        await put(backend, "w", ["k1", "k2", "k3", "k4", "k5"])
        assert await backend.steal("d", "w", 2) == 2
        assert await claim_all(backend, "d") == ["x", "k1", "k2"]
        assert await claim_all(backend, "w") == ["k5", "k4", "k3"]

    async def test_steal_moves_at_most_what_there_is(self, backend: StateBackend) -> None:
        await put(backend, "w", ["k1", "k2"])
        assert await backend.steal("d", "w", 10) == 2
        assert await backend.steal("d", "w", 1) == 0
        assert await backend.steal("d", "nobody", 3) == 0
        assert await backend.lengths(["w", "d"]) == [0, 2]

    async def test_lengths_counts_each_list(self, backend: StateBackend) -> None:
        await put(backend, "a", ["k1", "k2"])
        await put(backend, "c", ["k3"], into="b", on_top=False)
        assert await backend.lengths(["a", "b", "none", "a"]) == [2, 1, 0, 2]

    # -- membership -------------------------------------------------------------------------------

    async def test_join_registers_the_node(self, backend: StateBackend) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await backend.join("c", NodeKind.CLIENT, None, LONG)
        assert {info.node: info for info in await backend.nodes()} == {
            "d": NodeInfo("d", NodeKind.DISTRIBUTOR, None, True, 0, 0),
            "w": NodeInfo("w", NodeKind.WORKER, "d", True, 0, 0),
            "c": NodeInfo("c", NodeKind.CLIENT, None, True, 0, 0),
        }
        assert await backend.members("d") == ["w"]

    async def test_nodes_counts_work_and_running_keys(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await put(backend, "w", ["k1", "k2", "k3"])
        assert await backend.claim("w") is not None
        assert await backend.nodes() == [NodeInfo("w", NodeKind.WORKER, "d", True, 2, 1)]

    async def test_joining_again_moves_the_node(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, "d1", LONG)
        await backend.join("w", NodeKind.WORKER, "d2", LONG)
        assert await backend.members("d1") == []
        assert await backend.members("d2") == ["w"]
        assert await backend.nodes() == [NodeInfo("w", NodeKind.WORKER, "d2", True, 0, 0)]

    async def test_members_are_the_live_nodes_of_a_distributor(self, backend: StateBackend) -> None:
        for node, distributor in [("w2", "d"), ("w1", "d"), ("w3", "other"), ("x", None)]:
            await backend.join(node, NodeKind.WORKER, distributor, LONG)
        assert sorted(await backend.members("d")) == ["w1", "w2"]
        assert await backend.members("other") == ["w3"]
        assert await backend.members("none") == []

    async def test_heartbeat_is_false_for_an_unknown_node(self, backend: StateBackend) -> None:
        assert (await backend.heartbeat("ghost", LONG)).registered is False
        await backend.join("w", NodeKind.WORKER, None, LONG)
        assert (await backend.heartbeat("w", LONG)).registered is True

    async def test_heartbeat_publishes_the_nodes_counters(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await backend.heartbeat("w", LONG, {"ran": 3, "failed": 1})
        await backend.heartbeat("ghost", LONG, {"ran": 9})
        assert await backend.nodes() == [
            NodeInfo("w", NodeKind.WORKER, "d", True, 0, 0, {"ran": 3, "failed": 1})
        ]
        await backend.heartbeat("w", LONG)  # no counters: the last ones stay
        assert (await backend.nodes())[0].counters == {"ran": 3, "failed": 1}
        await backend.heartbeat("w", LONG, {"ran": 4, "failed": 1})
        assert (await backend.nodes())[0].counters == {"ran": 4, "failed": 1}
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        assert (await backend.nodes())[0].counters == {}

    async def test_work_lists_are_every_list_with_work_nodes_or_not(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await put(backend, "c", ["k1", "k2"], into="typo", on_top=False)
        await put(backend, "c", ["k3"], into="d", on_top=False)
        await put(backend, "w", ["k4"])
        assert await backend.claim("w") is not None
        assert await backend.work_lists() == {"d": 1, "typo": 2}

    async def test_heartbeat_extends_the_lease(self, backend: StateBackend) -> None:
        await backend.join("w1", NodeKind.WORKER, "d", self.lease)
        await backend.join("w2", NodeKind.WORKER, "d", self.lease)
        assert (await backend.heartbeat("w1", LONG)).registered is True
        reaped = await self.reap_until(backend, "r", {"w2"})
        assert "w1" not in reaped.dead
        assert await backend.members("d") == ["w1"]
        assert (await backend.heartbeat("w1", LONG)).registered is True

    async def test_an_expired_node_is_not_alive_until_it_beats_again(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w", NodeKind.WORKER, "d", self.lease)

        async def dead() -> bool:
            return not any(info.alive for info in await backend.nodes())

        await eventually(dead, self.lease + self.patience, "the lease runs out")
        assert await backend.members("d") == []
        # Not reaped yet: still registered, so a late heartbeat revives it.
        assert (await backend.heartbeat("w", LONG)).registered is True
        assert await backend.members("d") == ["w"]

    async def test_leave_hands_back_the_list_and_the_running_keys(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await put(backend, "c", ["x"], into="d", on_top=False)
        await put(backend, "c", ["k1", "k2", "k3"], into="w")
        assert await backend.claim("w") == Claimed("k3", new("k3").payload)
        assert await backend.leave("w") == 3
        assert await backend.state("k3") == RequestState.PENDING
        assert await backend.lengths(["w"]) == [0]
        handed_back = await claim_all(backend, "d")
        assert handed_back[0] == "x"
        assert sorted(handed_back[1:]) == ["k1", "k2", "k3"]

    async def test_leave_deregisters_the_node(self, backend: StateBackend) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await volunteer(backend, "d", "w")
        await backend.leave("w")
        assert (await backend.heartbeat("w", LONG)).registered is False
        assert [info.node for info in await backend.nodes()] == ["d"]
        assert await backend.members("d") == []
        assert await backend.volunteers("d") == []

    async def test_leave_of_an_unknown_node_hands_back_nothing(self, backend: StateBackend) -> None:
        assert await backend.leave("ghost") == 0

    async def test_the_clock_rises_at_every_heartbeat(self, backend: StateBackend) -> None:
        await backend.join("a", NodeKind.WORKER, None, LONG)
        first = await backend.heartbeat("a", LONG)
        second = await backend.heartbeat("ghost", LONG)
        third = await backend.heartbeat("a", LONG)
        assert (first.registered, second.registered, third.registered) == (True, False, True)
        assert first.clock < second.clock < third.clock

    async def test_reconcile_gives_back_what_the_node_does_not_run(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await put(backend, "c", ["k3", "k2", "k1"], into="w")
        assert await claim_all(backend, "w") == ["k1", "k2", "k3"]
        await backend.complete("w", "k3", out("k3"), cache=True)
        assert await backend.reconcile("w", ["k1"]) == 1
        assert await backend.state("k1") == RequestState.RUNNING
        assert await backend.state("k2") == RequestState.PENDING
        [info] = [info for info in await backend.nodes() if info.node == "w"]
        assert info.running == 1
        await volunteer(backend, "d", "v")
        assert await backend.hand_out("d") == [Assignment("k2", "v")]
        assert await backend.reconcile("w", ["k1"]) == 0

    async def test_a_node_that_left_gets_no_notifications(self, backend: StateBackend) -> None:
        await backend.join("c", NodeKind.CLIENT, None, LONG)
        await put(backend, "c", ["k"], into="w")
        await backend.leave("c")
        assert await backend.claim("w") is not None
        await backend.complete("w", "k", out("k"), cache=True)
        assert await backend.take_notifications("c", 0.05) == []
        await backend.join("c", NodeKind.CLIENT, None, LONG)  # the same name, back again
        await put(backend, "c", ["j"], into="w")
        await run_claimed(backend, "w", "j")
        assert await backend.take_notifications("c", self.patience) == [Notification("j", out("j"))]

    # -- reap -------------------------------------------------------------------------------------

    async def test_reap_leaves_live_nodes_alone(self, backend: StateBackend) -> None:
        await live_reaper(backend, "r")
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await put(backend, "w", ["k"])
        assert await backend.reap("r", 3) == Reaped()
        assert (await backend.heartbeat("w", LONG)).registered is True
        assert await backend.lengths(["w"]) == [1]

    async def test_a_reaper_whose_own_lease_ran_out_reaps_nobody_until_it_beats(
        self, backend: StateBackend
    ) -> None:
        """What kept the reaper from beating (an outage it waited out, a stall) kept the others
        too: judged right then, every lease looks out."""
        await backend.join("w", NodeKind.WORKER, "d", self.lease)
        await backend.join("r", NodeKind.CLIENT, None, self.lease)
        await put(backend, "w", ["k"])
        await asyncio.sleep(self.lease * 2)
        assert await backend.reap("r", 3) == Reaped()
        assert await backend.reap("stranger", 3) == Reaped()  # nor does a node not registered
        assert await backend.lengths(["w"]) == [1]
        assert await self.reap_until(backend, "r", {"w"}) == Reaped(("w",), 1)

    async def test_reap_requeues_a_dead_nodes_work_at_its_distributor(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", self.lease)
        await put(backend, "c", ["x"], into="d", on_top=False)
        await put(backend, "c", ["k1", "k2", "k3"], into="w")
        assert await backend.claim("w") == Claimed("k3", new("k3").payload)
        reaped = await self.reap_until(backend, "r", {"w"})
        assert reaped == Reaped(("w",), 3, ())
        assert await backend.state("k3") == RequestState.PENDING
        assert await backend.lengths(["w"]) == [0]
        requeued = await claim_all(backend, "d")
        assert requeued[0] == "x"
        assert sorted(requeued[1:]) == ["k1", "k2", "k3"]

    async def test_reap_removes_membership_volunteering_and_inbox(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", self.lease)
        await volunteer(backend, "d", "w")
        await put(backend, "w", ["k"], into="x")
        await run_claimed(backend, "x", "k")
        await self.reap_until(backend, "d", {"w"})
        assert (await backend.heartbeat("w", LONG)).registered is False
        assert [info.node for info in await backend.nodes()] == ["d"]
        assert await backend.members("d") == []
        assert await backend.volunteers("d") == []
        assert await backend.take_notifications("w", 0.05) == []

    async def test_reap_counts_crashes_and_gives_up_at_the_limit(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("r", NodeKind.CLIENT, None, LONG)
        await backend.join("w1", NodeKind.WORKER, "d", self.lease)
        await put(backend, "c", ["k"], into="w1")
        assert await backend.claim("w1") == Claimed("k", new("k").payload)
        assert await self.reap_until(backend, "r", {"w1"}, max_crashes=2) == Reaped(("w1",), 1)
        assert await backend.state("k") == RequestState.PENDING

        await backend.join("w2", NodeKind.WORKER, "d", self.lease)
        await volunteer(backend, "d", "w2")
        assert await backend.hand_out("d") == [Assignment("k", "w2")]
        assert await backend.claim("w2") == Claimed("k", new("k").payload)
        reaped = await self.reap_until(backend, "r", {"w2"}, max_crashes=2)
        assert reaped == Reaped(("w2",), 0, ("k",))
        assert await backend.lengths(["d"]) == [0]
        # The reaper now owns the key and must complete it; its waiters hear of it.
        assert await backend.state("k") == RequestState.RUNNING
        assert {info.node: info.running for info in await backend.nodes()} == {"d": 0, "r": 1}
        await backend.complete("r", "k", out("k", "crashed"), cache=False)
        notes = await backend.take_notifications("c", self.patience)
        assert notes == [Notification("k", out("k", "crashed"))]
        assert await backend.state("k") == RequestState.UNKNOWN

    async def test_a_request_that_crashed_a_worker_is_claimed_alone(
        self, backend: StateBackend
    ) -> None:
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("r", NodeKind.CLIENT, None, LONG)
        # "bad" was running on w1 when w1 died: its crash count is 1.
        await backend.join("w1", NodeKind.WORKER, "d", self.lease)
        await put(backend, "c", ["bad"], into="w1")
        assert await backend.claim("w1") is not None
        await self.reap_until(backend, "r", {"w1"})
        await backend.join("w2", NodeKind.WORKER, "d", LONG)
        await volunteer(backend, "d", "w2")
        assert await backend.hand_out("d") == [Assignment("bad", "w2")]
        await put(backend, "c", ["fresh1"], into="w2")
        await put(backend, "c", ["fresh2"], into="w2", on_top=False)
        # On top: fresh1, then bad (crashed before), then fresh2.
        claimed = await backend.complete_and_claim("w2", [], claim=5)
        assert [c.key for c in claimed] == ["fresh1"]  # stops before the crashed key
        claimed = await backend.complete_and_claim("w2", [], claim=5)
        assert [c.key for c in claimed] == ["bad"]  # which then comes alone
        claimed = await backend.complete_and_claim("w2", [], claim=5)
        assert [c.key for c in claimed] == ["fresh2"]

    async def test_a_dead_node_without_distributor_keeps_its_list(
        self, backend: StateBackend
    ) -> None:
        await backend.join("w", NodeKind.WORKER, None, self.lease)
        await put(backend, "c", ["k1", "k2"], into="w")
        await self.reap_until(backend, "r", {"w"})
        assert (await backend.heartbeat("w", LONG)).registered is False
        assert await backend.lengths(["w"]) == [2]
        await backend.join("w", NodeKind.WORKER, None, LONG)
        assert await claim_all(backend, "w") == ["k2", "k1"]

    # -- queries and housekeeping -----------------------------------------------------------------

    async def test_state_and_result_follow_a_key(self, backend: StateBackend) -> None:
        assert (await backend.state("k"), await backend.result("k")) == (RequestState.UNKNOWN, None)
        await put(backend, "c", ["k"], into="w")
        assert (await backend.state("k"), await backend.result("k")) == (RequestState.PENDING, None)
        assert await backend.claim("w") is not None
        assert (await backend.state("k"), await backend.result("k")) == (RequestState.RUNNING, None)
        await backend.complete("w", "k", out("k"), cache=True)
        assert (await backend.state("k"), await backend.result("k")) == (
            RequestState.DONE,
            out("k"),
        )

    async def test_payloads_and_outcomes_of_every_size_come_back_whole(
        self, backend: StateBackend
    ) -> None:
        """Around the sizes at which a backend may store a value differently (Redis keeps a
        value of up to 512 bytes in chunks of 64)."""
        sizes = (0, 1, 63, 64, 65, 128, 129, 511, 512, 513, 5000)
        block = bytes(range(256)) * 20
        requests = [NewRequest(f"k{size}", block[:size]) for size in sizes]
        outcomes = [block[1 : size + 1] for size in sizes]
        await backend.submit("c", requests, into="w", on_top=False)
        assert await backend.payloads([r.key for r in requests]) == [r.payload for r in requests]
        for request, outcome in zip(requests, outcomes, strict=True):
            assert await backend.claim("w") == Claimed(request.key, request.payload)
            await backend.complete("w", request.key, outcome, cache=True)
        assert [await backend.result(r.key) for r in requests] == outcomes
        again = await backend.submit("c", requests, into="w", on_top=False)
        assert [submitted.outcome for submitted in again] == outcomes
        assert (await backend.cache_stats()).bytes == sum(sizes)

    async def test_payloads_of_several_keys(self, backend: StateBackend) -> None:
        await put(backend, "c", ["a", "b"], into="w")
        assert await backend.payloads(["a", "none", "b"]) == [
            new("a").payload,
            None,
            new("b").payload,
        ]
        assert await backend.payloads([]) == []

    async def test_cache_size_counts_cached_outcomes(self, backend: StateBackend) -> None:
        assert await backend.cache_size() == 0
        for key in ("a", "b", "c"):
            await run(backend, "w", key, cache=True)
        await run(backend, "w", "d", cache=False)
        assert await backend.cache_size() == 3

    # -- the result cache -----------------------------------------------------------------------

    async def cache_as(
        self, backend: StateBackend, key: str, function: str, ttl: float | None = None
    ) -> None:
        """Run `key` on "w" and complete it, cached under `function` with `ttl`."""
        await put(backend, "w", [key])
        claimed = await backend.claim("w")
        assert claimed is not None
        assert claimed.key == key
        await backend.complete("w", key, out(key), cache=True, ttl=ttl, function=function)

    async def test_cache_stats_count_entries_and_bytes_per_function(
        self, backend: StateBackend
    ) -> None:
        assert await backend.cache_stats() == CacheStats(0, 0, {})
        for key, function in (("a", "f"), ("b", "f"), ("c", "g")):
            await self.cache_as(backend, key, function)
        await run(backend, "w", "d", cache=False)
        await put(backend, "c", ["pending"], into="x")

        assert await backend.cache_stats() == CacheStats(
            3,
            cached_size("a", "b", "c"),
            {"f": CacheUsage(2, cached_size("a", "b")), "g": CacheUsage(1, cached_size("c"))},
        )

    async def test_a_cached_outcome_expires_after_its_ttl(self, backend: StateBackend) -> None:
        await self.cache_as(backend, "long", "f", ttl=LONG)
        await self.cache_as(backend, "forever", "f")
        await self.cache_as(backend, "short", "f", ttl=1.0)
        assert await backend.result("short") == out("short")

        async def expired() -> bool:
            return await backend.state("short") == RequestState.UNKNOWN

        await eventually(expired, self.patience, "the outcome with a ttl of 1 s expired")
        assert await backend.result("short") is None
        assert await backend.payloads(["short"]) == [None]
        assert (await backend.cache_stats()).functions == {
            "f": CacheUsage(2, cached_size("long", "forever"))
        }
        # Expired, the key is computed again: the next request queues it.
        assert await put(backend, "c", ["short"], into="w") == [Submitted("short")]
        assert await backend.state("short") == RequestState.PENDING
        for key in ("long", "forever"):
            assert await backend.result(key) == out(key)

    async def test_a_ttl_travels_with_complete_and_claim(self, backend: StateBackend) -> None:
        await put(backend, "c", ["k", "next"], into="w")
        claimed = await backend.claim("w")
        assert claimed is not None
        assert claimed.key == "next"
        completion = Completion("next", out("next"), True, ttl=1.0, function="f")
        assert await backend.complete_and_claim("w", [completion], claim=1) == [
            Claimed("k", new("k").payload)
        ]
        assert (await backend.cache_stats()).functions["f"].entries == 1

        async def expired() -> bool:
            return await backend.result("next") is None

        await eventually(expired, self.patience, "the outcome with a ttl of 1 s expired")

    async def test_a_pending_or_running_key_never_expires(self, backend: StateBackend) -> None:
        """Only a cached outcome expires: a key requested again after its outcome expired
        waits and runs as long as it takes."""
        await self.cache_as(backend, "k", "f", ttl=0.2)

        async def expired() -> bool:
            return await backend.state("k") == RequestState.UNKNOWN

        await eventually(expired, self.patience, "the outcome expired")
        await put(backend, "c", ["k"], into="w")
        await asyncio.sleep(0.4)
        assert await backend.state("k") == RequestState.PENDING
        assert await backend.claim("w") == Claimed("k", new("k").payload)
        await asyncio.sleep(0.4)
        assert await backend.state("k") == RequestState.RUNNING

    async def test_cache_clear_of_one_function_leaves_the_rest(self, backend: StateBackend) -> None:
        await self._cache_a_b_c(backend, "f", "f", "g")
        assert await backend.cache_clear("f") == 2
        assert await backend.cache_clear("f") == 0
        await self._only_a_b_dropped(backend, "g")

    async def test_cache_clear_of_everything(self, backend: StateBackend) -> None:
        for key, function in (("a", "f"), ("b", ""), ("c", "g")):
            await self.cache_as(backend, key, function)
        await put(backend, "c", ["pending"], into="x")
        assert await backend.cache_clear() == 3
        assert await backend.cache_stats() == CacheStats(0, 0, {})
        assert await backend.cache_size() == 0
        assert await backend.state("pending") == RequestState.PENDING
        assert await backend.claim("x") == Claimed("pending", new("pending").payload)

    async def test_forget_deletes_only_the_done_keys_named(self, backend: StateBackend) -> None:
        await self._cache_a_b_c(backend, "f", "f", "f")
        assert await backend.forget(["a", "b", "pending", "running", "unknown"]) == 2
        assert await backend.forget(["a", "b"]) == 0
        assert await backend.forget([]) == 0
        await self._only_a_b_dropped(backend, "f")

    async def _cache_a_b_c(self, backend: StateBackend, *functions: str) -> None:
        """Keys a, b, c cached (by `functions`, in order), one pending and one running."""
        for key, function in zip(("a", "b", "c"), functions, strict=True):
            await self.cache_as(backend, key, function)
        await put(backend, "c", ["pending"], into="x")
        await run_until_running(backend, "w", "running")

    async def _only_a_b_dropped(self, backend: StateBackend, c_function: str) -> None:
        """After `_cache_a_b_c`: a and b are unknown (a runs again when asked), the rest stays."""
        assert [await backend.state(k) for k in ("a", "b", "c", "pending", "running")] == [
            RequestState.UNKNOWN,
            RequestState.UNKNOWN,
            RequestState.DONE,
            RequestState.PENDING,
            RequestState.RUNNING,
        ]
        usage = {c_function: CacheUsage(1, cached_size("c"))}
        assert (await backend.cache_stats()).functions == usage
        assert await put(backend, "c2", ["a"], into="w") == [Submitted("a")]
        assert await backend.claim("w") == Claimed("a", new("a").payload)

    async def test_flush_deletes_everything(self, backend: StateBackend) -> None:
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await put(backend, "c", ["k", "j"], into="w")
        await run_claimed(backend, "w", "j")
        await volunteer(backend, "d", "w")
        await backend.flush()
        assert await backend.cache_size() == 0
        assert await backend.nodes() == []
        assert (await backend.heartbeat("w", LONG)).registered is False
        assert await backend.lengths(["w"]) == [0]
        assert await backend.volunteers("d") == []
        assert await backend.state("k") == RequestState.UNKNOWN
        assert await backend.state("j") == RequestState.UNKNOWN
        assert await backend.payloads(["k", "j"]) == [None, None]
        assert await backend.take_notifications("c", 0.05) == []

    async def test_servers_serve_every_slot_once_and_one_of_them_the_grids(
        self, backend: StateBackend
    ) -> None:
        """Each server once, with its share of the 16,384 hash slots; one serves the grid's
        own. (A backend whose state is in this process has no server.)"""
        loads = await backend.servers()
        assert all(isinstance(load, ServerLoad) for load in loads)
        if loads:
            assert sum(load.slots for load in loads) == 16384
            assert [load.grid_slot for load in loads].count(True) == 1
            assert len({load.address for load in loads}) == len(loads)
            assert all(load.memory > 0 and load.commands > 0 for load in loads)

    async def test_unknown_keys_and_nodes_are_empty(self, backend: StateBackend) -> None:
        assert await backend.claim("ghost") is None
        await backend.complete("ghost", "nokey", b"x", cache=False)
        assert await backend.state("nokey") == RequestState.UNKNOWN
        assert await backend.hand_out("ghost") == []
        assert await backend.trim("ghost", ["ghost2"]) == 0
        assert await backend.volunteers("ghost") == []
        assert await backend.members("ghost") == []
        assert await backend.lengths(["ghost"]) == [0]
        assert await backend.nodes() == []
        assert await backend.work_lists() == {}
        assert await backend.take_notifications("ghost", 0) == []

    # -- events -----------------------------------------------------------------------------------

    async def test_events_are_published_only_while_someone_reads_them(
        self, backend: StateBackend
    ) -> None:
        await put(backend, "c", ["unwatched"], into="w")
        assert await backend.events() == []  # nobody read them: nothing was published
        await put(backend, "c", ["watched"], into="w")
        assert [e.key for e in await events_of(backend)] == ["watched"]

    async def test_events_follow_a_request_from_submit_to_finish(
        self, backend: StateBackend
    ) -> None:
        await watch(backend)
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        before = time.time()
        await backend.submit("c", [NewRequest("k", b"p", "fib")], into="w", on_top=True, job="j1")
        assert await backend.claim("w") == Claimed("k", b"p")
        await backend.complete_and_claim("w", [Completion("k", out("k"), True)], claim=0)
        await backend.submit("c2", [NewRequest("k", b"p", "fib")], into="w", on_top=True)
        joined = await events_of(backend, EventKind.JOINED)
        assert [(e.node, e.parent, e.detail) for e in joined] == [("w", "d", "worker")] * len(
            joined
        )
        found = [e for e in await events_of(backend) if e.key == "k"]
        assert [(e.kind, e.node, e.detail) for e in found] == [
            (EventKind.SUBMITTED, "c", "new"),
            (EventKind.CLAIMED, "w", ""),
            (EventKind.FINISHED, "w", "cached"),
            (EventKind.SUBMITTED, "c2", "cached"),
        ]
        assert (found[0].name, found[0].job, found[0].parent) == ("fib", "j1", "")
        assert all(before - 5 <= e.time <= time.time() + 5 for e in found)

    async def test_events_say_what_a_submit_shared_and_who_waits(
        self, backend: StateBackend
    ) -> None:
        await watch(backend)
        await backend.join("w", NodeKind.WORKER, None, LONG)
        await put(backend, "c", ["k"], into="w")
        await backend.submit("w", [NewRequest("k", b"p", "f")], into="w", on_top=True)
        assert await backend.claim("w") is not None
        await backend.submit(
            "w",
            [NewRequest("k", b"p", "f"), NewRequest("j", b"q", "g")],
            into="w",
            on_top=True,
            waiter_key="parent",
        )
        found = await events_of(backend, EventKind.SUBMITTED)
        assert [(e.node, e.key, e.detail) for e in found] == [
            ("c", "k", "new"),
            ("w", "k", "shared"),  # pending: joins the run to come
            ("w", "k", "shared"),  # running
            ("w", "j", "new"),
        ]
        assert [(e.parent, e.name) for e in found[2:]] == [("parent", "f"), ("parent", "g")]

    async def test_a_failed_completion_is_a_failed_event_with_its_chain(
        self, backend: StateBackend
    ) -> None:
        await watch(backend)
        await put(backend, "c", ["k", "j"], into="w")
        await claim_all(backend, "w")
        chain = "f(1): ZeroDivisionError: division by zero\n  g(0): boom"
        await backend.complete_and_claim(
            "w", [Completion("k", out("k"), False, error=chain)], claim=0
        )
        await backend.complete("w", "j", out("j"), cache=False, error="j: bad")
        found = await events_of(backend, EventKind.FINISHED, EventKind.FAILED)
        assert [(e.kind, e.key, e.detail) for e in found] == [
            (EventKind.FAILED, "k", chain),
            (EventKind.FAILED, "j", "j: bad"),
        ]

    async def test_cancelling_a_pending_key_is_a_cancelled_event(
        self, backend: StateBackend
    ) -> None:
        await watch(backend)
        await backend.submit("c", [new("k"), new("j")], into="w", on_top=True, job="job1")
        assert await backend.claim("w") is not None  # j runs: its owner completes it
        step = await backend.cancel("c", "job1", roots=["k", "j"])
        assert set(step.cancelled) == {"k", "j"}
        found = await events_of(backend, EventKind.CANCELLED)
        assert [(e.node, e.key, e.job) for e in found] == [("c", "k", "job1")]

    async def test_a_completion_that_changes_nothing_publishes_nothing(
        self, backend: StateBackend
    ) -> None:
        await watch(backend)
        await put(backend, "c", ["k"], into="w")
        await claim_all(backend, "w")
        await backend.complete("w", "k", out("k"), cache=True)
        await backend.complete("w", "k", out("k"), cache=True)
        await backend.complete("w", "never-submitted", out("x"), cache=True)
        found = await events_of(backend, EventKind.FINISHED)
        assert [e.key for e in found] == ["k"]

    async def test_events_of_stealing_and_leaving(self, backend: StateBackend) -> None:
        await watch(backend)
        await backend.join("d", NodeKind.DISTRIBUTOR, None, LONG)
        await backend.join("w", NodeKind.WORKER, "d", LONG)
        await backend.join("v", NodeKind.WORKER, "d", self.lease)
        await put(backend, "c", ["k1", "k2", "k3"], into="w")
        assert await backend.steal("d", "w", 2) == 2
        assert await backend.trim("d", ["w"]) == 1
        await backend.leave("w")
        await self.reap_until(backend, "d", {"v"})
        stolen = await events_of(backend, EventKind.STOLEN)
        assert [(e.node, e.parent, e.detail) for e in stolen] == [("d", "w", "2"), ("d", "w", "1")]
        left = await events_of(backend, EventKind.LEFT)
        assert [(e.node, e.detail) for e in left] == [("w", "left"), ("v", "reaped")]

    async def test_events_read_on_after_an_id(self, backend: StateBackend) -> None:
        await watch(backend)
        for index in range(5):
            await put(backend, "c", [f"a{index}", f"b{index}"], into="w")
        everything = await backend.events(None, 1000)
        assert len(everything) == 10
        assert len({e.id for e in everything}) == 10
        assert [e.key for e in everything] == [f"{x}{i}" for i in range(5) for x in "ab"]
        for cut in range(10):
            assert await backend.events(everything[cut].id, 1000) == everything[cut + 1 :]
            assert await backend.events(everything[cut].id, 3) == everything[cut + 1 : cut + 4]
        assert await backend.events(None, 4) == everything[:4]
        assert await backend.events(everything[-1].id) == []

    # -- large values -----------------------------------------------------------------------------

    async def test_a_blob_is_read_back_whole(self, backend: StateBackend) -> None:
        small, small_data = blob("a")
        large, large_data = blob("b", 3 * 1024 * 1024 + 17)
        await backend.put_blob(small, small_data, holder="k")
        await backend.put_blob(large, large_data, holder="k")
        assert await backend.get_blob(small) == small_data
        assert await backend.get_blob(large) == large_data
        assert await backend.get_blob(blob("none")[0]) is None
        assert await backend.blobs() == {small: len(small_data), large: len(large_data)}

    async def test_a_blob_is_stored_once_and_never_overwritten(self, backend: StateBackend) -> None:
        digest, data = blob("a")
        await backend.put_blob(digest, data, holder="k1")
        await backend.put_blob(digest, data, holder="k2")
        await backend.put_blob(digest, b"forged" + data, holder="k3")
        assert await backend.blobs() == {digest: len(data)}
        assert await backend.get_blob(digest) == data

    async def test_a_blob_lives_while_a_record_holds_it(self, backend: StateBackend) -> None:
        """Pending, running or done: a holder's record keeps the blob through any sweep."""
        digest, data = blob("a")
        await backend.put_blob(digest, data, holder="k")
        await put(backend, "c", ["k"], into="w")
        assert await backend.sweep_blobs(0) == 0
        assert await backend.claim("w") is not None
        assert await backend.sweep_blobs(0) == 0
        await backend.complete("w", "k", out("k"), cache=True)
        assert await backend.sweep_blobs(0) == 0
        assert await backend.get_blob(digest) == data

    async def test_a_blob_goes_with_the_last_record_that_holds_it(
        self, backend: StateBackend
    ) -> None:
        digest, data = blob("a")
        await backend.put_blob(digest, data, holder="cached")
        await backend.put_blob(digest, data, holder="uncached")
        await run(backend, "w", "cached", cache=True)
        await run(backend, "w", "uncached", cache=False)  # its record is deleted
        assert await backend.sweep_blobs(0) == 0
        await backend.flush()
        assert await backend.blobs() == {}
        await backend.put_blob(digest, data, holder="uncached")
        await run(backend, "w", "uncached", cache=False)
        await backend.sweep_blobs(0)
        assert await backend.blobs() == {}
        assert await backend.get_blob(digest) is None

    async def test_a_blob_held_until_done_goes_once_its_key_is_done(
        self, backend: StateBackend
    ) -> None:
        """Large arguments (and partial answers) are held only until their key is done: a done
        record keeps no payload, so it no longer refers to them. A result blob of the same key
        stays with the cached result, and a blob another pending key holds stays with it."""
        arguments, argument_bytes = blob("arguments")
        shared, shared_bytes = blob("shared")
        result, result_bytes = blob("result")
        await backend.put_blob(arguments, argument_bytes, holder="k", until_done=True)
        await backend.put_blob(shared, shared_bytes, holder="k", until_done=True)
        await backend.put_blob(shared, shared_bytes, holder="other", until_done=True)
        await put(backend, "c", ["other"], into="x")
        await run_until_running(backend, "w", "k")
        await backend.put_blob(result, result_bytes, holder="k")
        assert await backend.sweep_blobs(0) == 0

        def swept_to(*left: str) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:  # a blob checked counts as checked until the next ms
                await backend.sweep_blobs(0)
                return set(await backend.blobs()) == set(left)

            return check

        await backend.complete("w", "k", out("k"), cache=True)
        await eventually(swept_to(shared, result), self.patience, "the arguments swept")
        assert await backend.get_blob(result) == result_bytes
        assert await backend.claim("x") == Claimed("other", new("other").payload)
        assert await backend.sweep_blobs(0) == 0
        assert set(await backend.blobs()) == {shared, result}
        await backend.complete("x", "other", out("other"), cache=True)
        await eventually(swept_to(result), self.patience, "the shared arguments swept")
        await backend.cache_clear()
        await eventually(swept_to(), self.patience, "the result swept")

    async def test_a_blob_without_holders_lives_out_its_grace(self, backend: StateBackend) -> None:
        """The holder's record is not written yet (or its value not fetched yet): the blob
        stays `grace` seconds after its put."""
        digest, data = blob("a")
        await backend.put_blob(digest, data, holder="not-yet")
        assert await backend.sweep_blobs(LONG) == 0
        assert await backend.get_blob(digest) == data
        await backend.sweep_blobs(0)
        assert await backend.blobs() == {}

    async def test_a_sweep_goes_through_many_blobs(self, backend: StateBackend) -> None:
        held = [blob(f"held{i}", 100) for i in range(55)]
        loose = [blob(f"loose{i}", 100) for i in range(55)]
        await put(backend, "c", ["k"], into="w")
        for digest, data in held:
            await backend.put_blob(digest, data, holder="k")
        for digest, data in loose:
            await backend.put_blob(digest, data, holder="gone")
        await backend.sweep_blobs(0)
        assert set(await backend.blobs()) == {digest for digest, _ in held}
