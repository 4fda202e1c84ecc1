"""The topology debugger's print capture (girder.topology.capture): routers over stdout/stderr."""

from __future__ import annotations

import sys

from girder.topology.capture import _Router, captured


def test_a_router_left_behind_is_never_wrapped_in_another() -> None:
    """Someone else replaced sys.stdout while a capture was on (pytest does), so the router
    stayed; the next capture must route to the real stream, not through a chain of routers."""
    real = sys.stdout
    lines: list[tuple[str, str]] = []
    try:
        with captured(lambda stream, line: lines.append((stream, line))):
            leftover = sys.stdout
            sys.stdout = leftover  # as if replaced and put back by someone else
        sys.stdout = leftover  # the router outlived its capture
        with captured(lambda stream, line: lines.append((stream, line))):
            router = sys.stdout
            assert isinstance(router, _Router)
            assert not isinstance(router.real, _Router)
            print("caught")
        assert ("stdout", "caught") in lines
    finally:
        sys.stdout = real
