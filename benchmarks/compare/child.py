"""One system's process: `python -m benchmarks.compare.child MODULE [options]`.

The peer module is imported under its own name (never as `__main__`), so that its tasks have the
same names and pickle by reference in the client and in the worker processes alike.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from benchmarks.compare.common import child_main


def main() -> None:
    module = importlib.import_module(f"benchmarks.compare.{sys.argv[1]}")
    code = 0
    try:
        child_main(module.PEER, sys.argv[2:])
    except BaseException:
        code = 1
        traceback.print_exc()
    finally:
        # Every process the peer started is stopped by now. Skip the interpreter's teardown:
        # some libraries' finalizers (Celery's pending results, Ray's) are noisy or slow there.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
