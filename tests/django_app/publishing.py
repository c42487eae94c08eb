"""Running a publication through the backend as the relay does, for the django_app tests.

``subscribe(backend, ctx, name, params)`` calls ``Backend.subscribe`` with a
``RecordingSink`` (what the low-level API published), then ``Backend.fetch`` for the
plan's queries, and returns everything a test looks at: the documents (a count's as its
one ``{count: n}`` document), the routes, positions, specs and the sink.

Must not: hold tests (pytest collects ``test_*`` modules only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.backend import (
    Backend,
    CallContext,
    ClientError,
    DecodedChange,
    Document,
    QueryData,
    QuerySpec,
    Route,
    SubscriptionPlan,
)


@dataclass
class RecordingSink:
    """A ``PublicationSink`` that records what a publication did with it."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)
    observers: list[tuple[str, str, Callable[[Sequence[DecodedChange]], None], Any]] = field(
        default_factory=list
    )
    stopped: bool = False

    def added(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        self.calls.append(("added", collection, doc_id, dict(fields)))

    def changed(
        self,
        collection: str,
        doc_id: str,
        fields: Mapping[str, Any],
        cleared: Sequence[str] = (),
    ) -> None:
        self.calls.append(("changed", collection, doc_id, dict(fields), tuple(cleared)))

    def removed(self, collection: str, doc_id: str) -> None:
        self.calls.append(("removed", collection, doc_id))

    def ready(self) -> None:
        self.calls.append(("ready",))

    def error(self, error: ClientError) -> None:
        self.calls.append(("error", error.error, error.reason))
        self.stopped = True

    def stop(self) -> None:
        self.calls.append(("stop",))
        self.stopped = True

    def on_stop(self, callback: Callable[[], None]) -> None:
        self.stop_callbacks.append(callback)

    def observe(
        self,
        channel: str,
        collection: str,
        callback: Callable[[Sequence[DecodedChange]], None],
        position: tuple[int, str] = (0, ""),
    ) -> None:
        self.observers.append((channel, collection, callback, position))


@dataclass(frozen=True)
class Subscribed:
    """A publication's result as a test sees it."""

    plan: SubscriptionPlan
    data: Sequence[QueryData]
    sink: RecordingSink

    @property
    def specs(self) -> Sequence[QuerySpec]:
        return self.plan.queries

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(spec.route for spec in self.plan.queries)

    @property
    def documents(self) -> tuple[Document, ...]:
        """Every query's documents, a count as its one document."""
        out: list[Document] = []
        for spec, data in zip(self.plan.queries, self.data, strict=True):
            if spec.count is not None:
                count = spec.count
                out.append(Document(count.collection, count.id, {count.field: len(data.documents)}))
            elif spec.window is not None:
                window = spec.window
                end = None if window.limit is None else window.skip + window.limit
                out.extend(data.documents[window.skip : end])
            else:
                out.extend(data.documents)
        return tuple(out)

    @property
    def positions(self) -> Mapping[str, tuple[int, str]]:
        merged: dict[str, tuple[int, str]] = {}
        for data in self.data:
            merged.update(data.positions)
        return merged


def subscribe(
    backend: Backend,
    ctx: CallContext,
    name: str,
    params: Sequence[Any],
    sink: RecordingSink | None = None,
) -> Subscribed:
    """``Backend.subscribe`` then ``Backend.fetch``, as the relay runs a subscription."""
    sink = sink if sink is not None else RecordingSink()
    plan = backend.subscribe(ctx, name, params, sink)
    data = backend.fetch(plan.queries) if plan.queries else []
    return Subscribed(plan, data, sink)
