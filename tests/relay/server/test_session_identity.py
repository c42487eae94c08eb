"""A session's identity: logging in and out re-runs its subscriptions (Meteor's setUserId),
universal publications, revocation through the change stream, and the resume binding."""

from __future__ import annotations

from collections.abc import Mapping

import gevent
import pytest

from relay import disconnect
from relay.backend import Identity
from relay.config import Settings
from relay.protocol.changestream import Change
from relay.resume.resumer import Resumed
from relay.server.session import UNIVERSAL_PREFIX
from tests.relay.server.helpers import TOKENS, FakeContext, FakeResumer, Peer


@pytest.fixture
def ctx() -> FakeContext:
    context = FakeContext(Settings())
    context.backend.identity = Identity()  # anonymous at the handshake
    return context


def _kinds(msgs: list[dict[str, object]]) -> list[object]:
    return [m["msg"] for m in msgs]


def _call(peer: Peer, method_id: str, method: str, *params: object) -> list[dict[str, object]]:
    """Call ``method`` and return every message from then to its ``updated``."""
    start = len(peer.messages())
    peer.send({"msg": "method", "id": method_id, "method": method, "params": list(params)})
    peer.expect("updated")
    return peer.messages()[start:]


def test_login_reruns_subscriptions_and_sends_the_difference_before_result(
    ctx: FakeContext,
) -> None:
    peer = Peer(ctx)
    peer.connect()
    peer.send(
        {"msg": "sub", "id": "m", "name": "mine"}, {"msg": "sub", "id": "p", "name": "public"}
    )
    peer.expect("ready")
    peer.expect("ready")
    msgs = _call(peer, "1", "login", {"user": "7"})
    # Only the user-dependent document arrives; the public one is not sent again.
    assert _kinds(msgs) == ["added", "result", "updated"]
    assert msgs[0] == {"msg": "added", "collection": "users", "id": "7", "fields": {"name": "7"}}
    assert peer.session.identity.user_id == "7"
    assert ctx.backend.subscribed.count("public") == 2  # re-run, with nothing to send


def test_logout_removes_what_only_the_user_could_see_before_result(ctx: FakeContext) -> None:
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "7"}]})
    peer.expect("updated")
    peer.send({"msg": "sub", "id": "m", "name": "mine"})
    peer.expect("ready")
    msgs = _call(peer, "2", "logout")
    assert _kinds(msgs) == ["removed", "result", "updated"]
    assert peer.session.identity.user_id is None
    assert ctx.backend.tokens == {}  # the logout destroyed the connection's token


def test_universal_publications_run_without_a_sub_and_follow_the_user(ctx: FakeContext) -> None:
    ctx.backend.universal = ["mine"]
    peer = Peer(ctx)
    peer.connect()
    gevent.sleep(0.05)
    assert peer.new() == []  # logged out: the user's document is not published, no ready
    msgs = _call(peer, "1", "login", {"user": "7"})
    assert _kinds(msgs) == ["added", "result", "updated"]
    assert msgs[0]["collection"] == "users"
    assert _kinds(_call(peer, "2", "logout")) == ["removed", "result", "updated"]


def test_a_client_can_neither_take_nor_stop_a_universal_subscription(ctx: FakeContext) -> None:
    ctx.backend.universal = ["mine"]
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "7"}]})
    peer.expect("updated")
    internal = UNIVERSAL_PREFIX + "mine"
    peer.send({"msg": "sub", "id": internal, "name": "public"})
    nosub = peer.expect("nosub")
    assert nosub["id"] == internal and nosub["error"]["error"] == 400
    peer.send({"msg": "unsub", "id": internal})
    peer.expect("nosub")
    gevent.sleep(0.05)
    assert "removed" not in _kinds(peer.new())
    assert internal in peer.session.subs


