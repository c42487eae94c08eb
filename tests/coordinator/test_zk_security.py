"""ZooKeeper digest auth and TLS for the coordinator, against real ZooKeeper servers.

The module starts its own servers (``make_zk_server``): a plain one for the digest ACLs
(restarted to force a reconnect), a TLS one whose certificate names 127.0.0.1 (client
certificate optional) and a strict TLS one whose certificate names another host and that
requires a client certificate. A throwaway CA, server and client certificates are made
with the ``openssl`` command. Nothing here is mocked: ACLs are read back from the server
and a client without the credential is really refused (``NoAuthError``).

Also here, because they are the start-up half of the same feature: ``relay.config``
refusing bad RELAY_ZOOKEEPER_* settings, and ``build_coordinator`` wiring them into a
gevent relay process.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import ACL, OPEN_ACL_UNSAFE, make_digest_acl

from coordinator.base import Member, State
from coordinator.errors import CoordinatorError, FencedError, NotConnectedError
from coordinator.zk import ZooKeeperCoordinator
from coordinator.zksecurity import RedactAuth, ZooKeeperSecurity, is_open, split_digest
from devstack.local_zookeeper import ServerTLS
from devstack.processes import free_port
from relay.config import ConfigError, Settings
from tests.coordinator.util import StateEvents, wait_until
from tests.fixtures.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.timeout(90)

ROOT_DIR = Path(__file__).resolve().parents[2]
DIGEST = "relay:s3cret-pa55:with-colon"
PASSWORD = "s3cret-pa55:with-colon"
OUR_ACL = [make_digest_acl("relay", PASSWORD, all=True)]

MakeServer = Callable[..., ZooKeeperServer]
# kazoo 2.11 does not close the TLS socket of a handshake that failed; CPython closes it
# when the object goes (at once, by reference counting) with a ResourceWarning, which
# this suite makes an error. For the tests whose handshakes are meant to fail.
FAILED_HANDSHAKES = pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")


# --- a throwaway PKI -----------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca: Path  # the CA every server and client certificate below is signed by
    other_ca: Path  # a CA that signed nothing here
    server: Path  # key + certificate for IP:127.0.0.1, DNS:localhost
    elsewhere: Path  # key + certificate for DNS:zk.elsewhere.invalid only
    client_cert: Path
    client_key: Path


def _openssl(cwd: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the `openssl` command is needed to make test certificates"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl(
        *(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem"),
    )


def _make_leaf(d: Path, name: str, san: str) -> tuple[Path, Path]:
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n" if san else "")
    _openssl(
        *(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
    )
    _openssl(
        *(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", "-out", f"{name}.crt"),
        *(("-extfile", f"{name}.ext") if san else ()),
    )
    return d / f"{name}.crt", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "other-ca")

    def bundle(name: str, san: str) -> Path:
        cert, key = _make_leaf(d, name, san)
        pem = d / f"{name}.pem"  # ZooKeeper's PEM key store: the key, then the certificate
        pem.write_text(key.read_text() + cert.read_text())
        return pem

    client_cert, client_key = _make_leaf(d, "relay-client", "")
    return PKI(
        ca=d / "ca.pem",
        other_ca=d / "other-ca.pem",
        server=bundle("server", "IP:127.0.0.1,DNS:localhost"),
        elsewhere=bundle("elsewhere", "DNS:zk.elsewhere.invalid"),
        client_cert=client_cert,
        client_key=client_key,
    )


@pytest.fixture(scope="module")
def acl_server(make_zk_server: MakeServer) -> ZooKeeperServer:
    return make_zk_server()


@pytest.fixture(scope="module")
def tls_server(make_zk_server: MakeServer, pki: PKI) -> ZooKeeperServer:
    return make_zk_server(tls=ServerTLS(free_port(), pki.server, pki.ca, "want"))


@pytest.fixture(scope="module")
def strict_server(make_zk_server: MakeServer, pki: PKI) -> ZooKeeperServer:
    return make_zk_server(tls=ServerTLS(free_port(), pki.elsewhere, pki.ca, "need"))


# --- helpers ---------------------------------------------------------------------------


def _top() -> str:
    """A fresh top-level znode: every node from here down is created by the coordinator."""
    return f"/sec-{uuid.uuid4().hex}"


@pytest.fixture
def make_coordinator() -> Iterator[Callable[..., ZooKeeperCoordinator]]:
    """``make_coordinator(hosts, root, security=..., start=True)``; stopped afterwards."""
    made: list[ZooKeeperCoordinator] = []

    def make(
        hosts: str,
        root: str,
        security: ZooKeeperSecurity | None = None,
        start: bool = True,
        session_timeout: float = 10.0,
    ) -> ZooKeeperCoordinator:
        c = ZooKeeperCoordinator(
            hosts,
            root=root,
            handler="threading",
            session_timeout=session_timeout,
            security=security,
        )
        made.append(c)
        if start:
            assert c.start(timeout=10.0), "coordinator did not connect"
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def make_raw() -> Iterator[Callable[..., KazooClient]]:
    """Plain kazoo clients, to look at znodes as someone else would."""
    made: list[KazooClient] = []

    def make(hosts: str, digest: str = "", **kwargs: object) -> KazooClient:
        auth = [("digest", digest)] if digest else None
        client = KazooClient(hosts=hosts, auth_data=auth, **kwargs)
        made.append(client)
        client.start(timeout=10)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.stop()
            client.close()


def _walk(client: KazooClient, path: str) -> Iterator[str]:
    yield path
    for child in client.get_children(path):
        yield from _walk(client, f"{path}/{child}")


def _outsider_attempts(o: KazooClient, root: str) -> list[Callable[[], object]]:
    """Everything someone without the credential might try on a relay's znodes."""
    session = f"{root}/sessions/S1"
    return [
        lambda: o.get(session),
        lambda: o.set(session, b'{"v":1}'),
        lambda: o.delete(session),
        lambda: o.get_children(f"{root}/sessions"),
        lambda: o.create(f"{root}/sessions/S2", b"x"),
        lambda: o.get(f"{root}/members/relay-a"),
        lambda: o.set_acls(session, OPEN_ACL_UNSAFE),
        lambda: o.delete(f"{root}/election"),
    ]


