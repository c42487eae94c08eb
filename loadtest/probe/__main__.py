"""``python -m loadtest.probe <attack> ...``: see ``loadtest/probe/cli.py``."""

import sys

from loadtest.probe.cli import main

sys.exit(main())
