"""`version="auto"`: a digest of a grid function's code, so that editing it invalidates its results.

The digest covers, for the function and every grid function it reaches by name (transitively,
cycles included): its bytecode, its constants (nested code objects of inner functions, lambdas
and comprehensions too), the names and argument layout its code uses, and its default argument
values. "Reaches by name" means: a name its code loads that resolves, in its module's globals,
to a `GridFunction` (`helper(...)`, `girder.call_reentrant([(helper, n)])`), or to a module
whose attribute of a name the code also uses is one (`tasks.helper`), or a grid function held
in a closure cell.

What the digest is made of never depends on memory addresses, hash seeds or the order of a
traversal: the same code gives the same digest in every process and every run of the same
Python version (a new Python version compiles new bytecode: a one-time false miss).

What it cannot see (see docs/caching.md): data the function reads (files, databases), global
variables that hold plain values, functions it calls that are not grid functions (their code
is not followed: wrap them as grid functions, or bump `version=`), functions reached through
variables, arguments or attributes of objects, and code in C extensions.
"""

from __future__ import annotations

import hashlib
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from girder.errors import SerializationError
from girder.keys import encode

_CODE_PARTS = (
    "co_argcount",
    "co_posonlyargcount",
    "co_kwonlyargcount",
    "co_flags",
    "co_names",
    "co_varnames",
    "co_freevars",
    "co_cellvars",
)
"""What of a code object besides its bytecode and constants goes into the digest (its file name
and line numbers do not: moving a function in its file changes nothing)."""


def _from_environment() -> bool:
    """`GIRDER_AUTO_VERSION`, read as `Settings` reads it (a bad value: off; settings say why)."""
    value = os.environ.get("GIRDER_AUTO_VERSION")
    try:
        return bool(value) and TypeAdapter(bool).validate_python(value)
    except ValidationError:
        return False


_process_default = _from_environment()
"""Whether functions without a `version` get an automatic one (`Settings.auto_version`): from
the environment, then from the settings of each node started in this process."""


def set_default(enabled: bool) -> None:
    """Make `version="auto"` the default of every grid function in this process (a node does
    this at start when `Settings.auto_version` is set)."""
    global _process_default
    _process_default = enabled


def auto_by_default() -> bool:
    """Whether grid functions without a `version` are versioned by their code here."""
    return _process_default


def _constant(value: Any) -> bytes:
    """The stable bytes of a code constant (frozensets sorted: their order follows hashes)."""
    if isinstance(value, types.CodeType):
        return b"C" + _code_bytes(value)
    if isinstance(value, tuple):
        return b"(" + b"".join(_constant(item) for item in value) + b")"
    if isinstance(value, frozenset):
        return b"^" + b"".join(sorted(_constant(item) for item in value)) + b")"
    if value is Ellipsis:
        return b"..."
    return encode(value)


def _code_bytes(code: types.CodeType) -> bytes:
    parts = [code.co_code, *(repr(getattr(code, name)).encode() for name in _CODE_PARTS)]
    parts.extend(_constant(value) for value in code.co_consts)
    return b"\x00".join(b"%d:%s" % (len(part), part) for part in parts)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """`code` and every code object nested in its constants."""
    yield code
    for value in code.co_consts:
        if isinstance(value, types.CodeType):
            yield from _codes(value)


def _defaults(fn: Any) -> bytes:
    """Default argument values: they change results as much as code does."""
    values = (getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None))
    try:
        return encode(values)
    except (SerializationError, RecursionError):
        return repr(tuple(type(v).__qualname__ for v in values)).encode()


def _layers(fn: Callable[..., Any]) -> list[Any]:
    """`fn` and the functions it wraps (`functools.wraps` decorators keep `__wrapped__`)."""
    layers, seen = [], set()
    current: Any = fn
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        layers.append(current)
        current = getattr(current, "__wrapped__", None)
    return layers


def own_digest(fn: Callable[..., Any]) -> bytes:
    """The digest of the code of `fn` alone (what it calls by name is not followed)."""
    digest = hashlib.blake2b(repr(sys.version_info[:2]).encode(), digest_size=16)
    for layer in _layers(fn):
        code = getattr(layer, "__code__", None)
        if isinstance(code, types.CodeType):
            digest.update(_code_bytes(code))
            digest.update(_defaults(layer))
        else:  # a builtin or a C extension: only its name is seen
            digest.update(repr(getattr(layer, "__qualname__", type(layer).__qualname__)).encode())
    return digest.digest()


Edge = tuple[Mapping[str, Any], str, Any]
"""A binding followed: (namespace, name, the grid function the name holds there)."""


def _called(fn: Callable[..., Any], is_grid: Callable[[Any], bool]) -> Iterator[Edge]:
    """The grid functions `fn`'s code reaches by name (see the module docstring), each with
    the binding that led to it."""
    for layer in _layers(fn):
        code = getattr(layer, "__code__", None)
        if not isinstance(code, types.CodeType):
            continue
        names = {name for nested in _codes(code) for name in nested.co_names}
        scope = getattr(layer, "__globals__", {})
        for name in sorted(names):
            value = scope.get(name)
            if is_grid(value):
                yield scope, name, value
            elif isinstance(value, types.ModuleType):
                members = vars(value)
                for attribute in sorted(names):
                    if is_grid(members.get(attribute)):
                        yield members, attribute, members[attribute]
        for cell in getattr(layer, "__closure__", None) or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if is_grid(content):
                yield {"": content}, "", content


@dataclass(frozen=True, slots=True)
class CodeVersion:
    """The code digest of a grid function, and the bindings it was computed from.

    `edges` are the (namespace, name, grid function) bindings the traversal followed: while each
    name still names the same object, the digest holds; once one is rebound (a module reloaded,
    a notebook cell run again) the digest must be computed anew."""

    digest: str
    edges: tuple[Edge, ...]

    def current(self) -> bool:
        """Whether every binding the digest followed still holds."""
        return all(scope.get(name) is target for scope, name, target in self.edges)


def code_version(
    root: Any, name_of: Callable[[Any], str], fn_of: Callable[[Any], Callable[..., Any]]
) -> CodeVersion:
    """The digest of `root`'s code and of every grid function it reaches, as 32 hex digits.

    `root` and the grid functions found are handled through `name_of` (a grid function's name)
    and `fn_of` (the plain function it wraps). The digest is over the sorted set of (name, own
    digest) of everything reachable, with `root`'s name first: the same wherever a traversal of
    a cycle starts."""
    kind = type(root)

    def is_grid(value: Any) -> bool:
        return isinstance(value, kind)

    found: dict[str, bytes] = {}
    edges: list[Edge] = []
    pending = [root]
    while pending:
        current = pending.pop()
        name = name_of(current)
        if name in found:
            continue
        found[name] = own_digest(fn_of(current))
        for edge in _called(fn_of(current), is_grid):
            edges.append(edge)
            pending.append(edge[2])
    digest = hashlib.blake2b(name_of(root).encode(), digest_size=16)
    for name in sorted(found):
        digest.update(b"%d:%s%s" % (len(name), name.encode(), found[name]))
    return CodeVersion(digest.hexdigest(), tuple(edges))