def _acl(client: KazooClient, path: str) -> list[ACL]:
    return list(client.get_acls(path)[0])


# --- the pure parts --------------------------------------------------------------------


_DIGEST_ERRORS = {
    "the digest credential must look like 'user:password'",
    "the digest credential contains a control character (a trailing newline from a secret file?)",
}
_SETTINGS_DIGEST_ERRORS = {
    "RELAY_ZOOKEEPER_DIGEST must look like 'user:password'",
    "RELAY_ZOOKEEPER_DIGEST contains a control character (a trailing newline from a secret file?)",
}


def _model_accepts(digest: str) -> bool:
    """Brute force: some ":" with a non-empty name before the first one and a non-empty
    password after it, and no control character anywhere."""
    if any(ord(c) < 32 or ord(c) == 127 for c in digest):
        return False
    i = digest.find(":")
    return 0 < i < len(digest) - 1


@given(st.text(alphabet=st.sampled_from("ab:\n\x7f é"), max_size=8) | st.text(max_size=40))
def test_digest_parsing_matches_a_brute_force_model(digest: str) -> None:
    accepted = _model_accepts(digest)
    try:
        user, password = split_digest(digest)
    except ValueError as exc:
        assert not accepted
        assert str(exc) in _DIGEST_ERRORS  # fixed texts: the value is never echoed
    else:
        assert accepted
        assert f"{user}:{password}" == digest and ":" not in user
    env = {"RELAY_ZOOKEEPER": "127.0.0.1:2181", "RELAY_ZOOKEEPER_DIGEST": digest}
    if not digest:
        assert Settings.from_env(env).zookeeper_digest == ""
    elif accepted:
        assert Settings.from_env(env).zookeeper_digest == digest
    else:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert str(caught.value) in _SETTINGS_DIGEST_ERRORS


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"), min_size=1)


