"""Every error girder raises, in one tree.

```
GirderError
├── ConfigurationError     bad settings, unknown backend scheme, missing optional dependency
├── GridStopped            a grid was used before it started or after it stopped
├── BackendError           the state backend failed or could not be reached
│   └── BackendFull        the backend refuses writes: it is out of memory
├── SerializationError     a value cannot be encoded, or a payload is malformed, tampered or too big
│   └── BlobLost           the bytes of a large value are no longer stored (the backend lost them)
├── SourceChanged          a file changed after its identity was taken (`girder.file_source`)
└── RequestError           a request failed; the one error a caller of the grid sees
    ├── Cancelled          a request stopped because the job that needed it was cancelled
    └── StageError         a stage of a topology failed for one seq id (`grid.run`)
```

A `RequestError` carries the readable request, a message, the traceback lines and, per failed
sub-request, the `RequestError` that caused it, so the chain leads down to the original exception.
Printed, it shows every level's worker-side traceback. When the original exception's type can be
found where the error is raised again (a built-in, or a class of a module already imported
there: nothing is imported or unpickled to find it), the error is also an instance of that type,
so `except ZeroDivisionError:` catches it (a subclass of both, as Ray does).
`kind` says what happened at the bottom of the chain: "error" (a function raised), "cycle" (a
request needs itself), "crashed" (a request killed its worker too often), "invalid" (bad input:
unserializable, unknown function, tampered or oversized payload), "backend" (the backend refused
the writes the request needs: it is out of memory), "cancelled" (its job was cancelled: then the
error is a `Cancelled`, which names the job), "pool" (no distributor serves the pool it was sent
to), "stopped" (its grid stopped while the caller waited), "lost" (the backend lost the bytes
of a large argument or value the request needs, in a failover that lost writes, and submitting
it again did not bring them back: see docs/large-values.md). A request that failed because a
sub-request failed has the kind of its first root cause, and its message names that root cause.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Mapping
from typing import Any, Self, cast


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


class BlobLost(SerializationError):
    """The bytes of a large value are no longer stored: the backend lost them (a failover that
    lost writes). The caller that submitted the request holds them, or can compute them again:
    the request is submitted again rather than failed (see `Node.settle`)."""


class SourceChanged(GirderError):
    """A file no longer matches the identity `girder.file_source` took of it: a block read
    from it now would be cached under the identity of its former content."""


class RequestError(GirderError):
    """A request failed. Raised by `Grid.call`, `call_all`, handles and `call_reentrant`.

    `exc_type` names the type of the original exception at the bottom of the chain, as
    "module:qualname" (None when no exception was raised: a cycle, a crash, a cancellation).
    An error built with one is an instance of a subclass of both `RequestError` and that type
    when the type can be found here (see `catchable`)."""

    def __new__(cls, *args: Any, exc_type: str | None = None, **kwargs: Any) -> Self:
        if cls is RequestError and exc_type is not None:
            subclass = catchable(exc_type)
            if subclass is not None:
                # The user type's own __new__ (OSError's sets fields of its own), not this one.
                return cast(Self, super(RequestError, subclass).__new__(subclass))
        return super().__new__(cls)

    def __init__(
        self,
        request: str,
        message: str,
        stack: list[str] | None = None,
        causes: Mapping[str, RequestError] | None = None,
        *,
        kind: str = "error",
        exc_type: str | None = None,
    ) -> None:
        # Exception's __init__, not the next class's: the user's type in a catchable subclass
        # may take other arguments.
        Exception.__init__(self, f"{request}: {message}")
        self.request = request
        self.message = message
        self.stack = list(stack or [])
        self.causes: dict[str, RequestError] = dict(causes or {})
        self.kind = kind
        self.exc_type = exc_type

    def __str__(self) -> str:
        headline = f"{self.request}: {self.message}"
        levels = list(self.levels())
        if not any(error.stack for _, error in levels):
            return headline
        return "\n".join([headline, "", _TRACEBACK_TITLE, *_format_levels(levels)])

    def levels(self) -> Iterator[tuple[str | None, RequestError]]:
        """Every error of the chain, depth first from this one, with the request that needed
        it (None for this one)."""
        yield None, self
        for cause in self.causes.values():
            for parent, error in cause.levels():
                yield parent or self.request, error

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
            if self.exc_type is not None:
                data["type"] = self.exc_type
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
        exc_type = data.get("type")
        exc_type = exc_type if isinstance(exc_type, str) else None
        return RequestError(request, message, stack, causes, kind=kind, exc_type=exc_type)

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
                exc_type=self.exc_type,
            )
        causes = {req: cause.pruned(levels - 1) for req, cause in self.causes.items()}
        return RequestError(
            self.request, self.message, self.stack, causes, kind=self.kind, exc_type=self.exc_type
        )

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


class StageError(RequestError):
    """A stage of a topology failed for one seq id: `stage` and `seq` say which (`seq` is None
    when a spout failed outside an `emit`). Its one cause is the failure of the stage's
    request, and it has that failure's kind."""

    def __init__(self, topology: str, stage: str, seq: int | None, cause: RequestError) -> None:
        where = f"{topology}.{stage}" + ("" if seq is None else f"[seq={seq}]")
        super().__init__(where, cause.message, cause.stack, {cause.request: cause}, kind=cause.kind)
        self.stage = stage
        self.seq = seq


