"""The bytes of a stored record: a 128-bit signature, small pickles without their frame, and a
clear refusal of the records of earlier girders (issue 14's memory aim; see docs/security.md)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from girder.errors import RequestError, SerializationError
from girder.serialization import Codec, Outcome, RequestPayload

SECRET = b"correct horse battery staple"
KEY = "a1beeffde8499e0a1bb6021636c1286a"


class _Exploit:
    """Unpickling this creates a directory: proof that bytes were unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def _body(data: bytes) -> bytes:
    """The pickle of a signed record: after its format byte and 16-byte signature."""
    assert data[:1] == b"\x02"
    return data[17:]


def test_a_small_final_value_is_its_unframed_pickle_alone() -> None:
    codec = Codec(SECRET)
    data = codec.encode_outcome(Outcome(value=289), KEY, lambda: "square(17)")
    assert _body(data) == b"\x80\x05M!\x01."  # pickle.dumps(289, protocol=5) without its frame
    assert codec.decode_outcome(data, KEY).value == 289


def test_a_partial_answer_has_a_head_byte_before_its_pickle() -> None:
    codec = Codec(SECRET)
    data = codec.encode_outcome(Outcome(value=289, final=False, answer=2), KEY, lambda: "f()")
    assert _body(data)[:1] == b"\x08"  # a value (0), not final, counted (0b1000)
    pickled = pickle.dumps((289, 2), protocol=5)
    assert _body(data)[1:] == pickled[:2] + pickled[11:]  # unframed
    read = codec.decode_outcome(data, KEY)
    assert (read.value, read.final, read.answer) == (289, False, 2)


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(value=("v", 3)),  # a value that looks like a counted answer
        Outcome(value=None, final=False, answer=2),
        Outcome(value=[1, 2], answer=5),
        Outcome(error=RequestError("f()", "boom", kind="error")),
        Outcome(error=RequestError("f()", "late", kind="timeout"), answer=3),
    ],
    ids=["tuple", "partial", "counted", "error", "counted-error"],
)
def test_every_kind_of_outcome_reads_back_as_written(outcome: Outcome) -> None:
    codec = Codec(SECRET)
    read = codec.decode_outcome(codec.encode_outcome(outcome, KEY, lambda: "f()"), KEY)
    assert (read.value, read.final, read.answer) == (outcome.value, outcome.final, outcome.answer)
    assert (read.error is None) == (outcome.error is None)
    if outcome.error is not None and read.error is not None:
        assert (read.error.message, read.error.kind) == (outcome.error.message, outcome.error.kind)


@pytest.mark.parametrize(
    "body",
    [b"\x03" + pickle.dumps(1), b"\x10" + pickle.dumps(1), b"\x81" + pickle.dumps(1), b""],
    ids=["kind", "flags", "high-byte", "empty"],
)
def test_an_outcome_with_an_unknown_head_is_refused(body: bytes) -> None:
    with pytest.raises(SerializationError, match="malformed"):
        Codec().decode_outcome(b"\x00" + body, KEY)  # unsigned: format byte 0


def test_a_small_payload_is_pickled_without_a_frame() -> None:
    codec = Codec(SECRET)
    payload = RequestPayload(("math", "hypot"), "hypot", (3, 4), {}, "job")
    body = _body(codec.encode_request(payload, KEY))
    assert body[2:3] != pickle.FRAME
    decoded = codec.decode_request(codec.encode_request(payload, KEY), KEY)
    assert (decoded.args, decoded.job) == ((3, 4), "job")


def test_a_large_value_is_its_pickle_as_made_and_loads() -> None:
    codec = Codec(SECRET)
    value = [str(index) * 3 for index in range(20_000)]  # a pickle of several frames
    data = codec.encode_outcome(Outcome(value=value), KEY, lambda: "big()")
    assert _body(data) == pickle.dumps(value, protocol=5)  # frames kept, nothing put before
    assert codec.decode_outcome(data, KEY).value == value


@pytest.mark.parametrize("spot", [1, 16, -1], ids=["signature-first", "signature-last", "body"])
def test_a_changed_byte_of_a_signed_record_is_refused(spot: int) -> None:
    codec = Codec(SECRET)
    data = bytearray(codec.encode_outcome(Outcome(value=289), KEY, lambda: "square(17)"))
    data[spot] ^= 0x01
    with pytest.raises(SerializationError, match="wrong signature"):
        codec.decode_outcome(bytes(data), KEY)


def test_a_record_signed_by_an_earlier_girder_is_refused_clearly_and_never_unpickled(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "unpickled"
    earlier = b"\x01" + bytes(32) + pickle.dumps(_Exploit(str(marker)))
    with pytest.raises(SerializationError, match="256-bit signature of an earlier girder"):
        Codec(SECRET).decode_outcome(earlier, KEY)
    assert not marker.exists()
