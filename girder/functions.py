"""Grid functions and requests: `@girder.function`, `girder.Request`, and how functions travel.

A grid function travels by reference (module and qualified name) when a worker can import it,
and by value (cloudpickle) when it cannot: defined in `__main__`, a notebook, or a local scope.
Its identity, which goes into every request key, is its name plus an optional `version`; a
function that travels by value also adds a digest of its pickled code, so two different
`__main__.f` never share cached results. `version="auto"` (or `Settings.auto_version`) puts a
digest of its code and of the grid functions it calls into the identity (see `codeversion`).

Any callable is a grid function: a function, a `functools.partial` or an object with
`__call__` (an `async def __call__` makes it async). A partial or a callable object travels by
value, so its bound arguments or its state are part of its identity.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

import cloudpickle

from girder import codeversion
from girder.keys import request_key

P = ParamSpec("P")
R = TypeVar("R")

FunctionRef = tuple[str, str] | bytes
"""How a function travels: (module, qualified name), or cloudpickle bytes."""


def _importable(fn: Callable[..., Any]) -> bool:
    """Whether a worker finds `fn` by its module and qualified name. A partial or a callable
    object has no name of its own, and a bound method's name finds its function without the
    object: those travel by value."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    return (
        isinstance(module, str)
        and isinstance(qualname, str)
        and bool(module and qualname)
        and module != "__main__"
        and "<locals>" not in qualname
        and not inspect.ismethod(fn)
    )


def _names(fn: Callable[..., Any]) -> tuple[str, str]:
    """(module, qualified name) for keys and logs: a partial is named after the function it
    wraps (`partial(f)`), a callable object after its class."""
    if isinstance(fn, functools.partial):
        module, qualname = _names(fn.func)
        return module, f"partial({qualname})"
    name: object = getattr(fn, "__qualname__", None)
    if not isinstance(name, str):  # a callable object
        return type(fn).__module__, type(fn).__qualname__
    return str(getattr(fn, "__module__", None) or "__main__"), name


def _code_of(fn: Callable[..., Any]) -> Any:
    """What runs when `fn` is called, for telling async from sync: a callable object's
    `__call__` (inspect looks through functions and partials itself)."""
    if inspect.isroutine(fn) or isinstance(fn, functools.partial | type):
        return fn
    return type(fn).__call__


