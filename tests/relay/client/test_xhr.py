"""relay.client.xhr: the frames an xhr-polling client reads (the HTTP side runs against
real relays in tests/e2e/test_sockjs_http.py)."""

from __future__ import annotations

import json

import pytest

from relay.client.xhr import SessionLost, XhrClient, XhrError


def test_a_data_frame_is_kept_and_counted_as_meteor_counts() -> None:
    client = XhrClient(["http://127.0.0.1:1"])
    msgs = [{"msg": "connected", "session": "S"}, {"msg": "pong"}, {"msg": "ready", "subs": []}]
    frame = "a" + json.dumps([json.dumps(m) for m in msgs])
    assert client.frame(frame) == msgs
    assert client.messages == msgs
    assert client.received == 2  # pong is not counted (Meteor 3.5's receivedCount)


def test_heartbeats_are_nothing_and_a_second_open_or_a_close_is_a_lost_session() -> None:
    client = XhrClient(["http://127.0.0.1:1"])
    assert client.frame("h") == []
    for frame in ("o", 'c[3000,"Go away!"]'):
        with pytest.raises(SessionLost):
            client.frame(frame)
    with pytest.raises(XhrError):
        client.frame("<html>")
