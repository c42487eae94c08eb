"""Channel streams: routing committed changes to subscriptions in memory, in order."""

from __future__ import annotations

from typing import Any

import gevent

from relay.backend import Condition, DecodedChange, Route
from relay.protocol.changestream import Change
from relay.protocol.mergebox import MergeBox
from relay.stream.fanout import RING_SIZE, Streams, Transaction
from tests.relay.stream.helpers import BOOKS, BY_ANN, FakeSession, make


def ins(pk: str, title: str, author: str = "ann") -> Change:
    return Change("i", pk, {"title": title, "author": author})


def upd(pk: str, title: str, author: str = "ann") -> Change:
    return Change("u", pk, {"title": title, "author": author})


def test_first_attach_listens_and_changes_become_ddp_messages() -> None:
    streams, listened, unlistened = make()
    session = FakeSession()
    att = streams.attach(session, "s1", BOOKS, (5, "E"))  # type: ignore[arg-type]
    assert listened == ["ddp_books"]
    streams.deliver("ddp_books", 6, "E", 100, [ins("b1", "One")])
    streams.deliver("ddp_books", 7, "E", 101, [upd("b1", "Uno"), upd("b1", "Uno")])
    streams.deliver("ddp_books", 8, "E", 102, [Change("d", "b1", {})])
    assert session.sent == [
        {"msg": "added", "collection": "books", "id": "b1", "fields": {"title": "One"}},
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "Uno"}},
        {"msg": "removed", "collection": "books", "id": "b1"},
    ]
    streams.detach(att)
    assert unlistened == ["ddp_books"] and not streams.streams


def test_documents_move_in_and_out_of_a_filtered_subscription() -> None:
    streams, _, _ = make()
    session = FakeSession()
    streams.attach(session, "ann", BY_ANN, (0, "E"))  # type: ignore[arg-type]
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "One", "bob")])
    assert session.sent == []
    streams.deliver("ddp_books", 2, "E", 2, [upd("b1", "One", "ann")])
    streams.deliver("ddp_books", 3, "E", 3, [upd("b1", "One", "bob")])
    assert [m["msg"] for m in session.sent] == ["added", "removed"]


def test_overlapping_subscriptions_share_a_document_through_the_mergebox() -> None:
    streams, _, _ = make()
    session = FakeSession()
    streams.attach(session, "all", BOOKS, (0, "E"))  # type: ignore[arg-type]
    streams.attach(session, "ann", BY_ANN, (0, "E"))  # type: ignore[arg-type]
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "One")])
    streams.deliver("ddp_books", 2, "E", 2, [upd("b1", "One", "bob")])
    # one added (the second provider is silent), and leaving "ann" keeps it under "all"
    assert [m["msg"] for m in session.sent] == ["added"]
    assert session.mergebox.publishes("all", "books", "b1")
    assert not session.mergebox.publishes("ann", "books", "b1")


def test_each_subscription_skips_what_its_snapshot_already_had() -> None:
    streams, _, _ = make()
    early, late = FakeSession(), FakeSession()
    streams.attach(early, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    streams.attach(late, "s", BOOKS, (2, "E"))  # type: ignore[arg-type]  # snapshot ahead
    late.mergebox.add("s", "books", "b1", {"title": "Two"})
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "One")])
    streams.deliver("ddp_books", 2, "E", 2, [upd("b1", "Two")])
    streams.deliver("ddp_books", 3, "E", 3, [upd("b1", "Three")])
    assert [m["msg"] for m in early.sent] == ["added", "changed", "changed"]
    assert late.sent == [
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "Three"}}
    ]