@given(_PRINTABLE.filter(lambda u: ":" not in u), _PRINTABLE)
def test_the_credential_is_blanked_in_kazoo_debug_lines(user: str, password: str) -> None:
    digest = f"{user}:{password}"
    assert _model_accepts(digest)
    from kazoo.protocol.serialization import Auth

    record = logging.LogRecord(
        "kazoo.client.coordinator", logging.DEBUG, __file__, 1, "Sending request(xid=%s): %s",
        (-4, Auth(0, "digest", digest)), None,
    )  # fmt: skip
    assert RedactAuth().filter(record)
    assert repr(digest) not in record.getMessage()
    assert "auth='<redacted>'" in record.getMessage()


def test_the_password_is_in_no_repr() -> None:
    settings = Settings(zookeeper="127.0.0.1:2181", zookeeper_digest=DIGEST)
    security = ZooKeeperSecurity(digest=DIGEST)
    for text in (repr(settings), str(settings), repr(security), str(security)):
        assert PASSWORD not in text and "s3cret" not in text
    assert "digest_user='relay'" in repr(security)
    assert security.auth_data() == [("digest", DIGEST)]
    assert security.acl() == OUR_ACL and not is_open(OUR_ACL)
    assert ZooKeeperSecurity().acl() is None and ZooKeeperSecurity().auth_data() == []


def test_security_options_that_cannot_work_are_value_errors(pki: PKI) -> None:
    for bad in (
        dict(digest="no-colon"),
        dict(digest=":password"),
        dict(digest="user:"),
        dict(tls=True, tls_cert=str(pki.client_cert)),
        dict(tls=True, tls_key=str(pki.client_key)),
        dict(tls_ca=str(pki.ca)),
        dict(tls_verify=False),
    ):
        with pytest.raises(ValueError):
            ZooKeeperSecurity(**bad)
    assert ZooKeeperSecurity(tls=True).tls_kwargs() == {
        "use_ssl": True,
        "ca": None,
        "certfile": None,
        "keyfile": None,
        "verify_certs": True,
        "check_hostname": True,
    }
    assert ZooKeeperSecurity().tls_kwargs() == {}


def _settings_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return str(caught.value)


def test_bad_zookeeper_settings_are_refused_at_start(pki: PKI, tmp_path: Path) -> None:
    zk = {"RELAY_ZOOKEEPER": "127.0.0.1:2181"}
    tls = {**zk, "RELAY_ZOOKEEPER_TLS": "true"}
    missing = str(tmp_path / "nope.pem")
    cases = [
        ({**zk, "RELAY_ZOOKEEPER_DIGEST": "relay-s3cret"}, "must look like 'user:password'"),
        ({**zk, "RELAY_ZOOKEEPER_DIGEST": "relay:s3cret\n"}, "control character"),
        ({**tls, "RELAY_ZOOKEEPER_TLS_CA": missing}, "RELAY_ZOOKEEPER_TLS_CA: no such file"),
        ({**tls, "RELAY_ZOOKEEPER_TLS_CA": str(tmp_path)}, "RELAY_ZOOKEEPER_TLS_CA: no such"),
        (
            {**tls, "RELAY_ZOOKEEPER_TLS_CERT": str(pki.client_cert)},
            "RELAY_ZOOKEEPER_TLS_CERT and RELAY_ZOOKEEPER_TLS_KEY must be set together",
        ),
        (
            {**tls, "RELAY_ZOOKEEPER_TLS_KEY": str(pki.client_key)},
            "must be set together",
        ),
        (
            {
                **tls,
                "RELAY_ZOOKEEPER_TLS_CERT": missing,
                "RELAY_ZOOKEEPER_TLS_KEY": str(pki.client_key),
            },
            "RELAY_ZOOKEEPER_TLS_CERT: no such file",
        ),
        ({**zk, "RELAY_ZOOKEEPER_TLS_CA": str(pki.ca)}, "set but RELAY_ZOOKEEPER_TLS is off"),
        ({**zk, "RELAY_ZOOKEEPER_TLS_VERIFY": "false"}, "set but RELAY_ZOOKEEPER_TLS is off"),
        ({"RELAY_ZOOKEEPER_DIGEST": DIGEST}, "RELAY_ZOOKEEPER_DIGEST set but RELAY_ZOOKEEPER"),
        ({"RELAY_ZOOKEEPER_TLS": "1"}, "RELAY_ZOOKEEPER_TLS set but RELAY_ZOOKEEPER is empty"),
        ({"RELAY_ZOOKEEPER_TLS_CA": str(pki.ca)}, "RELAY_ZOOKEEPER is empty"),
        ({"RELAY_ZOOKEEPER_TLS_VERIFY": "no"}, "RELAY_ZOOKEEPER is empty"),
        ({**zk, "RELAY_ZOOKEEPER_TLS": "maybe"}, "RELAY_ZOOKEEPER_TLS: not a boolean"),
    ]
    for env, message in cases:
        text = _settings_error(env)
        assert message in text, (env, text)
        assert "s3cret" not in text
    good = Settings.from_env(
        {
            **tls,
            "RELAY_ZOOKEEPER_DIGEST": DIGEST,
            "RELAY_ZOOKEEPER_TLS_CA": str(pki.ca),
            "RELAY_ZOOKEEPER_TLS_CERT": str(pki.client_cert),
            "RELAY_ZOOKEEPER_TLS_KEY": str(pki.client_key),
            "RELAY_ZOOKEEPER_TLS_VERIFY": "false",
        }
    )
    assert (good.zookeeper_tls, good.zookeeper_tls_verify) == (True, False)
    assert good.zookeeper_digest == DIGEST and PASSWORD not in repr(good)
    assert Settings.from_env({}).zookeeper_tls_verify is True


