"""The `girder` command's manners: its version, and failures as one line (`--debug`: traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import girder
from girder.cli import _one_line, main
from girder.errors import RequestError

UNREACHABLE = "redis://127.0.0.1:1/0"  # port 1: nothing listens there


def test_version_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "girder", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"girder {girder.__version__}"


def test_a_bad_setting_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--backend", "bogus://x"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "girder status: unknown backend scheme 'bogus://'; "
        "known: memory, redis, redis+cluster, redis+sentinel, rediss, rediss+cluster, "
        "rediss+sentinel, unix"
    ]


def test_a_failure_is_one_line_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--backend", UNREACHABLE]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("girder status: Redis connect failed at redis://127.0.0.1:1/0")


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "status", "--backend", UNREACHABLE],
        ["status", "--backend", UNREACHABLE, "--debug"],
    ],
)
def test_debug_adds_the_traceback(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "girder.errors.BackendError: Redis connect failed" in err
    assert err.splitlines()[-1].startswith("girder status: Redis connect failed")


def test_a_failed_request_is_its_headline_alone() -> None:
    error = RequestError("f(1)", "ZeroDivisionError: division by zero", ["Traceback", "  ..."])
    assert "\n" in str(error)  # printed, it shows the worker-side traceback
    assert _one_line(error) == "f(1): ZeroDivisionError: division by zero"
    assert _one_line(ValueError("bad\n  value")) == "ValueError: bad value"