def _rebuild_request_error(data: dict[str, Any]) -> RequestError:
    return RequestError.from_dict(data)


# -- printing the chain ----------------------------------------------------------------------------

_TRACEBACK_TITLE = "Worker-side traceback (the request asked for first, the original error last):"
_MOST_LEVELS_SHOWN = 20


def _format_levels(levels: list[tuple[str | None, RequestError]]) -> list[str]:
    lines: list[str] = []
    for number, (parent, error) in enumerate(levels[:_MOST_LEVELS_SHOWN], 1):
        needed_by = "" if parent is None else f", needed by {parent}"
        lines.append(f"[{number}] {error.request}{needed_by}")
        lines.extend(f"  {line}" for line in error.stack or [f"{error.message}"])
    hidden = len(levels) - _MOST_LEVELS_SHOWN
    if hidden > 0:
        lines.append(f"... and {hidden} more failed requests (see .causes)")
    return lines


# -- catching a failure by its original type -------------------------------------------------------


def type_name(exc_type: type[BaseException]) -> str:
    """How an exception type is named in an error record: "module:qualname"."""
    return f"{exc_type.__module__}:{exc_type.__qualname__}"


def _loaded_type(name: str) -> type[Exception] | None:
    """The exception type `name` ("module:qualname") names among the modules already imported
    here, read statically: nothing is imported, no module `__getattr__` runs."""
    module_name, _, qualname = name.partition(":")
    target: Any = sys.modules.get(module_name)
    if target is None or not qualname or "<locals>" in qualname:
        return None
    for part in qualname.split("."):
        try:
            target = inspect.getattr_static(target, part)
        except AttributeError:
            return None
    if not isinstance(target, type) or not issubclass(target, Exception):
        return None  # BaseException alone (KeyboardInterrupt, CancelledError) is not caught
    if issubclass(target, GirderError):
        return None
    return target


_catchable: dict[type[Exception], type[RequestError] | None] = {}


def catchable(name: str) -> type[RequestError] | None:
    """The subclass of `RequestError` and the exception type `name` names (made once per type),
    or None when that type is not found here or cannot be subclassed (its layout, its
    `__init_subclass__`, or attributes that clash with `RequestError`'s)."""
    base = _loaded_type(name)
    if base is None:
        return None
    if base not in _catchable:
        _catchable[base] = _subclass(base)
    return _catchable[base]


def _subclass(base: type[Exception]) -> type[RequestError] | None:
    qualname = f"RequestError[{base.__qualname__}]"
    try:
        subclass = type(qualname, (RequestError, base), {"__module__": __name__})
        subclass.__qualname__ = qualname
        subclass("request", "message")  # one that cannot be made is never used
    except Exception:
        return None
    return subclass


__all__ = [
    "BackendError",
    "BackendFull",
    "Cancelled",
    "ConfigurationError",
    "GirderError",
    "RequestError",
    "SerializationError",
    "SourceChanged",
    "StageError",
]