class GridFunction(Generic[P, R]):
    """A function marked with `@girder.function`. Calling it calls the original function.

    `GridFunction[P, R]` has the original's parameters `P` and return type `R` (a coroutine for
    an `async def`): `await grid.call(fn, *args)` checks the arguments against `P` and gives the
    value `R` stands for (what the coroutine returns, or a stream's last answer).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        cache: bool = True,
        name: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@girder.function needs a function, got {type(fn).__name__}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"@girder.function(timeout=...) must be more than 0, not {timeout}")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"@girder.function(ttl=...) must be more than 0, not {ttl}")
        self.fn = fn
        self.cache = cache
        self.timeout = timeout
        """Seconds a request of it may run (parked time included) before it fails with kind
        "timeout"; None: no limit."""
        self.version = version
        """None (the grid's default, see `Settings.auto_version`), "auto" (a digest of the
        code), or any other string, bumped by hand."""
        self.ttl = ttl
        """Seconds its cached results live; None: `Settings.cache_ttl`."""
        code = _code_of(fn)
        self.is_stream = inspect.isasyncgenfunction(code)
        """An async generator: each `yield` is an answer, the last one is the value."""
        self.is_async = self.is_stream or inspect.iscoroutinefunction(code)
        module, qualname = _names(fn)
        self.name = name or f"{module}.{qualname}"
        self.short_name = name or qualname
        if inspect.isroutine(fn):  # an object's attributes must not become this one's
            functools.update_wrapper(self, fn)
        self._ref: FunctionRef | None = None
        self._identity: bytes | None = None
        self._code: tuple[codeversion.CodeVersion, bytes] | None = None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def run_sync(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        """Call a sync function; a coroutine it returns is a mistake girder says how to fix."""
        value = self.fn(*args, **kwargs)
        if inspect.iscoroutine(value):
            value.close()  # never awaited: no "coroutine was never awaited" warning
            raise TypeError(
                f"grid function {self.name} returned a coroutine but is not a coroutine "
                "function: declare it with `async def` (or give the object an `async def "
                "__call__`) so that girder awaits it"
            )
        return value

    def __repr__(self) -> str:
        return f"<grid function {self.name}>"

    @property
    def ref(self) -> FunctionRef:
        """How this function travels to a worker."""
        if self._ref is None:
            if _importable(self.fn):
                self._ref = (self.fn.__module__, self.fn.__qualname__)
            else:
                data: bytes = cloudpickle.dumps(self)
                _remember_by_value(data, self)
                self._ref = data
        return self._ref

    @property
    def __girder_identity__(self) -> bytes:
        """What a request key knows of this function: name, version, code if by value."""
        if self.version == "auto" or (self.version is None and codeversion.auto_by_default()):
            return self._code_identity()
        if self._identity is None:
            parts = [self.name, self.version or ""]
            ref = self.ref
            if isinstance(ref, bytes):
                parts.append(hashlib.blake2b(ref, digest_size=16).hexdigest())
            self._identity = "\x00".join(parts).encode()
        return self._identity

    def _code_identity(self) -> bytes:
        """The identity with a digest of the code (recomputed when a name it followed is
        rebound: a reloaded module, a notebook cell run again)."""
        if self._code is None or not self._code[0].current():
            found = codeversion.code_version(self, _name_of, _fn_of)
            parts = [self.name, "auto:" + found.digest]
            ref = self.ref
            if isinstance(ref, bytes):
                parts.append(hashlib.blake2b(ref, digest_size=16).hexdigest())
            self._code = found, "\x00".join(parts).encode()
        return self._code[1]

    def __reduce__(self) -> str | tuple[Any, ...]:
        if _importable(self.fn):
            return (resolve_function, ((self.fn.__module__, self.fn.__qualname__),))
        options = {
            "cache": self.cache,
            "name": self.name if self.name != self._default_name() else None,
            "version": self.version,
            "timeout": self.timeout,
            "ttl": self.ttl,
        }
        return (_rebuild, (self.fn, options))

    def _default_name(self) -> str:
        module, qualname = _names(self.fn)
        return f"{module}.{qualname}"


def _rebuild(fn: Callable[..., Any], options: dict[str, Any]) -> GridFunction[..., Any]:
    return GridFunction(fn, **options)


def _name_of(function: GridFunction[..., Any]) -> str:
    return function.name


def _fn_of(function: GridFunction[..., Any]) -> Callable[..., Any]:
    return function.fn


@overload
def function(fn: Callable[P, R], /) -> GridFunction[P, R]: ...


@overload
def function(
    *,
    cache: bool = True,
    name: str | None = None,
    version: str | None = None,
    timeout: float | None = None,
    ttl: float | None = None,
) -> Callable[[Callable[P, R]], GridFunction[P, R]]: ...


def function(
    fn: Callable[P, R] | None = None,
    /,
    *,
    cache: bool = True,
    name: str | None = None,
    version: str | None = None,
    timeout: float | None = None,
    ttl: float | None = None,
) -> GridFunction[P, R] | Callable[[Callable[P, R]], GridFunction[P, R]]:
    """Mark a sync or async function as a grid function (with or without arguments).

    `cache=False` skips the result cache (in-flight requests are still shared); `name` replaces
    the qualified name in keys and logs; bump `version` when the function's results change, or
    set `version="auto"` to version it by its code (see docs/caching.md); `timeout` bounds how
    long one request of it may run (see "Time limits" in the concepts); `ttl` is how many
    seconds its cached results live.
    """

    def decorate(target: Callable[P, R]) -> GridFunction[P, R]:
        return GridFunction(
            target, cache=cache, name=name, version=version, timeout=timeout, ttl=ttl
        )

    return decorate if fn is None else decorate(fn)


def as_grid_function(fn: Any) -> GridFunction[..., Any]:
    """`fn` itself if it is a grid function, else a grid function with default options."""
    if isinstance(fn, GridFunction):
        return fn
    if callable(fn):
        return GridFunction(fn)
    raise TypeError(f"a request needs a function first, got {type(fn).__name__}: {fn!r:.80}")


_READABLE_ARG = 60


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__qualname__}>"
    return text if len(text) <= _READABLE_ARG else text[: _READABLE_ARG - 3] + "..."


def readable_call(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """A short human form of a call, like `fib(10)` (long arguments are cut)."""
    parts = [_short_repr(a) for a in args]
    parts.extend(f"{k}={_short_repr(v)}" for k, v in kwargs.items())
    return f"{name}({', '.join(parts)})"


class Request:
    """One request: a grid function and its arguments. `(fn, *args)` is accepted wherever a
    `Request` is.

    `pool` routes the request to the named pool's distributor instead of the caller's own
    (single-purpose workers): a client's request goes to that pool's queue, and a sub-request
    of `call_reentrant` too instead of the worker's own stack. The keyword is reserved: pass a
    function's own argument called `pool` positionally. The pool is not part of the key: the
    same request has the same result wherever it runs.
    """

    __slots__ = ("_key", "args", "function", "kwargs", "pool")

    def __init__(
        self, function: Any, /, *args: Any, pool: str | None = None, **kwargs: Any
    ) -> None:
        self.function: GridFunction[..., Any] = as_grid_function(function)
        self.args = args
        self.kwargs: Mapping[str, Any] = kwargs
        self.pool = pool
        """The pool it is routed to; None: the caller's own."""
        self._key: str | None = None

    def to(self, pool: str | None) -> Request:
        """The same request routed to `pool` (None: the caller's own)."""
        routed = Request(self.function, *self.args, pool=pool)
        routed.kwargs = self.kwargs  # as they are: a function's own `pool` stays its argument
        routed._key = self._key
        return routed

    @property
    def key(self) -> str:
        """The request key; raises `SerializationError` naming the argument that cannot be
        encoded."""
        if self._key is None:
            self._key = request_key(self.function.__girder_identity__, self.args, self.kwargs)
        return self._key

    def readable(self) -> str:
        """A short human form, like `fib(10)`."""
        return readable_call(self.function.short_name, self.args, self.kwargs)

    def __repr__(self) -> str:
        routed = "" if self.pool is None else f", pool={self.pool!r}"
        return f"Request({self.readable()}{routed})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