def test_a_deleted_credential_closes_the_session_and_it_is_not_parked() -> None:
    resumer = FakeResumer()
    ctx = FakeContext(Settings(), resumer=resumer)
    ctx.backend.identity = Identity()
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "7"}]})
    peer.expect("updated")
    assert TOKENS in ctx.listened
    # Another token's row changing or going is not this session's business.
    ctx.streams.deliver(TOKENS, 4, "E", 100, [Change("d", "t-other", {})])
    assert not peer.session.closed
    ctx.streams.deliver(TOKENS, 5, "E", 101, [Change("u", "t1", {})])
    assert not peer.session.closed
    ctx.streams.deliver(TOKENS, 6, "E", 102, [Change("d", "t1", {})])
    assert peer.session.closed and peer.session.close_reason == disconnect.REVOKED.reason
    peer.greenlet.join(timeout=2)
    assert resumer.parked == [] and len(resumer.dropped_ids) == 1
    assert TOKENS in ctx.unlistened  # the watch let go of the channel


def test_a_new_token_moves_the_watch(ctx: FakeContext) -> None:
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "7"}]})
    peer.expect("updated")
    peer.send({"msg": "method", "id": "2", "method": "login", "params": [{"user": "7"}]})
    peer.expect("updated")
    assert peer.session.identity.credential == "t2"
    ctx.streams.deliver(TOKENS, 4, "E", 100, [Change("d", "t1", {})])
    assert not peer.session.closed  # the old token no longer speaks for the session
    ctx.streams.deliver(TOKENS, 5, "E", 101, [Change("d", "t2", {})])
    assert peer.session.closed


def test_lost_history_on_the_credential_channel_verifies_it_again(ctx: FakeContext) -> None:
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "7"}]})
    peer.expect("updated")
    ctx.streams.lost_history(TOKENS, 9, "E2")  # still valid: kept, watched again
    gevent.sleep(0.05)
    assert not peer.session.closed and peer.session.identity.credential == "t1"
    del ctx.backend.tokens["t1"]  # revoked while the history was lost
    ctx.streams.lost_history(TOKENS, 12, "E3")
    with gevent.Timeout(2):
        while not peer.session.closed:
            gevent.sleep(0.01)
    assert peer.session.close_reason == disconnect.REVOKED.reason


# -- the resume binding ---------------------------------------------------------------------


def _parked_logged_in() -> tuple[FakeContext, FakeResumer, str]:
    """A session logged in with token t1 that subscribed to ``mine``, then lost its socket."""
    resumer = FakeResumer()
    ctx = FakeContext(Settings(), resumer=resumer)
    ctx.backend.identity = Identity()
    first = Peer(ctx)
    session_id = first.connect()["session"]
    first.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "7"}]})
    first.expect("updated")
    first.send({"msg": "sub", "id": "m", "name": "mine"})
    first.expect("ready")
    first.lose()
    ((state, epoch),) = resumer.parked
    assert state.credential == "t1" and state.user_id == "7"
    resumer.resumed = Resumed(state, epoch + 1, [])
    return ctx, resumer, session_id


def _reconnect(ctx: FakeContext, session_id: str, *after: Mapping[str, object]) -> Peer:
    again = Peer(ctx)
    count = ctx.resumer.resumed.state.sent_count  # type: ignore[union-attr]
    connect = {
        "msg": "connect",
        "version": "1",
        "support": ["1"],
        "session": session_id,
        "receivedCount": count,
    }
    again.send(connect, *after)  # pipelined, as Meteor clients send them
    again.expect("connected")
    return again


def test_a_logged_in_session_resumes_with_its_pipelined_resume_login() -> None:
    ctx, resumer, session_id = _parked_logged_in()
    login = {"msg": "method", "id": "9", "method": "login", "params": [{"resume": "t1"}]}
    again = _reconnect(ctx, session_id, login)
    assert resumer.accepted == [True]
    assert again.messages()[0]["session"] == session_id
    assert again.expect("result")["result"] == {"id": "7", "token": "t1"}
    again.expect("updated")
    assert again.session.identity.user_id == "7"
    # The login ran once (to judge the binding), not again from the queue.
    assert [c for c in ctx.backend.calls if c[0] == "login"] == [
        ("login", ({"user": "7"},)),
        ("login", ({"resume": "t1"},)),
    ]


