"""Session traces on the write side (``django_app.tracing``, its admin, ``ddp_trace``) and
the replay's judgement (``django_app.trace_replay``), against real PostgreSQL.

These tests commit for real (``transaction=True``): a trace reaches relays through the
change stream, which only commits publish.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from django_app import changes
from django_app.backend import DjangoBackend
from django_app.models import SessionTrace, TraceChunk
from django_app.trace_replay import Step, compare, normalize, steps_of
from django_app.tracing import (
    EXPORT_FORMAT,
    TRACE_COLLECTION,
    export_trace,
    save_trace,
    start_trace,
    stop_trace,
    trace_channel,
    trace_orders,
)
from relay.backend import TraceBackend

pytestmark = pytest.mark.django_db(transaction=True)

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"


def _frame(i: int, d: str, msg: dict[str, Any], t: float | None = None) -> dict[str, Any]:
    return {"i": i, "t": t if t is not None else 100.0 + i, "d": d, "m": json.dumps(msg)}


@pytest.fixture
def staff(db: None) -> Any:
    return get_user_model().objects.create_superuser("boss", "boss@example.com", "pw")


def test_the_backend_traces() -> None:
    assert isinstance(DjangoBackend(), TraceBackend)


def test_start_needs_one_target_and_a_sane_duration() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        start_trace(minutes=5)
    with pytest.raises(ValueError, match="exactly one"):
        start_trace(session_id="s", user_id="1", minutes=5)
    with pytest.raises(ValueError, match="minutes"):
        start_trace(session_id="s", minutes=0)
    with pytest.raises(ValueError, match="minutes"):
        start_trace(session_id="s", minutes=10**6)
    with pytest.raises(ValueError, match="max_frames"):
        start_trace(session_id="s", minutes=1, max_frames=0)
    assert not SessionTrace.objects.exists()


def test_orders_are_the_running_traces_on_the_change_stream(staff: Any) -> None:
    channel = trace_channel()
    before = changes.positions([channel])[channel]
    running = start_trace(user=staff, minutes=5, max_frames=10)
    ended = start_trace(session_id="old", minutes=5)
    stop_trace(ended)
    orders = trace_orders()
    assert [o.id for o in orders.orders] == [running.pk]
    order = orders.orders[0]
    assert order.user_id == str(staff.pk) and order.session_id is None
    assert order.max_frames == 10
    assert abs(order.until - (timezone.now() + dt.timedelta(minutes=5)).timestamp()) < 5
    assert orders.route is not None
    assert (orders.route.channel, orders.route.collection) == (channel, TRACE_COLLECTION)
    # Each start and stop committed a change on the trace channel: relays hear of it.
    assert orders.position[0] >= before[0] + 3


def test_save_keeps_batches_within_the_total_bound() -> None:
    trace = start_trace(session_id="s1", minutes=5)
    trace.max_total_chars = 100
    trace.save()
    frames = [_frame(0, "in", {"msg": "connect"}), _frame(1, "out", {"msg": "connected"})]
    assert save_trace(trace.pk, "relay-a", "s1", 0, frames, {"recorded": 2})
    big = [{"i": 2, "t": 1.0, "d": "out", "m": "x" * 90}]
    assert not save_trace(trace.pk, "relay-a", "s1", 2, big, {})  # over the total
    assert not save_trace("missing", "relay-a", "s1", 0, frames, {})
    assert not save_trace(trace.pk, "relay-a", "s1", 0, [], {})
    assert not save_trace(trace.pk, "relay-a", "s1", -1, frames, {})
    assert not save_trace(trace.pk, "r", "s1", 0, frames * 600, {})  # a batch too large
    assert TraceChunk.objects.count() == 1
    DjangoBackend().save_trace(trace.pk, "relay-b", "s2", 0, frames, {"recorded": 2})
    assert TraceChunk.objects.count() == 2


def test_export_orders_frames_per_session_with_their_relays() -> None:
    trace = start_trace(user_id="7", minutes=5)
    save_trace(trace.pk, "relay-a", "s1", 2, [_frame(2, "in", {"msg": "sub"}, t=103)], {})
    save_trace(trace.pk, "relay-a", "s1", 0, [_frame(0, "in", {"msg": "connect"}, t=101)], {})
    save_trace(trace.pk, "relay-b", "s1", 0, [_frame(0, "out", {"msg": "ready"}, t=104)], {})
    save_trace(trace.pk, "relay-b", "s2", 0, [_frame(0, "in", {"msg": "connect"})], {"n": 1})
    document = export_trace(trace)
    assert document["format"] == EXPORT_FORMAT
    assert document["trace"]["user_id"] == "7"
    first, second = document["sessions"]
    assert first["session"] == "s1" and first["relays"] == ["relay-a", "relay-b"]
    assert [json.loads(f["m"])["msg"] for f in first["frames"]] == ["connect", "sub", "ready"]
    assert [f["relay"] for f in first["frames"]] == ["relay-a", "relay-a", "relay-b"]
    assert second["session"] == "s2" and second["stats"] == {"n": 1}
    json.dumps(document)  # downloadable as is


def test_the_command_starts_lists_exports_and_stops(staff: Any) -> None:
    out = io.StringIO()
    call_command("ddp_trace", "start", "--user", "boss", "--minutes", "3", stdout=out)
    trace_id = out.getvalue().strip()
    trace = SessionTrace.objects.get(pk=trace_id)
    assert trace.user_id == str(staff.pk) and trace.created_by == "manage.py ddp_trace"
    save_trace(trace_id, "relay-a", "s1", 0, [_frame(0, "in", {"msg": "connect"})], {})
    out = io.StringIO()
    call_command("ddp_trace", "list", stdout=out)
    assert trace_id in out.getvalue() and "1 batch(es)" in out.getvalue()
    out = io.StringIO()
    call_command("ddp_trace", "export", trace_id, stdout=out)
    assert json.loads(out.getvalue())["sessions"][0]["session"] == "s1"
    call_command("ddp_trace", "stop", trace_id, stdout=io.StringIO())
    assert trace_orders().orders == ()
    with pytest.raises(CommandError, match="no user"):
        call_command("ddp_trace", "start", "--user", "nobody", stdout=io.StringIO())
    with pytest.raises(CommandError, match="minutes"):
        call_command("ddp_trace", "start", "--session", "s", "--minutes", "-1")
    with pytest.raises(CommandError, match="no trace"):
        call_command("ddp_trace", "export", "missing")


def test_replay_of_a_missing_file_or_a_closed_port_is_a_clear_error(tmp_path: Any) -> None:
    with pytest.raises(CommandError, match="cannot replay"):
        call_command("ddp_trace", "replay", str(tmp_path / "none.json"), "--url", "ws://x/")
    export = {"format": EXPORT_FORMAT, "sessions": [{"session": "s", "frames": [
        _frame(0, "in", {"msg": "connect", "version": "1", "support": ["1"]})]}]}  # fmt: skip
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(export))
    with pytest.raises(CommandError, match="cannot replay"):
        url = "ws://127.0.0.1:9/websocket"
        call_command("ddp_trace", "replay", str(path), "--url", url, "--timeout", "1")
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CommandError, match="not a trace export"):
        call_command("ddp_trace", "replay", str(path), "--url", "ws://127.0.0.1:9/")


def test_the_admin_reads_downloads_and_starts_traces(staff: Any) -> None:
    client = Client()
    client.force_login(staff)
    trace = start_trace(session_id="s1", minutes=5)
    save_trace(trace.pk, "relay-a", "s1", 0, [_frame(0, "in", {"msg": "<sub>"})], {})
    page = client.get(f"/admin/ddp/sessiontrace/{trace.pk}/change/")
    assert page.status_code == 200
    assert b"relay-a" in page.content and b"&lt;sub&gt;" in page.content  # escaped
    download = client.get(f"/admin/ddp/sessiontrace/{trace.pk}/download/")
    assert download.status_code == 200
    assert "attachment" in download["Content-Disposition"]
    assert json.loads(download.content)["trace"]["id"] == trace.pk
    assert client.get("/admin/ddp/sessiontrace/missing/download/").status_code == 404
    assert Client().get(f"/admin/ddp/sessiontrace/{trace.pk}/download/").status_code == 302

    added = client.post(
        "/admin/ddp/sessiontrace/add/",
        {"session_id": "", "user_id": str(staff.pk), "minutes": "30", "max_frames": "100",
         "max_chars": "5000", "frame_chars": "200", "note": "ticket 42"},
    )  # fmt: skip
    assert added.status_code == 302
    new = SessionTrace.objects.get(note="ticket 42")
    assert new.user_id == str(staff.pk) and new.session_id is None and new.created_by == "boss"
    assert dt.timedelta(minutes=29) < new.until - timezone.now() <= dt.timedelta(minutes=30)
    both = client.post(
        "/admin/ddp/sessiontrace/add/",
        {"session_id": "s", "user_id": "1", "minutes": "5", "max_frames": "1",
         "max_chars": "1", "frame_chars": "1"},
    )  # fmt: skip
    assert both.status_code == 200 and b"exactly one target" in both.content

    # The user admin's action: trace the selected users' sessions for 15 minutes.
    user_model = get_user_model()
    changelist = f"/admin/{user_model._meta.app_label}/{user_model._meta.model_name}/"
    done = client.post(
        changelist,
        {"action": "trace_ddp_sessions_15", "_selected_action": [str(staff.pk)]},
    )
    assert done.status_code == 302
    assert SessionTrace.objects.filter(user_id=str(staff.pk)).count() == 2

    stopped = client.post(
        "/admin/ddp/sessiontrace/",
        {"action": "stop_traces", "_selected_action": [trace.pk]},
    )
    assert stopped.status_code == 302
    assert SessionTrace.objects.get(pk=trace.pk).until <= timezone.now()


# -- the replay's judgement (pure) ---------------------------------------------------------


def _session(frames: list[dict[str, Any]]) -> dict[str, Any]:
    return {"format": EXPORT_FORMAT, "sessions": [{"session": "s", "frames": frames}]}


def test_steps_pair_each_client_frame_with_the_answers_after_it() -> None:
    frames = [
        _frame(0, "in", {"msg": "connect"}),
        _frame(1, "out", {"msg": "connected", "session": "abc"}),
        _frame(2, "out", {"msg": "ping"}),
        _frame(3, "in", {"msg": "pong"}),
        _frame(4, "in", {"msg": "sub", "id": "1"}),
        {**_frame(5, "out", {"msg": "added"}), "n": 9000},
        _frame(6, "out", {"msg": "ready", "subs": ["1"]}),
        _frame(7, "in", json.loads('{"oversized": 2000000, "limit": 1000000}')),
    ]
    random.Random(1).shuffle(frames)  # stored batches come in any order: (t, i) sorts
    steps = steps_of(_session(frames))
    assert [json.loads(s.sent).get("msg") for s in steps] == ["connect", "sub", None]
    assert len(steps[0].expected) == 1
    assert steps[1].expected[0] is None  # cut: matches anything
    assert steps[2].skip is not None
    with pytest.raises(ValueError, match="no session"):
        steps_of(_session(frames), session="other")
    with pytest.raises(ValueError, match="not a trace export"):
        steps_of({"format": "x"})


meteor_ids = st.text(alphabet=ALPHABET, min_size=17, max_size=17)


@settings(max_examples=100, deadline=None)
@given(
    a=st.lists(meteor_ids, min_size=1, max_size=4, unique=True),
    b=st.lists(meteor_ids, min_size=4, max_size=4, unique=True),
    value=st.integers(),
)
def test_random_ids_and_dates_are_masked_consistently(
    a: list[str], b: list[str], value: int
) -> None:
    # The model: one side's ids renamed one to one are equivalent; a changed value, or
    # two ids merged into one, are not.
    renaming = dict(zip(a, b, strict=False))
    recorded = [
        json.dumps({"msg": "added", "id": x, "fields": {"v": value, "at": {"$date": 1}}})
        for x in a + a[:1]
    ]
    replayed = [
        json.dumps({"msg": "added", "id": renaming[x], "fields": {"v": value, "at": {"$date": 2}}})
        for x in a + a[:1]
    ]
    assert compare(recorded, replayed, ({}, {})) == []
    assert compare(recorded, list(reversed(replayed)), ({}, {}), ordered=False) == []
    changed = [*replayed[:-1], replayed[-1].replace(f'"v": {value}', f'"v": {value + 1}')]
    assert compare(recorded, changed, ({}, {})) != []
    assert compare(recorded, changed, ({}, {}), ordered=False) != []
    if len(a) > 1:
        merged = [replayed[0]] * len(replayed)
        assert compare(recorded, merged, ({}, {})) != []
    assert compare(recorded, replayed[:-1], ({}, {})) != []


def test_connected_session_ids_are_masked_and_cuts_match_anything() -> None:
    assert normalize('{"msg":"connected","session":"xyz"}', {}) == {
        "msg": "connected",
        "session": "<session>",
    }
    assert compare([None, '{"msg":"ready"}'], ['{"anything":1}', '{"msg":"ready"}'], ({}, {})) == []
    assert Step("x", ()).skip is None
