"""Progress bars of `call_all(..., progress=True)` and `as_completed(..., progress=True)`.

Drawn by tqdm's `tqdm.auto`: a widget in Jupyter (when ipywidgets is installed; text otherwise),
text on stderr in a terminal. One bar per call, closed when the call ends however it ends.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from tqdm.auto import tqdm


class Progress:
    """A bar over `total` requests, or nothing at all when not `enabled`."""

    def __init__(self, total: int, *, description: str, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(total=total, desc=description, unit="req", dynamic_ncols=True)

    def advance(self, count: int = 1) -> None:
        """`count` more requests finished."""
        if self._bar is not None and count:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
