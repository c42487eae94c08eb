"""Shared live queries: one maintained result per distinct query, whatever the subscribers.

A relay keeps ONE result per ``relay.backend.QuerySpec.key`` (publication, parameters and
visibility class), fed by the change stream's membership decisions, and hands every
subscriber of that key the same effects ``(id, fields | None)`` for its mergebox
(invariant I2: the work per commit grows with the number of distinct queries, not of
subscribers). ``order`` and ``result`` are the pure core: sort keys in Meteor's order and
the filtered set, sorted window (with its buffer, Meteor's oplog driver) and count that
decide what the published view becomes. The runtime around them (fetching, single-flight,
subscriber bookkeeping) lives in ``query`` and ``queries``.

The pure modules must not do I/O, use gevent, read a clock or import anything of the
project but ``relay.backend``'s dataclasses.
"""