# --- digest ACLs on a real server ------------------------------------------------------


def test_every_znode_created_carries_only_the_digest_acl(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
) -> None:
    top = _top()
    c = make_coordinator(acl_server.hosts, f"{top}/deep/v1", ZooKeeperSecurity(digest=DIGEST))
    c.register_member(Member("relay-a", "10.0.0.1:8000", 1.0))
    c.create_session("S1", "relay-a")
    c.run_for_leader()
    wait_until(c.is_leader, "leadership")
    raw = make_raw(acl_server.hosts, DIGEST)
    nodes = list(_walk(raw, top))
    # top, deep, v1, members, sessions, election, the member, the session, the candidate
    assert len(nodes) == 9, nodes
    for path in nodes:
        assert _acl(raw, path) == OUR_ACL, path


def test_a_client_without_the_credential_is_refused(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
) -> None:
    root = f"{_top()}/v1"
    c = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST))
    c.register_member(Member("relay-a", "10.0.0.1:8000", 1.0))
    c.create_session("S1", "relay-a")
    c.park_session("S1", "relay-a", 1, 7, b"facts", 1e12)
    for outsider in (
        make_raw(acl_server.hosts),
        make_raw(acl_server.hosts, "relay:wrong-password"),
        make_raw(acl_server.hosts, "intruder:s3cret-pa55:with-colon"),
    ):
        for attempt in _outsider_attempts(outsider, root):
            with pytest.raises(NoAuthError):
                attempt()
    record = c.get_session("S1")  # untouched, and still ours
    assert record is not None and (record.cursor, record.facts) == (7, b"facts")


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_the_coordinator_contract_holds_on_a_secured_server(
    transport: str,
    request: pytest.FixtureRequest,
    pki: PKI,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
) -> None:
    """A representative run of test_contract.py's behaviour with the credential (and TLS)."""
    if transport == "plain":
        server: ZooKeeperServer = request.getfixturevalue("acl_server")
        hosts, security = server.hosts, ZooKeeperSecurity(digest=DIGEST)
    else:
        server = request.getfixturevalue("tls_server")
        hosts = f"127.0.0.1:{server.secure_port}"
        security = ZooKeeperSecurity(digest=DIGEST, tls=True, tls_ca=str(pki.ca))
    root = f"{_top()}/v1"
    a, b = (make_coordinator(hosts, root, security) for _ in range(2))
    a.register_member(Member("relay-a", "a:1", 1.0))
    b.register_member(Member("relay-b", "b:1", 2.0))
    assert [m.relay_id for m in a.members()] == ["relay-a", "relay-b"]

    a.create_session("S1", "relay-a")
    a.park_session("S1", "relay-a", 1, cursor=42, facts=b"\x01ptr", expires_at=1e12)
    claimed = b.claim_session("S1", "relay-b", expected_epoch=1, require_parked=True)
    assert (claimed.owner, claimed.epoch, claimed.cursor) == ("relay-b", 2, 42)
    with pytest.raises(FencedError):
        a.park_session("S1", "relay-a", 1, 43, b"", 1e12)  # the old owner is fenced
    with pytest.raises(FencedError):
        a.claim_session("S1", "relay-a", expected_epoch=1)

    b.create_session("S2", "relay-b")
    b.park_session("S2", "relay-b", 1, 0, b"", expires_at=10.0)
    assert a.expired_sessions(now=20.0) == ["S2"]
    assert a.reap_session("S2", now=20.0) and b.get_session("S2") is None
    b.drop_session("S1", "relay-b", 2)
    assert a.get_session("S1") is None

    for c in (a, b):
        c.run_for_leader()
    wait_until(lambda: a.is_leader() != b.is_leader(), "exactly one leader")
    leader, follower = (a, b) if a.is_leader() else (b, a)
    leader.stop()
    wait_until(follower.is_leader, "the other relay takes over")


