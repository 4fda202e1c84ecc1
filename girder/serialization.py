"""What travels through the backend: request payloads and outcomes, as signed bytes.

A `Codec` pickles a request's function reference and arguments, or an outcome, and frames it:
one format byte, then (when a secret is configured) an HMAC-SHA256 of the body, then the body.
Bytes whose signature is missing or wrong are never unpickled. Every failure is a
`SerializationError` that says what and where.
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

    `final` is False for a partial answer (room for functions that stream several answers).
    """

    value: Any = None
    error: RequestError | None = None
    final: bool = True

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


class Codec:
    """Encodes payloads and outcomes to framed bytes and back."""

    def __init__(self, secret: bytes | None = None, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._secret = secret
        self.max_bytes = max_bytes

    def _frame(self, body: bytes, what: Callable[[], str]) -> bytes:
        """Frame (and sign) a body; `what` names it in errors, and is only called on one."""
        if len(body) > self.max_bytes:
            raise SerializationError(
                f"{what()} is {len(body)} bytes, over the limit of {self.max_bytes} "
                "(GIRDER_MAX_PAYLOAD_BYTES)"
            )
        if self._secret is None:
            return _PLAIN + body
        return _SIGNED + hmac.digest(self._secret, body, hashlib.sha256) + body

    def _unframe(self, data: bytes, what: str) -> bytes:
        if len(data) > self.max_bytes + 1 + _SIGNATURE_BYTES:
            raise SerializationError(f"{what} is {len(data)} bytes, over the limit")
        head = data[:1]
        if self._secret is None:
            if head == _PLAIN:
                return data[1:]
            if head == _SIGNED:
                return data[1 + _SIGNATURE_BYTES :]
            raise SerializationError(f"{what} is malformed (unknown format byte {head!r})")
        if head != _SIGNED:
            raise SerializationError(f"{what} is not signed, and a secret is configured")
        signature = data[1 : 1 + _SIGNATURE_BYTES]
        body = data[1 + _SIGNATURE_BYTES :]
        expected = hmac.digest(self._secret, body, hashlib.sha256)
        if not hmac.compare_digest(signature, expected):
            raise SerializationError(f"{what} has a wrong signature (tampered, or another secret)")
        return body

    def _loads(self, body: bytes, what: str) -> Any:
        try:
            return pickle.loads(body)
        except Exception as exc:
            raise SerializationError(
                f"{what} cannot be decoded: {type(exc).__name__}: {exc}"
            ) from exc

    def encode_request(self, payload: RequestPayload) -> bytes:
        fields = (payload.function, payload.name, payload.args, payload.kwargs, payload.job)
        body = _dumps(fields, lambda: f"arguments of {payload.readable()}")
        return self._frame(body, lambda: f"payload of {payload.readable()}")

    def decode_request(self, data: bytes, where: str) -> RequestPayload:
        what = f"payload of request {where}"
        fields = self._loads(self._unframe(data, what), what)
        if not isinstance(fields, tuple) or len(fields) != 5:
            raise SerializationError(f"{what} is malformed (not a girder request)")
        function, name, args, kwargs, job = fields
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise SerializationError(f"{what} is malformed (bad arguments)")
        return RequestPayload(function, str(name), args, kwargs, str(job))

    def encode_outcome(self, outcome: Outcome, readable: Callable[[], str]) -> bytes:
        """Encode an outcome; `readable` names the request in errors (called only on one)."""
        if outcome.error is not None:
            body = pickle.dumps(("e", outcome.error.to_dict(kinds=True), outcome.final))
        else:
            body = _dumps(
                ("v", outcome.value, outcome.final),
                lambda: f"the result of {readable()} (type {type(outcome.value).__qualname__})",
            )
        return self._frame(body, lambda: f"result of {readable()}")

    def decode_outcome(self, data: bytes, where: str) -> Outcome:
        what = f"result of request {where}"
        fields = self._loads(self._unframe(data, what), what)
        if not isinstance(fields, tuple) or len(fields) != 3:
            raise SerializationError(f"{what} is malformed (not a girder outcome)")
        tag, body, final = fields
        if tag == "e":
            return Outcome(error=RequestError.from_dict(body), final=bool(final))
        return Outcome(value=body, final=bool(final))