def test_a_late_attacher_catches_up_from_the_ring_or_resyncs() -> None:
    streams, _, _ = make()
    first = FakeSession()
    streams.attach(first, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    for seq in range(1, 4):
        streams.deliver("ddp_books", seq, "E", seq, [ins(f"b{seq}", "t")])
    behind = FakeSession()
    streams.attach(behind, "s", BOOKS, (1, "E"))  # type: ignore[arg-type]
    assert [m["id"] for m in behind.sent] == ["b2", "b3"]
    for seq in range(4, 4 + RING_SIZE + 1):
        streams.deliver("ddp_books", seq, "E", seq, [ins(f"b{seq}", "t")])
    far = FakeSession()
    streams.attach(far, "s", BOOKS, (1, "E"))  # type: ignore[arg-type]
    assert far.resyncs == ["s"] and far.sent == []


def test_epoch_change_and_lost_history_resync() -> None:
    streams, _, _ = make()
    a, b = FakeSession(), FakeSession()
    streams.attach(a, "s", BOOKS, (3, "E"))  # type: ignore[arg-type]
    streams.attach(b, "t", BOOKS, (3, "OTHER"))  # type: ignore[arg-type]
    assert b.resyncs == ["t"]
    streams.lost_history("ddp_books", 10, "F")
    assert a.resyncs == ["s"] and streams.position("ddp_books") == (10, "F")


def test_undecidable_routes_resync_instead_of_guessing() -> None:
    streams, _, _ = make()
    session = FakeSession()
    streams.attach(session, "s", Route("ddp_books", "books", None), (0, "E"))  # type: ignore[arg-type]
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "One")])
    assert session.resyncs == ["s"] and session.sent == []


def test_write_fence_waits_for_delivery() -> None:
    streams, _, _ = make()
    session = FakeSession()
    streams.attach(session, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    assert streams.wait_for("ddp_books", 0, 0.01)
    assert not streams.wait_for("ddp_books", 1, 0.01)
    assert streams.wait_for("other_channel", 99, 0.01)  # not streamed here: nothing to wait for
    waiter = gevent.spawn(streams.wait_for, "ddp_books", 2, 2.0)
    gevent.sleep(0)
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "One")])
    gevent.sleep(0)
    assert not waiter.ready()
    streams.deliver("ddp_books", 2, "E", 2, [upd("b1", "Two")])
    assert waiter.get(timeout=1) is True


def test_closed_sessions_and_unknown_collections_are_skipped() -> None:
    streams, _, _ = make()
    closed = FakeSession()
    closed.closed = True
    streams.attach(closed, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    other = FakeSession()
    streams.attach(other, "s", Route("ddp_books", "authors", ()), (0, "E"))  # type: ignore[arg-type]
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "One")])
    assert closed.sent == [] and other.sent == []


def test_consecutive_transactions_reach_each_session_in_one_write_in_order() -> None:
    streams, _, _ = make()
    sessions = [FakeSession() for _ in range(3)]
    for s in sessions:
        streams.attach(s, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    streams.deliver_many(
        "ddp_books",
        [
            Transaction(1, "E", 1, [ins("b1", "One")]),
            Transaction(2, "E", 2, [upd("b1", "Two"), ins("b2", "B")]),
            Transaction(3, "E", 3, [Change("d", "b1", {})]),
        ],
    )
    for s in sessions:
        assert s.writes == [4]  # one write for the three transactions
        assert [(m["msg"], m["id"]) for m in s.sent] == [
            ("added", "b1"),
            ("changed", "b1"),
            ("added", "b2"),
            ("removed", "b1"),
        ]
    assert streams.position("ddp_books") == (3, "E")
    # What a stream already applied is never applied twice.
    streams.deliver_many("ddp_books", [Transaction(3, "E", 3, [ins("b9", "x")])])
    assert all(s.writes == [4] for s in sessions)


def test_a_coalesced_delivery_respects_each_subscriptions_cursor() -> None:
    streams, _, _ = make()
    early, late = FakeSession(), FakeSession()
    streams.attach(early, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    streams.attach(late, "s", BOOKS, (2, "E"))  # type: ignore[arg-type]  # snapshot at seq 2
    late.mergebox.add("s", "books", "b1", {"title": "Two"})
    streams.deliver_many(
        "ddp_books",
        [
            Transaction(i, "E", i, [upd("b1", t) if i > 1 else ins("b1", t)])
            for i, t in ((1, "One"), (2, "Two"), (3, "Three"))
        ],
    )
    assert [m["msg"] for m in early.sent] == ["added", "changed", "changed"]
    assert late.sent == [
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "Three"}}
    ]