def one_request(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Request:
    """The request of `call(fn, *args, **kwargs)` (and `submit`, `call_reentrant`): `fn` itself
    if it is a `Request`; else every keyword argument is the function's (`pool` too: only
    `Request` reserves it)."""
    if isinstance(fn, Request):
        if args or kwargs:
            raise TypeError("a Request takes its arguments itself, not call(request, ...)")
        return fn
    request = Request(fn, *args)
    request.kwargs = kwargs
    return request


def as_request(item: Any) -> Request:
    """A `Request` from a `Request` or a tuple `(fn, *args)`."""
    if isinstance(item, Request):
        return item
    if isinstance(item, tuple | list) and item:
        return Request(item[0], *item[1:])
    raise TypeError(f"expected a girder.Request or a tuple (fn, *args), got {item!r:.80}")


@functools.lru_cache(maxsize=4096)
def _import_ref(module_name: str, qualname: str) -> GridFunction[..., Any]:
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return as_grid_function(target)


_by_value: dict[bytes, GridFunction[..., Any]] = {}
_BY_VALUE_LIMIT = 1024


def _remember_by_value(data: bytes, function: GridFunction[..., Any]) -> None:
    if len(_by_value) >= _BY_VALUE_LIMIT:
        _by_value.pop(next(iter(_by_value)))
    _by_value[data] = function


def _load_by_value(data: bytes) -> GridFunction[..., Any]:
    """The function a by-value reference names: in the process that pickled it, the function
    itself (so it shares its module's globals); elsewhere, unpickled once per distinct pickle."""
    function = _by_value.get(data)
    if function is None:
        function = as_grid_function(cloudpickle.loads(data))
        function._ref = data  # it travels on exactly as it came
        _remember_by_value(data, function)
    return function


def resolve_function(ref: FunctionRef) -> GridFunction[..., Any]:
    """The grid function a reference names; raises `LookupError` saying what is missing."""
    if isinstance(ref, bytes):
        return _load_by_value(ref)
    module_name, qualname = ref
    try:
        return _import_ref(module_name, qualname)
    except (ImportError, AttributeError, TypeError) as exc:  # TypeError: not a function
        raise LookupError(
            f"function {module_name}.{qualname} cannot be imported here: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