def test_auth_is_sent_again_after_a_reconnect(
    make_zk_server: MakeServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
) -> None:
    # A server of its own whose sessions may last 40 s (20 ticks of 2 s): restarting the
    # JVM on a loaded machine took over 10 s once, and the session must outlive it.
    server = make_zk_server(tick_ms=2000)
    root = f"{_top()}/v1"
    c = make_coordinator(server.hosts, root, ZooKeeperSecurity(digest=DIGEST), session_timeout=40.0)
    states = StateEvents()
    c.add_listener(states)
    c.create_session("S1", "relay-a")
    session_before = c._session_id()

    server.stop()  # the TCP connection drops; the ZooKeeper session survives
    assert states.wait_for(State.SUSPENDED)
    server.start()
    assert states.wait_for(State.CONNECTED, timeout=40), "did not reconnect"
    assert c._session_id() == session_before  # same session, new connection
    # Only an authenticated connection may write these nodes: the auth was sent again.
    parked = c.park_session("S1", "relay-a", 1, 3, b"after", 1e12)
    assert parked.cursor == 3
    c.create_session("S2", "relay-a")
    raw = make_raw(server.hosts, DIGEST)
    assert _acl(raw, f"{root}/sessions/S2") == OUR_ACL


def test_auth_is_sent_again_on_a_new_session_after_expiry(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
) -> None:
    root = f"{_top()}/v1"
    c = make_coordinator(
        acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST), session_timeout=2.0
    )
    states = StateEvents()
    c.add_listener(states)
    c.register_member(Member("relay-a", "a:1", 1.0))
    session_before = c._session_id()
    # Expire the session server-side: another connection with its id and password,
    # closed, is how ZooKeeper's own tests do it.
    client_id = c._client.client_id
    assert client_id is not None
    thief = make_raw(acl_server.hosts, client_id=client_id)
    thief.stop()
    assert states.wait_for(State.LOST, timeout=20), "session did not expire"
    assert states.wait_for(State.CONNECTED, timeout=20), "no new session"
    assert c._session_id() != session_before
    raw = make_raw(acl_server.hosts, DIGEST)
    wait_until(lambda: raw.exists(f"{root}/members/relay-a") is not None, "member re-created")
    assert _acl(raw, f"{root}/members/relay-a") == OUR_ACL
    c.create_session("S3", "relay-a")


