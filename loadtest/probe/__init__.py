"""Hostile clients against a throwaway ``make run`` stack: ``python -m loadtest.probe``.

Issue 9's outside probe, rerun as a reproducible command (see ``cli.py``). Modules:
``wire`` (raw WebSocket clients from a chosen address, hand-built frames), ``fuzz``
(seeded DDP fuzz frames and the accounting of their answers; pure), ``attacks`` (the
queue, orm, park and fuzz attackers, run in a process of their own), ``honest`` (the
honest client that measures meanwhile), ``procfs`` (worker memory and socket ownership
from /proc), ``report`` (statistics, checks against the targets, output), ``cli``. The
stack itself is ``loadtest.bench.stack``'s. Figures: docs/benchmarks.md, "Hostile
clients: the probe".
"""
