"""Request keys: canonical, equal across processes, distinct for distinct requests."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gridfns import add, fib

import girder
from girder.errors import SerializationError
from girder.functions import as_request
from girder.keys import encode


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


SAMPLES: list[tuple[object, ...]] = [
    (1, 2),
    ("a", "b"),
    (1.5, None, True),
    ({"b": 1, "a": 2},),
    ({3, 1, 2},),
    (frozenset({"x", "y"}),),
    ([1, [2, (3, 4)]],),
    (b"bytes",),
    (Colour.RED,),
    (Point(1, 2),),
]

_KEYS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_keys import SAMPLES
from gridfns import add
import girder
print(json.dumps([girder.Request(add, *args).key for args in SAMPLES]))
"""


def test_keys_are_equal_in_another_process() -> None:
    here = [girder.Request(add, *args).key for args in SAMPLES]
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _KEYS_SCRIPT.format(tests=tests)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert json.loads(out.stdout) == here


def test_dict_and_set_order_do_not_matter() -> None:
    assert girder.Request(add, {"a": 1, "b": 2}).key == girder.Request(add, {"b": 2, "a": 1}).key
    assert girder.Request(add, {1, 2, 3}).key == girder.Request(add, {3, 2, 1}).key


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ((1,), (True,)),
        ((1,), (1.0,)),
        (("1",), (1,)),
        ((0.0,), (-0.0,)),
        (((1, 2),), ([1, 2],)),
        (({1: 2},), ({(1, 2)},)),
        (("ab", "c"), ("a", "bc")),
        ((None,), ("None",)),
        ((Point(1, 2),), ((1, 2),)),
    ],
)
def test_different_arguments_give_different_keys(
    left: tuple[object, ...], right: tuple[object, ...]
) -> None:
    assert girder.Request(add, *left).key != girder.Request(add, *right).key


def test_function_identity_and_version_are_in_the_key() -> None:
    assert girder.Request(add, 1, 2).key != girder.Request(fib, 1, 2).key

    def f(x: int) -> int:
        return x

    v1 = girder.function(version="1")(f)
    v2 = girder.function(version="2")(f)
    assert girder.Request(v1, 1).key != girder.Request(v2, 1).key


def test_keyword_arguments_are_in_the_key() -> None:
    assert girder.Request(add, 1, b=2).key != girder.Request(add, 1, c=2).key
    assert girder.Request(add, a=1, b=2).key == girder.Request(add, b=2, a=1).key


def test_unencodable_argument_names_itself() -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match=r"argument 1: a value of type lock"):
        _ = girder.Request(add, 1, lock).key
    with pytest.raises(SerializationError, match=r"argument 'b'"):
        _ = girder.Request(add, 1, b=[lock]).key


def test_tuple_and_request_forms_are_the_same_request() -> None:
    assert as_request((add, 1, 2)) == girder.Request(add, 1, 2)
    with pytest.raises(TypeError, match=r"expected a girder\.Request"):
        as_request(42)


def test_encoding_is_stable() -> None:
    # A change here changes every key: bump it only on purpose.
    assert encode((1, "a", None)) == b"(i1;s1:aN)"