def test_nodes_left_open_by_an_unsecured_relay_are_taken_over(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    top = _top()
    root = f"{top}/v1"
    old = make_coordinator(acl_server.hosts, root)  # before auth was enabled
    old.create_session("S1", "relay-old")
    old.park_session("S1", "relay-old", 1, 9, b"parked before", 1e12)
    old.create_session("S2", "relay-old")
    anyone = make_raw(acl_server.hosts)
    assert is_open(_acl(anyone, f"{root}/sessions/S1"))
    old.stop()

    caplog.set_level(logging.WARNING, logger="coordinator.zk")
    new = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST))
    raw = make_raw(acl_server.hosts, DIGEST)
    # The minute S1 is indexed under names it: an open minute lists parked session ids.
    minute = f"expiry/{int(1e12 // 60):012d}"
    assert anyone.get_children(f"{root}/{minute}") == ["S1.1"]
    secured = [root, *(f"{root}/{n}" for n in ("sessions", "sessions/S1", "sessions/S2"))]
    secured += [f"{root}/expiry", f"{root}/{minute}"]
    wait_until(lambda: all(_acl(raw, p) == OUR_ACL for p in secured), "ACLs taken over")
    # The coordinator logs the takeover once it is done: a moment after the ACLs are set.
    wait_until(lambda: "open znode(s)" in caplog.text, "the takeover logged")
    assert is_open(_acl(raw, top))  # above the root: not the coordinator's to change
    with pytest.raises(NoAuthError):
        anyone.get(f"{root}/sessions/S1")
    with pytest.raises(NoAuthError):
        anyone.get_children(f"{root}/{minute}")
    claimed = new.claim_session("S1", "relay-new", 1, require_parked=True)
    assert (claimed.cursor, claimed.facts) == (9, b"parked before")

    # A second relay finds nothing to take over: the containers are already ours.
    caplog.clear()
    make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST))
    new.create_session("S4", "relay-new")
    assert "open znode(s)" not in caplog.text


def test_a_tree_of_another_credential_is_an_error_not_a_crash(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = f"{_top()}/v1"
    first = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST))
    first.create_session("S1", "relay-a")
    caplog.set_level(logging.ERROR, logger="coordinator.zk")
    other = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest="relay:rotated"))
    assert other.state is State.CONNECTED
    wait_until(lambda: "is not ours" in caplog.text, "the error about the foreign ACL")
    calls: list[Callable[[], object]] = [
        lambda: other.get_session("S1"),
        lambda: other.create_session("S2", "b"),
    ]
    for call in calls:
        with pytest.raises(CoordinatorError) as caught:
            call()
        assert not isinstance(caught.value, NotConnectedError)
        assert "NoAuth" in str(caught.value)
    assert first.get_session("S1") is not None


def test_a_rotation_as_docs_security_md_describes_it(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = f"{_top()}/v1"
    new_digest = "relay:n3w-password"
    new_acl = make_digest_acl("relay", "n3w-password", all=True)
    old = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST))
    old.create_session("S1", "relay-old")
    old.park_session("S1", "relay-old", 1, 4, b"", 1e12)
    old.stop()
    as_old = make_raw(acl_server.hosts, DIGEST)
    for path in _walk(as_old, root):  # step 2: zkCli's setAcl -R with both identities
        as_old.set_acls(path, [*OUR_ACL, new_acl])

    caplog.set_level(logging.INFO, logger="coordinator.zk")
    new = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=new_digest))
    new.run_for_leader()  # queued behind the CONNECTED handling, which checks the ACLs
    wait_until(new.is_leader, "leadership")
    assert "is not ours" not in caplog.text and "open znode" not in caplog.text
    assert new.claim_session("S1", "relay-new", 1, require_parked=True).epoch == 2

    as_new = make_raw(acl_server.hosts, new_digest)
    for path in _walk(as_new, root):  # step 4: the old identity goes
        as_new.set_acls(path, [new_acl])
    with pytest.raises(NoAuthError):
        as_old.get(f"{root}/sessions/S1")
    assert new.get_session("S1") is not None