def test_sessions_share_the_value_objects_of_a_change() -> None:
    streams, _, _ = make()
    a, b = FakeSession(), FakeSession()
    for s in (a, b):
        streams.attach(s, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    streams.deliver("ddp_books", 1, "E", 1, [ins("b1", "Title")])
    streams.deliver("ddp_books", 2, "E", 2, [upd("b1", "Title")])  # equal: nothing to send
    title_a = a.mergebox._docs["books"]["b1"]["title"]
    title_b = b.mergebox._docs["books"]["b1"]["title"]
    assert title_a is title_b
    assert [m["msg"] for m in a.sent] == ["added"]
    # Deleting the document forgets it in the worker's table too.
    streams.deliver("ddp_books", 3, "E", 3, [Change("d", "b1", {})])
    assert len(streams.interner) == 0


class RowDecoder:
    """decode_change publishing every column of the row, as a collection does."""

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        fields = dict(change.values) if change.op != "d" else {}
        return DecodedChange("books", str(change.pk), change.op, fields, dict(change.values))


def test_sessions_holding_one_version_of_a_document_share_one_dict() -> None:
    streams = Streams(RowDecoder(), lambda channel: None, lambda channel: None)  # type: ignore[arg-type]
    interner = streams.interner

    def row(n: int, title: str) -> dict[str, Any]:
        # Fresh objects every time, as each subscription's snapshot query gives them.
        return {"title": "".join(title), "pages": 1000 + n * 1000, "tags": ["x", str(n)]}

    ids = ["b0", "b1", "b2"]
    sessions = [FakeSession() for _ in range(100)]
    for k, session in enumerate(sessions):
        for n, doc_id in enumerate(ids):
            fields = interner.fields("books", doc_id, row(n, f"T{n}"))
            assert session.mergebox.add("s", "books", doc_id, fields) == [
                {"msg": "added", "collection": "books", "id": doc_id, "fields": row(n, f"T{n}")}
            ]
        if k % 2:  # parked and resumed: its views are its own dicts again
            session.mergebox = MergeBox.from_state(session.mergebox.to_state())
        streams.attach(session, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]

    def views(doc_id: str, of: list[FakeSession] = sessions) -> set[int]:
        return {id(s.mergebox._docs["books"][doc_id]) for s in of}

    loaded = sessions[::2]
    assert all(len(views(doc_id, loaded)) == 1 for doc_id in ids)
    before = {doc_id: loaded[0].mergebox._docs["books"][doc_id] for doc_id in ids}

    # One transaction: b0's title changes, b1 is written unchanged (fresh objects, equal).
    changes = [Change("u", "b0", row(0, "New")), Change("u", "b1", row(1, "T1"))]
    streams.deliver("ddp_books", 1, "E", 1, changes)
    for session in sessions:
        assert session.sent == [
            {"msg": "changed", "collection": "books", "id": "b0", "fields": {"title": "New"}}
        ]
    # Every session, resumed or not, now holds the change's one dict for b0 and b1.
    for doc_id, n, title in (("b0", 0, "New"), ("b1", 1, "T1")):
        assert views(doc_id) == {id(interner.fields("books", doc_id, row(n, title)))}
        assert sessions[1].mergebox.get("books", doc_id) == row(n, title)
    assert views("b2", loaded) == {id(before["b2"])}
    assert all(len(views(doc_id, loaded)) == 1 for doc_id in ids)
    # Dicts are replaced, never changed: the old version is still what it was.
    assert before["b0"] == row(0, "T0") and before["b1"] == row(1, "T1")


def test_a_route_of_one_document_gets_only_that_documents_changes() -> None:
    # Routes keyed by document (a login token's watch, a user's own document) are found by
    # the change's id, not tested one by one against every change of the channel.
    streams, _, unlistened = make()
    one = FakeSession()
    keyed = Route("ddp_books", "books", (Condition("id", "exact", "b1"),), doc_id="b1")
    att = streams.attach(one, "s1", keyed, (0, ""))
    streams.deliver("ddp_books", 1, "E", 1, [Change("i", "b2", {"id": "b2", "t": "x"})])
    assert one.sent == [] and att.cursor == 0  # not even looked at
    streams.deliver("ddp_books", 2, "E", 2, [Change("i", "b1", {"id": "b1", "t": "y"})])
    assert [m["msg"] for m in one.sent] == ["added"]
    streams.deliver("ddp_books", 3, "E", 3, [Change("d", "b1", {})])
    assert [m["msg"] for m in one.sent] == ["added", "removed"]
    streams.detach(att)
    assert unlistened == ["ddp_books"]
