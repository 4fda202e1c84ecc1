"""Every error girder raises, in one tree.

```
GirderError
├── ConfigurationError     bad settings, unknown backend scheme, missing optional dependency
├── GridStopped            a grid was used before it started or after it stopped
├── BackendError           the state backend failed or could not be reached
│   └── BackendFull        the backend refuses writes: it is out of memory
├── SerializationError     a value cannot be encoded, or a payload is malformed, tampered or too big
└── RequestError           a request failed; the one error a caller of the grid sees
    └── Cancelled          a request stopped because the job that needed it was cancelled
```

A `RequestError` carries the readable request, a message, the traceback lines and, per failed
sub-request, the `RequestError` that caused it, so the chain leads down to the original exception.
`kind` says what happened at the bottom of the chain: "error" (a function raised), "cycle" (a
request needs itself), "crashed" (a request killed its worker too often), "invalid" (bad input:
unserializable, unknown function, tampered or oversized payload), "backend" (the backend refused
the writes the request needs: it is out of memory), "cancelled" (its job was cancelled: then the
error is a `Cancelled`, which names the job), "pool" (no distributor serves the pool it was sent
to), "stopped" (its grid stopped while the caller waited). A request that failed because a
sub-request failed has the kind of its first root cause, and its message names that root cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GirderError(Exception):
    """The base of every error girder raises."""


class ConfigurationError(GirderError):
    """Settings or a backend URL are wrong, or an optional dependency is missing."""


class GridStopped(GirderError):
    """A grid was called before `start` (or `async with`) or after `stop`."""


class BackendError(GirderError):
    """The state backend failed or could not be reached."""


class BackendFull(BackendError):
    """The backend refuses writes because it is out of memory (Redis `maxmemory`)."""


class SerializationError(GirderError):
    """A value cannot be serialized, or stored bytes cannot be trusted or decoded."""


class RequestError(GirderError):
    """A request failed. Raised by `Grid.call`, `call_all`, handles and `call_reentrant`."""

    def __init__(
        self,
        request: str,
        message: str,
        stack: list[str] | None = None,
        causes: Mapping[str, RequestError] | None = None,
        *,
        kind: str = "error",
    ) -> None:
        super().__init__(f"{request}: {message}")
        self.request = request
        self.message = message
        self.stack = list(stack or [])
        self.causes: dict[str, RequestError] = dict(causes or {})
        self.kind = kind

    def to_dict(self, *, kinds: bool = False) -> dict[str, Any]:
        """The error chain in the seeds' shape: {"msg", "req", "stack", "info": {req: {...}}}.

        With `kinds`, every level also carries its "kind" (how girder stores errors).
        """
        data: dict[str, Any] = {
            "msg": self.message,
            "req": self.request,
            "stack": list(self.stack),
            "info": {req: cause.to_dict(kinds=kinds) for req, cause in self.causes.items()},
        }
        if kinds:
            data["kind"] = self.kind
            job = self.cancelled_by()
            if job is not None:
                data["job"] = job
        return data

    def cancelled_by(self) -> str | None:
        """The job whose cancellation is at the bottom of this chain, if that is what it is."""
        for root in self.root_causes():
            if isinstance(root, Cancelled):
                return root.job
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, kind: str | None = None) -> RequestError:
        """Rebuild an error chain from `to_dict` output (a level without "kind" is "error")."""
        info: Mapping[str, Any] = data.get("info") or {}
        kind = kind or str(data.get("kind", "error"))
        request = str(data.get("req", "?"))
        message = str(data.get("msg", ""))
        stack = [str(line) for line in data.get("stack") or []]
        causes = {str(req): RequestError.from_dict(cause) for req, cause in info.items()}
        if kind == "cancelled":
            return Cancelled(request, str(data.get("job", "")), message, stack, causes)
        return RequestError(request, message, stack, causes, kind=kind)

    def root_causes(self) -> list[RequestError]:
        """The errors at the bottom of the chain (where the original exceptions were raised)."""
        if not self.causes:
            return [self]
        return [root for cause in self.causes.values() for root in cause.root_causes()]

    def depth(self) -> int:
        """Levels in the chain (1 for an error without causes)."""
        return 1 + max((cause.depth() for cause in self.causes.values()), default=0)

    def pruned(self, levels: int) -> RequestError:
        """This chain cut to `levels` levels: below that, the last level kept links straight to
        the root causes. Each level of a deep call graph stores its whole chain, so cutting keeps
        a failure at the bottom of a 5,000-deep chain from costing the square of its depth."""
        if self.depth() <= levels:
            return self
        if levels <= 1:
            roots = self.root_causes()
            return RequestError(
                self.request,
                f"{self.message} [{self.depth() - 2} levels between here and the root cause "
                "elided]",
                self.stack,
                {root.request: root for root in roots},
                kind=self.kind,
            )
        causes = {req: cause.pruned(levels - 1) for req, cause in self.causes.items()}
        return RequestError(self.request, self.message, self.stack, causes, kind=self.kind)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_request_error, (self.to_dict(kinds=True),))


class Cancelled(RequestError):
    """A request stopped because the job that needed it was cancelled (kind "cancelled").

    Whoever else waited for the request gets this error; `job` names the cancelled job. A
    cancelled request is never cached: asking for it again computes it."""

    def __init__(
        self,
        request: str,
        job: str,
        message: str | None = None,
        stack: list[str] | None = None,
        causes: Mapping[str, RequestError] | None = None,
    ) -> None:
        super().__init__(
            request, message or f"cancelled with job {job}", stack, causes, kind="cancelled"
        )
        self.job = job


def _rebuild_request_error(data: dict[str, Any]) -> RequestError:
    return RequestError.from_dict(data)


__all__ = [
    "BackendError",
    "BackendFull",
    "Cancelled",
    "ConfigurationError",
    "GirderError",
    "RequestError",
    "SerializationError",
]