def test_the_password_reaches_no_log_line(
    acl_server: ZooKeeperServer,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(1)  # everything, kazoo's BLATHER and DEBUG included
    root = f"{_top()}/v1"
    c = make_coordinator(acl_server.hosts, root, ZooKeeperSecurity(digest=DIGEST))
    c.create_session("S1", "relay-a")
    c.stop()
    assert "Auth(" in caplog.text, "kazoo's request log line was not captured"
    assert "s3cret" not in caplog.text and PASSWORD not in caplog.text


# --- TLS -------------------------------------------------------------------------------


@FAILED_HANDSHAKES
def test_tls_with_the_ca_connects_and_the_port_speaks_only_tls(
    tls_server: ZooKeeperServer,
    pki: PKI,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    make_raw: Callable[..., KazooClient],
) -> None:
    secure = f"127.0.0.1:{tls_server.secure_port}"
    for security in (
        ZooKeeperSecurity(tls=True, tls_ca=str(pki.ca)),
        ZooKeeperSecurity(
            tls=True,
            tls_ca=str(pki.ca),
            tls_cert=str(pki.client_cert),
            tls_key=str(pki.client_key),
        ),
    ):
        c = make_coordinator(secure, f"{_top()}/v1", security)
        c.create_session("S1", "relay-a")
        assert c.get_session("S1") is not None
    plain = KazooClient(hosts=secure)  # no TLS: the server never completes the handshake
    try:
        with pytest.raises(Exception, match="time"):
            plain.start(timeout=2)
    finally:
        plain.stop()
        plain.close()


@FAILED_HANDSHAKES
def test_a_certificate_from_another_ca_is_a_disconnected_coordinator(
    tls_server: ZooKeeperServer,
    pki: PKI,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    secure = f"127.0.0.1:{tls_server.secure_port}"
    c = make_coordinator(
        secure, f"{_top()}/v1", ZooKeeperSecurity(tls=True, tls_ca=str(pki.other_ca)), start=False
    )
    assert c.start(timeout=3.0) is False
    assert c.state is State.LOST
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, "the handshake's error")
    with pytest.raises(NotConnectedError):
        c.create_session("S1", "relay-a")
    c.stop()  # and it stops cleanly


@FAILED_HANDSHAKES
def test_the_host_name_is_verified_unless_verify_is_off(
    strict_server: ZooKeeperServer,
    pki: PKI,
    make_coordinator: Callable[..., ZooKeeperCoordinator],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    secure = f"127.0.0.1:{strict_server.secure_port}"  # its certificate names another host
    cert, key = str(pki.client_cert), str(pki.client_key)

    verified = ZooKeeperSecurity(tls=True, tls_ca=str(pki.ca), tls_cert=cert, tls_key=key)
    c = make_coordinator(secure, f"{_top()}/v1", verified, start=False)
    assert c.start(timeout=3.0) is False
    wait_until(
        lambda: "mismatch" in caplog.text or "doesn't match" in caplog.text,
        "the host name error",
    )
    c.stop()

    unverified = ZooKeeperSecurity(tls=True, tls_verify=False, tls_cert=cert, tls_key=key)
    c = make_coordinator(secure, f"{_top()}/v1", unverified)
    c.create_session("S1", "relay-a")

    # The server requires a client certificate: without one, no connection either.
    anonymous = ZooKeeperSecurity(tls=True, tls_verify=False)
    c = make_coordinator(secure, f"{_top()}/v1", anonymous, start=False)
    assert c.start(timeout=3.0) is False
    c.stop()


def test_a_gevent_relay_builds_its_coordinator_from_the_settings(
    tls_server: ZooKeeperServer, pki: PKI, make_raw: Callable[..., KazooClient]
) -> None:
    """``build_coordinator`` passes every RELAY_ZOOKEEPER_* setting on, under gevent."""
    root = "/ddp-relay/v1"  # build_coordinator's root, on this module's own server
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        from relay.config import Settings
        from relay.resume.resumer import build_coordinator

        c = build_coordinator(Settings.from_env())
        assert c.start(10), "not connected"
        c.create_session("GEVENT1", "relay-g")
        c.stop()
        print("GEVENT-TLS-OK")
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT_DIR),
        "RELAY_ZOOKEEPER": f"127.0.0.1:{tls_server.secure_port}",
        "RELAY_ZOOKEEPER_DIGEST": DIGEST,
        "RELAY_ZOOKEEPER_TLS": "true",
        "RELAY_ZOOKEEPER_TLS_CA": str(pki.ca),
        "RELAY_ZOOKEEPER_TLS_CERT": str(pki.client_cert),
        "RELAY_ZOOKEEPER_TLS_KEY": str(pki.client_key),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT_DIR,
        env=env,
    )
    assert proc.returncode == 0 and "GEVENT-TLS-OK" in proc.stdout, proc.stdout + proc.stderr
    raw = make_raw(tls_server.hosts, DIGEST)  # the plain port of the same server
    assert _acl(raw, f"{root}/sessions/GEVENT1") == OUR_ACL
    with pytest.raises(NoAuthError):
        make_raw(tls_server.hosts).get(f"{root}/sessions/GEVENT1")
