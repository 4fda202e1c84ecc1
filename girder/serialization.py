"""What travels through the backend: request payloads and outcomes, as signed bytes.

A `Codec` pickles a request's function reference and arguments, or an outcome, and frames it:
one format byte, then (when a secret is configured) an HMAC-SHA256, then the body. The HMAC covers
the record's kind (payload or outcome), its request key and the body, so signed bytes copied onto
another key, or from a payload onto an outcome, are refused like tampered ones. Bytes whose
signature is missing or wrong, and signed bytes on a node without the secret, are never
unpickled. Every failure is a `SerializationError` that says what and where.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from girder.errors import RequestError, SerializationError
from girder.functions import FunctionRef, readable_call

_PLAIN = b"\x00"
_SIGNED = b"\x01"
_SIGNATURE_BYTES = 32
_REQUEST = b"q"
_OUTCOME = b"o"
"""Record kinds, signed along with the key: a payload never passes for an outcome."""


@dataclass(slots=True)
class RequestPayload:
    """A request as a worker receives it. `job` is the id of the top-level submission."""

    function: FunctionRef
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job: str

    def readable(self) -> str:
        return readable_call(self.name, self.args, self.kwargs)


@dataclass(slots=True)
class Outcome:
    """The result of one request: a value, or the error chain that replaced it.

    `final` is False for a partial answer of a function that streams several answers, and
    `answer` counts the answers of such a run (1 for the first; 0 for a function that returns
    one value): a stream skips an answer it has already seen, such as the final outcome that
    repeats the last partial one.
    """

    value: Any = None
    error: RequestError | None = None
    final: bool = True
    answer: int = 0

    def unwrap(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


def _dumps(value: Any, what: Callable[[], str]) -> bytes:
    """Pickle `value`; what plain pickle cannot (lambdas, local classes), cloudpickle does."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        try:
            data: bytes = cloudpickle.dumps(value, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"{what()} cannot be serialized: {type(exc).__name__}: {exc}"
            ) from exc
        return data


def _is_function_ref(value: Any) -> bool:
    """Cloudpickle bytes, or (module, qualified name)."""
    if isinstance(value, bytes):
        return True
    return isinstance(value, tuple) and len(value) == 2 and all(type(v) is str for v in value)


def _signature(secret: bytes, kind: bytes, key: str, body: bytes) -> bytes:
    """The HMAC of a record of `kind` stored under request `key` (the key's length fences it)."""
    key_bytes = key.encode()
    header = kind + len(key_bytes).to_bytes(4, "big") + key_bytes
    return hmac.digest(secret, header + body, hashlib.sha256)


class Codec:
    """Encodes payloads and outcomes to framed bytes and back, bound to their request key."""

    def __init__(self, secret: bytes | None = None, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._secret = secret
        self.max_bytes = max_bytes

    def _frame(self, body: bytes, kind: bytes, key: str, what: Callable[[], str]) -> bytes:
        """Frame (and sign) a body; `what` names it in errors, and is only called on one."""
        if len(body) > self.max_bytes:
            raise SerializationError(
                f"{what()} is {len(body)} bytes, over the limit of {self.max_bytes} "
                "(GIRDER_MAX_PAYLOAD_BYTES)"
            )
        if self._secret is None:
            return _PLAIN + body
        return _SIGNED + _signature(self._secret, kind, key, body) + body

    def _unframe(self, data: bytes, kind: bytes, key: str, what: str) -> bytes:
        if len(data) > self.max_bytes + 1 + _SIGNATURE_BYTES:
            raise SerializationError(f"{what} is {len(data)} bytes, over the limit")
        head = data[:1]
        if head not in (_PLAIN, _SIGNED):
            raise SerializationError(f"{what} is malformed (unknown format byte {head!r})")
        if self._secret is None:
            if head == _SIGNED:
                raise SerializationError(
                    f"{what} is signed, and this node has no secret (set GIRDER_SECRET to the "
                    "grid's secret)"
                )
            return data[1:]
        if head != _SIGNED:
            raise SerializationError(
                f"{what} is not signed, and a secret is configured (was it written by a node "
                "without GIRDER_SECRET?)"
            )
        signature = data[1 : 1 + _SIGNATURE_BYTES]
        body = data[1 + _SIGNATURE_BYTES :]
        expected = _signature(self._secret, kind, key, body)
        if not hmac.compare_digest(signature, expected):
            raise SerializationError(
                f"{what} has a wrong signature: tampered, signed for another key or record "
                "kind, or with another secret"
            )
        return body

    def _loads(self, body: bytes, what: str) -> Any:
        try:
            return pickle.loads(body)
        except Exception as exc:
            raise SerializationError(
                f"{what} cannot be decoded: {type(exc).__name__}: {exc}"
            ) from exc

    def encode_request(self, payload: RequestPayload, key: str) -> bytes:
        """The bytes of `payload`, to be stored under request `key` (and only there)."""
        fields = (payload.function, payload.name, payload.args, payload.kwargs, payload.job)
        body = _dumps(fields, lambda: f"arguments of {payload.readable()}")
        return self._frame(body, _REQUEST, key, lambda: f"payload of {payload.readable()}")

    def decode_request(self, data: bytes, key: str) -> RequestPayload:
        """The payload stored under request `key`; refuses one signed for another key."""
        what = f"payload of request {key}"
        fields = self._loads(self._unframe(data, _REQUEST, key, what), what)
        if not isinstance(fields, tuple) or len(fields) != 5:
            raise SerializationError(f"{what} is malformed (not a girder request)")
        function, name, args, kwargs, job = fields
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise SerializationError(f"{what} is malformed (bad arguments)")
        if not _is_function_ref(function):
            raise SerializationError(f"{what} is malformed (bad function reference)")
        return RequestPayload(function, str(name), args, kwargs, str(job))

    def encode_outcome(self, outcome: Outcome, key: str, readable: Callable[[], str]) -> bytes:
        """Encode the outcome of request `key`; `readable` names the request in errors (called
        only on one)."""
        tail = (outcome.answer,) if outcome.answer else ()
        if outcome.error is not None:
            body = pickle.dumps(("e", outcome.error.to_dict(kinds=True), outcome.final, *tail))
        else:
            body = _dumps(
                ("v", outcome.value, outcome.final, *tail),
                lambda: f"the result of {readable()} (type {type(outcome.value).__qualname__})",
            )
        return self._frame(body, _OUTCOME, key, lambda: f"result of {readable()}")

    def decode_outcome(self, data: bytes, key: str) -> Outcome:
        """The outcome of request `key` (cached or notified); refuses one signed for another
        key."""
        what = f"result of request {key}"
        fields = self._loads(self._unframe(data, _OUTCOME, key, what), what)
        if not isinstance(fields, tuple) or len(fields) not in (3, 4):
            raise SerializationError(f"{what} is malformed (not a girder outcome)")
        tag, body, final, *tail = fields
        answer = tail[0] if tail and type(tail[0]) is int else 0
        if tag == "e":
            return Outcome(error=RequestError.from_dict(body), final=bool(final), answer=answer)
        return Outcome(value=body, final=bool(final), answer=answer)
