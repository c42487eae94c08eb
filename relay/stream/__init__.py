"""The change stream, relay side: committed changes in, DDP data messages out.

``listener`` (the worker's one LISTEN connection; gaps and reconnects backfilled from the
changelog), ``cursor`` (pure: what a notification or changelog row means for a channel's
position, and the coalescing of runs), ``source`` (the listener's seam to the database:
``PostgresSource``, and ``MemorySource``, its in-memory twin for tests), ``fanout``
(per-channel streams, applying each change to the attached subscriptions), ``routing``
(in-memory membership of a changed document), ``interning`` (values shared by every
session of a worker). The write side is ``django_app``; the payload contract both sides
obey is ``relay.protocol.changestream``.

Must not: import ``relay.server`` (sessions reach the stream through ``Subscriber``), or
query the database per subscriber (invariant I2).
"""
