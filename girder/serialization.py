"""What travels through the backend: request payloads and outcomes, as signed bytes.

A `Codec` pickles a request's function reference and arguments, or an outcome, and frames it:
one format byte, then (when a secret is configured) an HMAC-SHA256 cut to its first 128 bits,
then the body. The HMAC covers the record's kind (payload or outcome), its request key and the
body, so signed bytes copied onto another key, or from a payload onto an outcome, are refused
like tampered ones. Bytes whose signature is missing or wrong, and signed bytes on a node without
the secret, are never unpickled. Every failure is a `SerializationError` that says what and
where.

Records are small on purpose (Redis keeps every cached result): a small pickle goes without its
frame, and an outcome's body is the pickle of its value, with one byte (kind and flags) before
it only when it is not a final value (see `_outcome_body`).

Large values: a value or a request's arguments whose encoding is over `large_bytes` is not put
in the record. Its bytes become a `Blob`, named by their SHA-256 digest and stored once by the
node (see `StateBackend.put_blob`); the record holds a `BlobRef` (digest and size) instead, and
is signed as any record is. A reader fetches the blob only when it needs the value, and never
unpickles one whose bytes do not match the digest of the signed record that names it.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from girder.errors import BlobLost, RequestError, SerializationError
from girder.functions import FunctionRef, readable_call

_PLAIN = b"\x00"
_SIGNED_FULL = b"\x01"
"""The format byte of earlier girders (a 256-bit signature): refused with a clear message."""
_SIGNED = b"\x02"
_SIGNATURE_BYTES = 16
"""HMAC-SHA256 cut to 128 bits (as RFC 2104 allows, at least half the hash): forging one takes
2**128 tries; 16 bytes less in every record (issue 14's memory aim)."""
_FRAME_HEAD = 11
"""A protocol-5 pickle's PROTO (2 bytes) and FRAME opcode with its 8-byte length."""
_SMALL_PICKLE = 4096
"""The largest pickle that `_unframed` rewrites (a larger one keeps its frames: 9 bytes do not
matter there, and copying it would)."""
_VALUE, _ERROR, _BLOB = 0, 1, 2
"""An outcome's kinds (the low bits of its first byte): a value, an error chain, a blob ref."""
_KIND_BITS, _FINAL, _ANSWERED = 0b11, 0b100, 0b1000
_HEADS = tuple(bytes((head,)) for head in range(16))
"""Every first byte an outcome may have, made once."""
_PROTO_5 = pickle.PROTO + b"\x05"
_FRAME_OPCODE = pickle.FRAME[0]
_FRAME_LENGTH = struct.Struct("<Q")
_REQUEST = b"q"
_OUTCOME = b"o"
"""Record kinds, signed along with the key: a payload never passes for an outcome."""


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What a record holds in place of a large value: the SHA-256 (hex) of its bytes, and
    their size."""

    digest: str
    size: int

    def __str__(self) -> str:
        return f"blob {self.digest[:12]} ({self.size} bytes)"


@dataclass(frozen=True, slots=True)
class Blob:
    """The bytes of a large value, named by their digest."""

    ref: BlobRef
    data: bytes

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls(BlobRef(hashlib.sha256(data).hexdigest(), len(data)), data)


@dataclass(slots=True)
class RequestPayload:
    """A request as a worker receives it. `job` is the id of the top-level submission.

    With `blob`, the arguments are in that blob (`args` and `kwargs` are empty until
    `Codec.load_arguments` fills them)."""

    function: FunctionRef
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job: str
    blob: BlobRef | None = None

    def readable(self) -> str:
        if self.blob is not None:
            return f"{self.name}(<arguments in {self.blob}>)"
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
    blob: BlobRef | None = None
    """The blob that holds the value, not fetched yet (`value` is None until
    `Codec.load_value`)."""

    def unwrap(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


def _unframed(data: bytes, head: bytes = b"") -> bytes:
    """`head`, then `data` (a protocol-5 pickle) without its one frame when it is small: 9
    bytes less per record (a frame only helps a reader of a stream; an unframed pickle loads
    the same). On the hot path of every request: no call, no slice that is not needed."""
    if (
        len(data) <= _SMALL_PICKLE
        and data[2] == _FRAME_OPCODE
        and _FRAME_LENGTH.unpack_from(data, 3)[0] == len(data) - _FRAME_HEAD
    ):
        return head + _PROTO_5 + data[_FRAME_HEAD:]
    return head + data


def _dumps(value: Any, what: Callable[[], str] | None = None, head: bytes = b"") -> bytes:
    """`head`, then `value` pickled (see `_unframed`); what plain pickle cannot (lambdas, local
    classes), cloudpickle does when `what` names the value for errors."""
    try:
        return _unframed(pickle.dumps(value, protocol=5), head)
    except Exception:
        if what is None:
            raise
        try:
            data: bytes = cloudpickle.dumps(value, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"{what()} cannot be serialized: {type(exc).__name__}: {exc}"
            ) from exc
        return _unframed(data, head)


def _outcome_body(
    kind: int, final: bool, answer: int, body: Any, what: Callable[[], str] | None = None
) -> bytes:
    """An outcome's body. A final value that counts no answers (nearly every outcome) is the
    pickle of the value alone: it starts with pickle's PROTO opcode, which no head byte equals,
    so it needs no byte more, and a large value is not copied to put one before it. Any other
    outcome is one head byte (its kind, `_FINAL` unless it is a partial answer, `_ANSWERED`
    when it counts answers), then the pickle of `body`, or of `(body, answer)`."""
    if answer:
        return _dumps((body, answer), what, _HEADS[kind | _ANSWERED | (_FINAL if final else 0)])
    if kind == _VALUE and final:
        return _dumps(body, what)
    return _dumps(body, what, _HEADS[kind | _FINAL] if final else _HEADS[kind])


def _is_function_ref(value: Any) -> bool:
    """Cloudpickle bytes, or (module, qualified name)."""
    if isinstance(value, bytes):
        return True
    return isinstance(value, tuple) and len(value) == 2 and all(type(v) is str for v in value)


def _blob_ref(value: Any, what: str) -> BlobRef:
    """The `BlobRef` a decoded record names: (hex digest, size)."""
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or type(value[0]) is not str
        or len(value[0]) != 64
        or type(value[1]) is not int
    ):
        raise SerializationError(f"{what} is malformed (bad blob reference)")
    return BlobRef(value[0], value[1])


def _parts(value: Any, what: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) from an argument blob's decoded body."""
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], tuple)
        or not isinstance(value[1], dict)
    ):
        raise SerializationError(f"{what} is malformed (not a girder argument blob)")
    return value[0], value[1]


