"""`Started`: the `with` protocol of the test servers and proxies (Redis, a cluster, sentinels,
the fault proxy): start on entry, stop on exit, and stop what a failed start began."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Started:
    """Something with `start()` and an idempotent `stop()` that is used with `with`."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()  # what a failed start began: processes, ports, threads
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
