"""``LiveQueries``: a worker's live queries by key, so identical subscriptions share one.

Layer: runtime (gevent). ``acquire(specs)`` gives a subscription the ``LiveQuery`` of each
of its specs: an existing one is joined (waiting for its first load if it is still
loading: single-flight, so a reconnect storm of thousands of identical subscriptions runs
the query once), the missing ones are created and loaded by ONE fetch (one snapshot, one
work-pool slot). ``release`` lets go; the last holder's release drops the query and its
attachment. A query whose first load failed is not kept: the next subscription tries
again.

Must not: know sessions or mergeboxes (a session joins a query itself, see
``relay.server.session``), or read the database except through the fetch it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from relay.backend import QueryData, QuerySpec
from relay.live.query import LiveQuery, QueryHost

__all__ = ["LiveQueries"]

Fetch = Callable[[Sequence[QuerySpec]], Sequence[QueryData]]


class LiveQueries:
    """The live queries of one worker."""

    def __init__(self, host: QueryHost) -> None:
        self.host = host
        self.by_key: dict[str, LiveQuery] = {}

    def __len__(self) -> int:
        return len(self.by_key)

    def acquire(self, specs: Sequence[QuerySpec], fetch: Fetch | None = None) -> list[LiveQuery]:
        """The loaded live query of each spec, in order; each counts this caller as a
        holder until ``release``. ``fetch`` runs the missing ones (default: the host's);
        its exception, or the one that failed a load this caller waited for, is raised
        (and nothing stays held)."""
        queries: list[LiveQuery] = []
        new: list[LiveQuery] = []
        for spec in specs:
            query = self.by_key.get(spec.key)
            if query is None:
                query = self.by_key[spec.key] = LiveQuery(spec, self.host)
                new.append(query)
            query.holders += 1
            queries.append(query)
        metrics = self.host.metrics
        try:
            if new:
                if metrics is not None:
                    metrics.query_fetches.labels(reason="load").inc(len(new))
                try:
                    data = (fetch or self.host.fetch)([q.spec for q in new])
                    if len(data) != len(new):
                        raise RuntimeError(
                            f"Backend.fetch returned {len(data)} results for {len(new)} queries"
                        )
                    for query, one in zip(new, data, strict=True):
                        query.load(one)
                except BaseException as exc:
                    # Whatever failed (the fetch, a result that does not load), every
                    # waiter of these queries gets the error and the next one tries again.
                    for query in new:
                        if query.loaded.is_set():
                            continue  # loaded before the failure: kept for its holders
                        query.fail(exc)
                        if self.by_key.get(query.spec.key) is query:
                            del self.by_key[query.spec.key]
                    raise
            for query in queries:
                query.loaded.wait()
                if query.error is not None:
                    raise query.error
        except BaseException:
            for query in queries:
                self.release(query)
            raise
        if metrics is not None:
            metrics.query_joins.labels(outcome="fetched").inc(len(new))
            metrics.query_joins.labels(outcome="shared").inc(len(queries) - len(new))
            metrics.live_queries.set(len(self.by_key))
        return queries

    def release(self, query: LiveQuery) -> None:
        """One holder less; the last one drops the query."""
        query.holders -= 1
        if query.holders > 0:
            return
        if self.by_key.get(query.spec.key) is query:
            del self.by_key[query.spec.key]
        query.drop()
        if self.host.metrics is not None:
            self.host.metrics.live_queries.set(len(self.by_key))

    def stats(self) -> dict[str, Any]:
        """Counts for diagnostics: queries and their members."""
        return {
            "queries": len(self.by_key),
            "members": sum(len(q.members) for q in self.by_key.values()),
        }