@pytest.mark.parametrize(
    "after",
    [
        [],  # only the session id: an attacker who learned it
        [{"msg": "method", "id": "9", "method": "login", "params": [{"resume": "nope"}]}],
        [{"msg": "method", "id": "9", "method": "login", "params": [{"user": "8"}]}],
    ],
    ids=["id-only", "wrong-token", "password-login"],
)
def test_a_logged_in_session_is_not_resumed_without_its_credential(
    after: list[dict[str, object]],
) -> None:
    ctx, resumer, session_id = _parked_logged_in()
    again = _reconnect(ctx, session_id, *after)
    assert resumer.accepted == [False]
    assert again.messages()[0]["session"] != session_id  # a fresh session: full resync
    assert again.session.mergebox.documents_of("m") == {}


def test_a_session_without_a_credential_resumes_only_for_the_same_handshake_user() -> None:
    resumer = FakeResumer()
    ctx = FakeContext(Settings(), resumer=resumer)  # the handshake says user 42
    first = Peer(ctx)
    session_id = first.connect()["session"]
    first.send({"msg": "sub", "id": "s", "name": "all"})
    first.expect("ready")
    first.lose()
    ((state, epoch),) = resumer.parked
    resumer.resumed = Resumed(state, epoch + 1, [])
    ctx.backend.identity = Identity()  # now anonymous: not the same client
    assert _reconnect(ctx, session_id).messages()[0]["session"] != session_id
    ctx.backend.identity = Identity(user="u", user_id="42")
    assert _reconnect(ctx, session_id).messages()[0]["session"] == session_id
    assert resumer.accepted == [False, True]


@pytest.mark.parametrize(
    "connect",
    [{}, {"session": "old-session-id"}],
    ids=["nothing-to-resume", "client-cannot-resume"],
)
def test_sessions_a_resume_cannot_help_are_dropped_not_parked(
    connect: dict[str, object],
) -> None:
    resumer = FakeResumer()
    ctx = FakeContext(Settings(), resumer=resumer)
    peer = Peer(ctx)
    peer.connect(**connect)
    if connect:  # a pre-3.5 client (no receivedCount) with a subscription
        peer.send({"msg": "sub", "id": "s", "name": "all"})
        peer.expect("ready")
    peer.lose()
    assert resumer.parked == [] and len(resumer.dropped_ids) == 1


def test_a_parked_log_keeps_only_its_newest_bytes() -> None:
    resumer = FakeResumer()
    ctx = FakeContext(Settings(resume_log_bytes=300), resumer=resumer)
    peer = Peer(ctx)
    peer.connect()
    for n in range(20):
        peer.send({"msg": "method", "id": str(n), "method": "echo", "params": ["x" * 50]})
        peer.expect("updated")
    sent = peer.session.sent_count
    peer.lose()
    ((state, _),) = resumer.parked
    assert 0 < sum(len(t) for t in state.log) <= 300
    assert state.log == [json_text for json_text in peer.transport.sent[-len(state.log) :]]
    assert state.log_start == sent - len(state.log) + 1


@pytest.mark.parametrize("logs_out", [True, False], ids=["logout", "other-method"])
def test_a_revocation_seen_during_the_sessions_own_method_waits_for_its_outcome(
    ctx: FakeContext, logs_out: bool
) -> None:
    # logout deletes the session's own token: its commit can reach the listener before
    # the method returns ANONYMOUS. The session must then not be closed as revoked;
    # any other method leaves the credential in place, so the revocation stands.
    peer = Peer(ctx)
    peer.connect()
    _call(peer, "1", "login", {"user": "7"})
    call = ctx.backend.call

    def deleting_first(call_ctx: object, name: str, params: object) -> object:
        ctx.streams.deliver(TOKENS, 4, "E", 100, [Change("d", "t1", {})])
        assert not peer.session.closed  # not while the method runs
        return call(call_ctx, name, params)

    ctx.backend.call = deleting_first
    if logs_out:
        _call(peer, "2", "logout")
        gevent.sleep(0.05)
        assert not peer.session.closed and peer.session.identity.user_id is None
    else:
        start = len(peer.messages())
        peer.send({"msg": "method", "id": "2", "method": "echo", "params": [1]})
        with gevent.Timeout(2):
            while not peer.session.closed:
                gevent.sleep(0.01)
        assert peer.session.close_reason == disconnect.REVOKED.reason
        assert [m["msg"] for m in peer.messages()[start:]] == ["result", "updated"]