def _signature(secret: bytes, kind: bytes, key: str, body: bytes) -> bytes:
    """The HMAC of a record of `kind` stored under request `key` (the key's length fences it),
    cut to `_SIGNATURE_BYTES`."""
    key_bytes = key.encode()
    header = kind + len(key_bytes).to_bytes(4, "big") + key_bytes
    return hmac.digest(secret, header + body, hashlib.sha256)[:_SIGNATURE_BYTES]


class Codec:
    """Encodes payloads and outcomes to framed bytes and back, bound to their request key.

    `max_bytes` bounds every encoded value, inline or in a blob; values and arguments whose
    encoding is over `large_bytes` go to a blob when the caller takes blobs (see
    `encode_request`)."""

    def __init__(
        self,
        secret: bytes | None = None,
        max_bytes: int = 512 * 1024 * 1024,
        large_bytes: int | None = None,
    ) -> None:
        self._secret = secret
        self.max_bytes = max_bytes
        self.large_bytes = max_bytes if large_bytes is None else large_bytes

    def _frame(self, body: bytes, kind: bytes, key: str, what: Callable[[], str]) -> bytes:
        """Frame (and sign) a body; `what` names it in errors, and is only called on one."""
        if len(body) > self.max_bytes:
            self._check_size(len(body), what)
        if self._secret is None:
            return _PLAIN + body
        return _SIGNED + _signature(self._secret, kind, key, body) + body

    def _unframe(self, data: bytes, kind: bytes, key: str, what: str) -> bytes:
        if len(data) > self.max_bytes + 1 + _SIGNATURE_BYTES:
            raise SerializationError(f"{what} is {len(data)} bytes, over the limit")
        head = data[:1]
        if head == _SIGNED_FULL:
            raise SerializationError(
                f"{what} has the 256-bit signature of an earlier girder, whose records this one "
                "does not read: delete the grid's keys (see docs/security.md)"
            )
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

    def _loads(self, body: bytes | memoryview, what: str) -> Any:
        try:
            return pickle.loads(body)
        except Exception as exc:
            raise SerializationError(
                f"{what} cannot be decoded: {type(exc).__name__}: {exc}"
            ) from exc

    def encode_request(
        self, payload: RequestPayload, key: str, blobs: list[Blob] | None = None
    ) -> bytes:
        """The bytes of `payload`, to be stored under request `key` (and only there). With
        `blobs`, arguments over the large-value threshold go to a new blob appended there,
        which the caller must store before the payload."""
        fields = (payload.function, payload.name, payload.args, payload.kwargs, payload.job)
        body = _dumps(fields, lambda: f"arguments of {payload.readable()}")
        if len(body) > self.large_bytes and blobs is not None:
            body = self._spill_arguments(payload, blobs, len(body))
        return self._frame(body, _REQUEST, key, lambda: f"payload of {payload.readable()}")

    def _spill_arguments(self, payload: RequestPayload, blobs: list[Blob], size: int) -> bytes:
        """The body of a payload whose arguments go to a blob (without the job, so that the
        same arguments make the same blob in every job)."""
        self._check_size(size, lambda: f"payload of {payload.readable()}")
        blob = Blob.of(
            _dumps((payload.args, payload.kwargs), lambda: f"arguments of {payload.readable()}")
        )
        blobs.append(blob)
        ref = (blob.ref.digest, blob.ref.size)
        return _dumps((payload.function, payload.name, (), {}, payload.job, ref))

    def _check_size(self, size: int, what: Callable[[], str]) -> None:
        if size > self.max_bytes:
            raise SerializationError(
                f"{what()} is {size} bytes, over the limit of {self.max_bytes} "
                "(GIRDER_MAX_PAYLOAD_BYTES)"
            )

    def decode_request(self, data: bytes, key: str) -> RequestPayload:
        """The payload stored under request `key`; refuses one signed for another key."""
        what = f"payload of request {key}"
        fields = self._loads(self._unframe(data, _REQUEST, key, what), what)
        if not isinstance(fields, tuple) or len(fields) not in (5, 6):
            raise SerializationError(f"{what} is malformed (not a girder request)")
        function, name, args, kwargs, job, *ref = fields
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise SerializationError(f"{what} is malformed (bad arguments)")
        if not _is_function_ref(function):
            raise SerializationError(f"{what} is malformed (bad function reference)")
        blob = _blob_ref(ref[0], what) if ref else None
        return RequestPayload(function, str(name), args, kwargs, str(job), blob)

    def load_arguments(self, payload: RequestPayload, data: bytes | None, key: str) -> None:
        """Fill `payload`'s arguments from the bytes of its blob (None: the blob is gone, which
        raises `BlobLost`)."""
        assert payload.blob is not None
        what = f"the arguments of request {key}"
        args, kwargs = _parts(self._loads(self._open_blob(data, payload.blob, what), what), what)
        payload.args, payload.kwargs, payload.blob = args, kwargs, None

    def encode_outcome(
        self,
        outcome: Outcome,
        key: str,
        readable: Callable[[], str],
        blobs: list[Blob] | None = None,
    ) -> bytes:
        """Encode the outcome of request `key`; `readable` names the request in errors (called
        only on one). With `blobs`, a value over the large-value threshold goes to a new blob
        appended there, which the caller must store before the outcome."""
        final, answer = outcome.final, outcome.answer
        if outcome.error is not None:
            body = _outcome_body(_ERROR, final, answer, outcome.error.to_dict(kinds=True))
        else:
            body = _outcome_body(
                _VALUE,
                final,
                answer,
                outcome.value,
                lambda: f"the result of {readable()} (type {type(outcome.value).__qualname__})",
            )
            if len(body) > self.large_bytes and blobs is not None:
                self._check_size(len(body), lambda: f"result of {readable()}")
                blob = Blob.of(body)
                blobs.append(blob)
                body = _outcome_body(_BLOB, final, answer, (blob.ref.digest, blob.ref.size))
        return self._frame(body, _OUTCOME, key, lambda: f"result of {readable()}")

    def decode_outcome(self, data: bytes, key: str) -> Outcome:
        """The outcome of request `key` (cached or notified); refuses one signed for another
        key."""
        what = f"result of request {key}"
        kind, final, answer, body = self._outcome_parts(
            self._unframe(data, _OUTCOME, key, what), what
        )
        if kind == _ERROR:
            return Outcome(error=RequestError.from_dict(body), final=final, answer=answer)
        if kind == _BLOB:
            return Outcome(final=final, answer=answer, blob=_blob_ref(body, what))
        return Outcome(value=body, final=final, answer=answer)

    def _outcome_parts(self, data: bytes, what: str) -> tuple[int, bool, int, Any]:
        """The kind, final flag, answer number and body of an outcome's bytes (see
        `_outcome_body`)."""
        if data[:1] == pickle.PROTO:  # a final value that counts no answers
            return _VALUE, True, 0, self._loads(data, what)
        head = data[0] if data else 0xFF
        kind = head & _KIND_BITS
        if head & ~(_KIND_BITS | _FINAL | _ANSWERED) or kind not in (_VALUE, _ERROR, _BLOB):
            raise SerializationError(f"{what} is malformed (not a girder outcome)")
        body, answer = self._loads(memoryview(data)[1:], what), 0  # not a copy of a large one
        if head & _ANSWERED:
            if not isinstance(body, tuple) or len(body) != 2 or type(body[1]) is not int:
                raise SerializationError(f"{what} is malformed (not a girder outcome)")
            body, answer = body
        return kind, bool(head & _FINAL), answer, body

    def load_value(self, outcome: Outcome, data: bytes | None, key: str) -> Outcome:
        """`outcome` with its value, from the bytes of its blob (None: the blob is gone, which
        raises `BlobLost`). The blob holds the body of the whole outcome, as a record would (so
        the same value makes the same blob under any key)."""
        assert outcome.blob is not None
        what = f"the result of request {key}"
        kind, _, _, value = self._outcome_parts(self._open_blob(data, outcome.blob, what), what)
        if kind != _VALUE:
            raise SerializationError(f"{what} is malformed ({outcome.blob} holds no value)")
        return Outcome(value=value, final=outcome.final, answer=outcome.answer)

    def _open_blob(self, data: bytes | None, ref: BlobRef, what: str) -> bytes:
        """The bytes of a blob, checked against the digest its (signed) record names."""
        if data is None:
            raise BlobLost(
                f"{what} is in {ref}, which is no longer stored (the backend lost it, or it was "
                "swept after its request's record went; see docs/large-values.md)"
            )
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.digest:
            raise SerializationError(
                f"{what} is in {ref}, whose bytes do not match its digest: the blob was "
                "tampered with or damaged; it is not decoded"
            )
        return data
