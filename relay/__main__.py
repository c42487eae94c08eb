"""``python -m relay``: the ``ddp-relay`` console script (``relay.cli``) without its wrapper.

Must not: do anything but hand over to ``relay.cli.main`` (importing ``relay`` stays free
of side effects; only running this module starts the command).
"""

from relay.cli import main

raise SystemExit(main())
