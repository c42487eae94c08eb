"""A support trace end to end: switched on at run time, recorded, exported, replayed.

On the session's shared relay (gunicorn, two gevent workers, real PostgreSQL): a client
connects; ``manage.py ddp_trace start --session`` switches a trace on while it is
connected (the relay learns it from the change stream: no restart); the client
subscribes, calls a method that answers, one that fails and one that does not exist,
unsubscribes and leaves. ``ddp_trace export`` gives the recorded frames (both
directions, the relay's id, secrets redacted), and ``ddp_trace replay`` plays them
against the relay as a fixture would: the answers are equivalent.

Must not: leave the shared relay's data changed (the scenario only reads).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from django_app.trace_replay import replay
from relay.client import DDPClient, DDPClientError
from tests.fixtures.relays import manage

pytestmark = pytest.mark.e2e

#: Bound on every wait for the relay to act on the trace.
WAIT = 15.0


def _frames(database_url: str, trace_id: str) -> list[dict[str, Any]]:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT frames FROM ddp_trace_chunk WHERE trace_id = %s", [trace_id])
        return [frame for (frames,) in cur.fetchall() for frame in frames]


def _wait_for_frame(database_url: str, trace_id: str, wanted: str) -> list[dict[str, Any]]:
    """The trace's stored frames once one of them is a client's ``wanted`` message."""
    deadline = time.monotonic() + WAIT
    while True:
        frames = _frames(database_url, trace_id)
        if any(f["d"] == "in" and json.loads(f["m"]).get("msg") == wanted for f in frames):
            return frames
        if time.monotonic() > deadline:
            raise AssertionError(f"no {wanted!r} frame stored within {WAIT}s: {frames}")
        time.sleep(0.1)


def test_a_trace_recorded_on_a_relay_replays_as_a_fixture(
    relay_server: Any, e2e_database: str, tmp_path: Path
) -> None:
    client = DDPClient(relay_server.ws_url, timeout=15)
    session_id = client.connect()
    try:
        trace_id = manage(
            e2e_database, "ddp_trace", "start", "--session", session_id, "--minutes", "5"
        ).strip()
        # The relay starts recording with the connect it answered before (synthetic) and
        # stores it within a couple of seconds.
        _wait_for_frame(e2e_database, trace_id, "connect")
        sub = client.subscribe("books.all")
        with pytest.raises(DDPClientError):
            client.call("books.fail")
        with pytest.raises(DDPClientError):
            client.call("no.such.method", {"password": "zqHUNTER2"})
        client.unsubscribe(sub)
    finally:
        client.close()
    frames = _wait_for_frame(e2e_database, trace_id, "disconnect")

    exported = manage(e2e_database, "ddp_trace", "export", trace_id)
    document = json.loads(exported)
    (session,) = document["sessions"]
    assert session["session"] == session_id
    assert session["relays"] and all("-" in relay for relay in session["relays"])
    kinds = [(f["d"], json.loads(f["m"]).get("msg")) for f in session["frames"]]
    assert ("in", "sub") in kinds and ("out", "added") in kinds and ("out", "ready") in kinds
    assert ("in", "method") in kinds and ("out", "result") in kinds
    assert ("out", "updated") in kinds and ("out", "nosub") in kinds
    assert not any("zqHUNTER2" in f["m"] for f in frames)  # redacted before it was stored

    # As a test fixture: the recorded client frames against the relay, answers compared.
    report = replay(document, relay_server.ws_url, timeout=10)
    assert report.ok, report.describe()
    assert len(report.steps) >= 6

    # And as the command a support engineer runs on the downloaded file.
    path = tmp_path / "trace.json"
    path.write_text(exported)
    out = manage(e2e_database, "ddp_trace", "replay", str(path), "--url", relay_server.ws_url)
    assert out.startswith("equivalent")
    manage(e2e_database, "ddp_trace", "stop", trace_id)
