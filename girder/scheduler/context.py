"""What a grid function sees of the grid while it runs: `call_reentrant` and `current_node`."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from girder.functions import Request, as_request, one_request, readable_call
from girder.serialization import Outcome


class ReentrantHost(Protocol):
    """The worker that runs an evaluation."""

    id: str

    async def reentrant(self, evaluation: Evaluation, requests: list[Request]) -> list[Any]: ...

    def stream(self, evaluation: Evaluation, request: Request) -> AsyncIterator[Any]: ...

    async def peek(self, requests: list[Request]) -> list[Outcome | None]: ...

    async def pool_size(self) -> int: ...


@dataclass(slots=True)
class Evaluation:
    """One running request: where it runs, its key and job, and its baton.

    The baton is the evaluation's, not one flow's: however many of its flows (`asyncio.gather`,
    a task group) park in `call_reentrant` at once, it holds at most one (see `Worker.reentrant`).
    """

    host: ReentrantHost
    key: str
    job: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    holds_baton: bool = True
    answers: int = 0
    """How many answers a streaming function has yielded so far."""
    parked: int = 0
    """How many of its flows wait in `call_reentrant` now."""
    lent: bool = False
    """Its baton was lent while it waited on I/O (see `Baton.lend`): it holds none, but a loan."""
    resuming: asyncio.Lock | None = None
    """Taken by a flow that takes the baton back, so that two flows never take two."""

    def readable(self) -> str:
        return readable_call(self.name, self.args, self.kwargs)


current_evaluation: ContextVar[Evaluation | None] = ContextVar("girder_evaluation", default=None)

P = ParamSpec("P")
R = TypeVar("R")


@overload
async def call_reentrant(requests: Iterable[Any], /) -> list[Any]: ...
@overload
async def call_reentrant(
    fn: Callable[P, AsyncIterator[R]], /, *args: P.args, **kwargs: P.kwargs
) -> R: ...
@overload
async def call_reentrant(
    fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
) -> R: ...
@overload
async def call_reentrant(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
@overload
async def call_reentrant(request: Request, /) -> Any: ...


async def call_reentrant(requests: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run sub-requests on the grid and return their values in order; or, given one function
    and its arguments (`call_reentrant(fib, n - 1)`) or one `Request`, that one's value.

    Inside a grid function, the requests go on this worker's stack and the caller parks (the
    worker goes on with other work) until all are done; a failure raises `RequestError` with
    every failed sub-request as a cause. Outside a grid, the functions are simply called here.
    The form with one function is typed from its signature, like `Grid.call`.
    """
    if callable(requests) or isinstance(requests, Request):
        (value,) = await _reentrant([one_request(requests, args, kwargs)])
        return value
    if args or kwargs:
        raise TypeError(
            "call_reentrant takes a list of requests alone, or one function and its arguments"
        )
    return await _reentrant([as_request(item) for item in requests])


async def _reentrant(batch: list[Request]) -> list[Any]:
    evaluation = current_evaluation.get()
    if evaluation is None:
        return [await _call_directly(request) for request in batch]
    return await evaluation.host.reentrant(evaluation, batch)


def stream(fn: Any, /, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
    """The answers of a sub-request, in order, as they come: `async for answer in
    girder.stream(fn, *args)`.

    Inside a grid function, the request goes on this worker's stack and the caller parks
    between answers (the worker goes on with other work) and takes its baton back for each; a
    failure raises `RequestError`. Outside a grid, the function is simply called here. A
    function that is no async generator has one answer, its value.
    """
    request = Request(fn, *args, **kwargs)
    evaluation = current_evaluation.get()
    if evaluation is None:
        return _stream_directly(request)
    return evaluation.host.stream(evaluation, request)


async def _stream_directly(request: Request) -> AsyncIterator[Any]:
    value = request.function.fn(*request.args, **request.kwargs)
    if inspect.isasyncgen(value):
        async for answer in value:
            yield answer
    else:
        yield await value if inspect.isawaitable(value) else value


async def _call_directly(request: Request) -> Any:
    value = request.function.fn(*request.args, **request.kwargs)
    if inspect.isasyncgen(value):
        last = None
        async for answer in value:
            last = answer
        return last
    return await value if inspect.isawaitable(value) else value


def current_node() -> str | None:
    """The id of the node running the current grid function (None outside one)."""
    evaluation = current_evaluation.get()
    return None if evaluation is None else evaluation.host.id


async def peek(requests: Iterable[Any]) -> list[Outcome | None]:
    """The cached outcomes of requests, read without running or queueing anything (None: not
    cached). Outside a grid nothing is cached."""
    evaluation = current_evaluation.get()
    batch = [as_request(item) for item in requests]
    if evaluation is None:
        return [None] * len(batch)
    return await evaluation.host.peek(batch)


async def pool_size() -> int:
    """How many live nodes the pool of the node running this grid function has (1 outside a
    grid)."""
    evaluation = current_evaluation.get()
    return 1 if evaluation is None else await evaluation.host.pool_size()
