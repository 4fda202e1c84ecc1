"""Noticing when an async grid function waits: the hook that lends its baton (see `Baton.lend`).

asyncio says nothing when a task suspends, so the worker drives the function's coroutine through
`suspensions`, which forwards every step, value and exception unchanged and calls a hook each time
the coroutine suspends. The worker's hook lends the baton when the request is not parked in
`call_reentrant` (parking passes the baton on before it suspends): the request then waits on
something else than the grid, I/O most likely.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any


@types.coroutine
def suspensions(
    coroutine: Coroutine[Any, Any, Any], on_suspend: Callable[[], None]
) -> Generator[Any, Any, Any]:
    """Await `coroutine`, calling `on_suspend()` each time it suspends."""
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            if thrown is None:
                waiting_on = coroutine.send(sent)
            else:
                waiting_on, thrown = coroutine.throw(thrown), None
        except StopIteration as stop:
            return stop.value
        on_suspend()
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # cancellation included: the coroutine handles it
            sent, thrown = None, exc
