"""Request keys: a canonical encoding of arguments and a digest of it.

A key is `blake2b(function identity, canonical arguments)`, 32 hex characters. Equal requests give
equal keys in every process: the encoding never depends on hash seeds, memory addresses or dict
insertion order. Values of types the encoder does not know are pickled: their bytes determine the
value, so two different values never share a key (no false hit), though two equal values may
(rarely) give two keys (a false miss, which costs only work).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import pickle
from collections.abc import Callable, Mapping
from typing import Any

from girder.errors import SerializationError

SCALARS = frozenset({int, str, float, bool, type(None)})
"""Immutable argument types whose repr is canonical (the key's fast path)."""


def _encode_str(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return b"s%d:%s" % (len(data), data)


def _encode_sequence(tag: bytes, items: Any) -> bytes:
    return tag + b"".join(encode(item) for item in items) + b")"


def _encode_unordered(tag: bytes, items: Any) -> bytes:
    return tag + b"".join(sorted(encode(item) for item in items)) + b")"


def _encode_mapping(value: Mapping[Any, Any]) -> bytes:
    pairs = sorted(encode(k) + encode(v) for k, v in value.items())
    return b"{" + b"".join(pairs) + b"}"


def _type_name(value: Any) -> bytes:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}".encode()


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda v: b"N",
    bool: lambda v: b"T" if v else b"F",
    int: lambda v: b"i%d;" % v,
    float: lambda v: b"f" + repr(v).encode() + b";",
    complex: lambda v: b"c" + repr(v).encode() + b";",
    str: _encode_str,
    bytes: lambda v: b"b%d:%s" % (len(v), v),
    tuple: lambda v: _encode_sequence(b"(", v),
    list: lambda v: _encode_sequence(b"[", v),
    dict: _encode_mapping,
    set: lambda v: _encode_unordered(b"<", v),
    frozenset: lambda v: _encode_unordered(b"^", v),
}


def encode(value: Any) -> bytes:
    """The canonical bytes of `value`; raises `SerializationError` if it cannot be encoded."""
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    identity = getattr(value, "__girder_identity__", None)
    if isinstance(identity, bytes):
        return b"g" + _encode_sequence(b"(", [identity])
    if isinstance(value, enum.Enum):
        return b"e" + _type_name(value) + encode(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        return b"d" + _type_name(value) + _encode_sequence(b"(", fields)
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"a value of type {type(value).__qualname__} cannot be serialized: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return b"p" + _type_name(value) + b"%d:" % len(data) + data


def encode_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a call's arguments; errors name the argument that failed."""
    if not kwargs and all(type(a) in SCALARS for a in args):
        # Fast path: repr of ints, strs, floats, bools and None is canonical and type-distinct.
        return b"r" + repr(args).encode("utf-8", "surrogatepass")
    parts = [b"a"]
    for position, arg in enumerate(args):
        parts.append(_encode_named(arg, f"argument {position}"))
    for name in sorted(kwargs):
        parts.append(_encode_str(name) + _encode_named(kwargs[name], f"argument {name!r}"))
    return b"".join(parts)


def _encode_named(value: Any, where: str) -> bytes:
    try:
        return encode(value)
    except SerializationError as exc:
        raise SerializationError(f"{where}: {exc}") from exc
    except RecursionError as exc:
        raise SerializationError(f"{where}: nested too deeply to encode") from exc


_prefixes: dict[bytes, Any] = {}
"""blake2b states that have hashed a function identity (copying one is cheaper than hashing)."""


def request_key(identity: bytes, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """The key of a request: 32 hex characters, equal for equal requests in every process."""
    prefix = _prefixes.get(identity)
    if prefix is None:
        if len(_prefixes) >= 4096:
            _prefixes.clear()
        prefix = _prefixes[identity] = hashlib.blake2b(identity + b"\x00", digest_size=16)
    digest = prefix.copy()
    digest.update(encode_arguments(args, kwargs))
    return digest.hexdigest()