# -- connection hooks ----------------------------------------------------------------------


def test_connection_hooks_see_opens_and_closes_and_may_refuse() -> None:
    resumer = FakeResumer()
    ctx = FakeContext(Settings(), resumer=resumer)
    ctx.backend.hooks = True
    peer = Peer(ctx)
    session_id = peer.connect()["session"]
    peer.send({"msg": "sub", "id": "s", "name": "all"})
    peer.expect("ready")
    peer.lose()
    assert ctx.backend.connections == [("opened", session_id, False), ("closed", session_id, True)]
    ctx.backend.refuse = "Closed for maintenance"
    refused = Peer(ctx)
    refused.send({"msg": "connect", "version": "1", "support": ["1"]})
    error = refused.expect("error")
    assert error["reason"] == "Closed for maintenance"
    refused.greenlet.join(timeout=2)
    assert refused.session.close_reason == disconnect.REFUSED.reason
    assert "connected" not in _kinds(refused.messages())
    assert len(resumer.dropped_ids) == 1  # never resumable


def test_without_hooks_nothing_is_called(ctx: FakeContext) -> None:
    peer = Peer(ctx)
    peer.connect()
    peer.lose()
    assert ctx.backend.connections == []


def test_a_method_may_close_its_own_session_after_answering() -> None:
    resumer = FakeResumer()
    ctx = FakeContext(Settings(), resumer=resumer)
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "sub", "id": "s", "name": "all"})
    peer.expect("ready")
    msgs = _call(peer, "1", "bye")
    assert _kinds(msgs) == ["result", "updated"]
    peer.greenlet.join(timeout=2)
    assert peer.session.close_reason == disconnect.CLOSED_BY_SERVER.reason
    assert resumer.parked == []  # not resumable


def test_universal_subscriptions_do_not_count_against_the_subscription_limit() -> None:
    ctx = FakeContext(Settings(max_subs_per_session=1))
    ctx.backend.universal = ["mine"]
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "sub", "id": "s", "name": "all"})
    assert peer.expect("ready")["subs"] == ["s"]
    peer.send({"msg": "sub", "id": "t", "name": "all"})
    assert peer.expect("nosub")["error"]["error"] == "too-many-subscriptions"


def test_a_refusing_hook_sees_a_resume_before_anything_of_it_is_sent() -> None:
    ctx, resumer, session_id = _parked_logged_in()
    ctx.backend.hooks = True
    ctx.backend.refuse = "Banned meanwhile"
    login = {"msg": "method", "id": "9", "method": "login", "params": [{"resume": "t1"}]}
    again = Peer(ctx)
    count = resumer.resumed.state.sent_count  # type: ignore[union-attr]
    again.send(
        {
            "msg": "connect",
            "version": "1",
            "support": ["1"],
            "session": session_id,
            "receivedCount": count,
        },
        login,
    )
    assert again.expect("error")["reason"] == "Banned meanwhile"
    again.greenlet.join(timeout=2)
    assert [m["msg"] for m in again.messages()] == ["error"]  # no connected, no replay
    assert ("opened", session_id, True) in ctx.backend.connections


def test_live_updates_stop_while_a_revocation_waits_for_the_method(ctx: FakeContext) -> None:
    peer = Peer(ctx)
    peer.connect()
    _call(peer, "1", "login", {"user": "7"})
    peer.send({"msg": "sub", "id": "l", "name": "live"})
    peer.expect("ready")
    call = ctx.backend.call
    start = len(peer.messages())

    def revoked_then_a_change(call_ctx: object, name: str, params: object) -> object:
        ctx.streams.deliver(TOKENS, 4, "E", 100, [Change("d", "t1", {})])
        ctx.streams.deliver("ddp_things", 6, "E", 101, [Change("u", "a", {"n": 99})])
        return call(call_ctx, name, params)

    ctx.backend.call = revoked_then_a_change
    peer.send({"msg": "method", "id": "2", "method": "echo", "params": [1]})
    with gevent.Timeout(2):
        while not peer.session.closed:
            gevent.sleep(0.01)
    assert [m["msg"] for m in peer.messages()[start:]] == ["result", "updated"]  # no changed
