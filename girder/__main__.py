"""`python -m girder` is the `girder` command."""

import sys

from girder.cli import main

sys.exit(main())
