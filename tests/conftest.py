"""Shared test set-up: the test grid functions are importable as `gridfns`, and every grid of the
session (and every process it starts) signs with a test secret, as a real grid must on Redis.
The tests of the refusal without a secret clear it themselves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

TEST_SECRET = "girder test session secret"
os.environ.setdefault("GIRDER_SECRET", TEST_SECRET)
