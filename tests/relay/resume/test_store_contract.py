"""One contract suite for every ``ParkedStore``: PostgreSQL and the in-memory twin.

The ``backend`` fixture is parametrized over both. PostgreSQL is the session's throwaway
test server (the ``ddp_parked_session`` table comes from ``django_app``'s migrations),
reached through a ``TcpProxy`` so that a test can take the database away and bring it
back; the twin simulates the same with ``simulate_unavailable``. What only PostgreSQL does
(a stale connection reopened, SQL errors, the database's clock) is in
``test_store_postgres.py``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import psycopg2
import pytest

from relay.resume import parked
from relay.resume.memory import MemoryParkStore
from relay.resume.parked import ParkedSession
from relay.resume.store import ParkedStore, ParkStoreError, PostgresParkStore
from tests.relay.resume.helpers import TcpProxy, closed_port, make_state, with_port

pytestmark = pytest.mark.timeout(60)

#: Long enough not to pass during a test, short enough to be obviously a test's.
WINDOW = 600.0
#: A window that passes within the test (and the wait that outlasts it).
SHORT_WINDOW = 0.3
PAST_IT = 0.6


@dataclass
class Backend:
    """A store under test and the hooks the contract needs around it."""

    name: str
    store: ParkedStore
    #: Ids with a stored row, expired or not (what the storage holds).
    stored_ids: Callable[[], set[str]]
    #: Store raw text (uncompressed) as a session's state, resumable for WINDOW (a row
    #: written by a relay of another version, or damaged).
    write_text: Callable[[str, str], None]
    #: While entered, the storage cannot be reached; afterwards it is back, data intact.
    outage: Callable[[], AbstractContextManager[None]]
    #: A store of this kind whose storage cannot be reached at all.
    unreachable: Callable[[], ParkedStore]


@pytest.fixture
def prefix() -> str:
    """Session ids of this test only (the PostgreSQL table is shared by the session)."""
    return f"t{uuid.uuid4().hex[:12]}"


# ``django_db`` on the PostgreSQL case: pytest-django creates (and migrates) the test
# database only when a collected test asks for it; the store uses its own connection.
@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.django_db)])
def backend(request: pytest.FixtureRequest, prefix: str) -> Iterator[Backend]:
    if request.param == "memory":
        store = MemoryParkStore()

        def write_memory(session_id: str, text: str) -> None:
            # The twin has no raw write; this is the one place a test reaches inside it.
            store._rows[session_id] = (text.encode(), time.time() + WINDOW, "")

        @contextlib.contextmanager
        def memory_outage() -> Iterator[None]:
            store.simulate_unavailable()
            try:
                yield
            finally:
                store.simulate_unavailable(False)

        def memory_unreachable() -> ParkedStore:
            down = MemoryParkStore()
            down.simulate_unavailable()
            return down

        yield Backend(
            "memory", store, store.session_ids, write_memory, memory_outage, memory_unreachable
        )
        return

    url: str = request.getfixturevalue("django_database_url")
    proxy = TcpProxy(("127.0.0.1", urlsplit(url).port or 5432))
    pg_store = PostgresParkStore(with_port(url, proxy.port))
    admin = psycopg2.connect(url)
    admin.autocommit = True

    def stored_ids() -> set[str]:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT session_id FROM ddp_parked_session WHERE session_id LIKE %s",
                (prefix + "%",),
            )
            return {row[0] for row in cur.fetchall()}

    def write_pg(session_id: str, text: str) -> None:
        with admin.cursor() as cur:
            cur.execute(
                "INSERT INTO ddp_parked_session (session_id, state, expires_at)"
                " VALUES (%s, %s, now() + make_interval(secs => %s))",
                (session_id, psycopg2.Binary(text.encode()), WINDOW),
            )

    @contextlib.contextmanager
    def pg_outage() -> Iterator[None]:
        proxy.down()
        try:
            yield
        finally:
            proxy.up()

    def pg_unreachable() -> ParkedStore:
        return PostgresParkStore(with_port(url, closed_port()))

    try:
        yield Backend("postgres", pg_store, stored_ids, write_pg, pg_outage, pg_unreachable)
    finally:
        pg_store.close()
        proxy.stop()
        with admin.cursor() as cur:
            cur.execute("DELETE FROM ddp_parked_session WHERE session_id LIKE %s", (prefix + "%",))
        admin.close()


def test_a_saved_state_loads_back_equal_field_by_field(backend: Backend, prefix: str) -> None:
    state = make_state(f"{prefix}a")
    backend.store.save(state, WINDOW)
    back = backend.store.load(state.session_id)
    assert back == state
    assert back is not state
    assert backend.stored_ids() == {state.session_id}


def test_unknown_ids_load_as_none_and_delete_quietly(backend: Backend, prefix: str) -> None:
    assert backend.store.load(f"{prefix}nobody") is None
    backend.store.delete(f"{prefix}nobody")
    backend.store.delete_expired()
    assert backend.stored_ids() == set()


def test_saving_again_replaces_the_state(backend: Backend, prefix: str) -> None:
    first = make_state(f"{prefix}a", sent=10, title="first")
    second = make_state(f"{prefix}a", sent=25, log=6, title="second", user_id="u2")
    backend.store.save(first, WINDOW)
    backend.store.save(second, WINDOW)
    assert backend.store.load(first.session_id) == second
    assert backend.stored_ids() == {first.session_id}


def test_states_are_kept_per_session(backend: Backend, prefix: str) -> None:
    a, b = make_state(f"{prefix}a", title="A"), make_state(f"{prefix}b", title="B")
    backend.store.save(a, WINDOW)
    backend.store.save(b, WINDOW)
    backend.store.delete(a.session_id)
    assert backend.store.load(a.session_id) is None
    assert backend.store.load(b.session_id) == b
    backend.store.delete(a.session_id)  # twice: nothing to forget, no error
    assert backend.stored_ids() == {b.session_id}


def test_a_state_whose_window_passed_is_not_loaded_then_deleted(
    backend: Backend, prefix: str
) -> None:
    brief, kept = make_state(f"{prefix}brief"), make_state(f"{prefix}kept")
    backend.store.save(brief, SHORT_WINDOW)
    backend.store.save(kept, WINDOW)
    assert backend.store.load(brief.session_id) == brief  # inside its window
    time.sleep(PAST_IT)
    assert backend.store.load(brief.session_id) is None
    # Not loadable, but still held until housekeeping deletes it.
    assert backend.stored_ids() == {brief.session_id, kept.session_id}
    backend.store.delete_expired()
    assert backend.stored_ids() == {kept.session_id}
    assert backend.store.load(kept.session_id) == kept


def test_saving_again_renews_the_window(backend: Backend, prefix: str) -> None:
    state = make_state(f"{prefix}a")
    backend.store.save(state, SHORT_WINDOW)
    time.sleep(PAST_IT)
    backend.store.save(state, WINDOW)
    backend.store.delete_expired()
    assert backend.store.load(state.session_id) == state


@pytest.mark.parametrize(
    "text",
    ['{"v": 99, "session": "x"}', "not json", '{"v": 1}', "[]"],
    ids=["newer-format", "garbage", "incomplete", "not-an-object"],
)
def test_a_state_this_code_cannot_read_loads_as_none(
    backend: Backend, prefix: str, text: str
) -> None:
    backend.write_text(f"{prefix}odd", text)
    assert backend.store.load(f"{prefix}odd") is None
    backend.store.delete(f"{prefix}odd")
    assert backend.stored_ids() == set()


def test_a_state_that_cannot_be_encoded_is_a_bug_not_a_store_failure(
    backend: Backend, prefix: str
) -> None:
    state = replace(make_state(f"{prefix}a"), mergebox={"collections": {"c": object()}})
    with pytest.raises(TypeError):
        backend.store.save(state, WINDOW)
    assert backend.stored_ids() == set()


def test_unreachable_storage_raises_park_store_error_on_every_call(backend: Backend) -> None:
    store = backend.unreachable()
    state = make_state("whatever")
    calls: list[Callable[[], object]] = [
        lambda: store.save(state, WINDOW),
        lambda: store.load(state.session_id),
        lambda: store.delete(state.session_id),
        store.delete_expired,
    ]
    for call in calls:
        with pytest.raises(ParkStoreError):
            call()
    store.close()  # never raises
    store.close()


def test_an_outage_raises_then_the_store_carries_on(backend: Backend, prefix: str) -> None:
    before, during = make_state(f"{prefix}before"), make_state(f"{prefix}during")
    backend.store.save(before, WINDOW)
    calls: list[Callable[[], object]] = [
        lambda: backend.store.save(during, WINDOW),
        lambda: backend.store.load(before.session_id),
        lambda: backend.store.delete(before.session_id),
        backend.store.delete_expired,
    ]
    with backend.outage():
        for call in calls:
            with pytest.raises(ParkStoreError):
                call()
        backend.store.close()
    # Back: nothing was lost, and the next calls work without any help.
    assert backend.store.load(before.session_id) == before
    backend.store.save(during, WINDOW)
    assert backend.store.load(during.session_id) == during


def test_a_closed_store_can_be_used_again(backend: Backend, prefix: str) -> None:
    state = make_state(f"{prefix}a")
    backend.store.save(state, WINDOW)
    backend.store.close()
    backend.store.close()
    assert backend.store.load(state.session_id) == state


def test_loaded_states_are_independent_copies(backend: Backend, prefix: str) -> None:
    state = make_state(f"{prefix}a")
    backend.store.save(state, WINDOW)
    first = backend.store.load(state.session_id)
    assert isinstance(first, ParkedSession)
    first.log.append("changed")
    first.mergebox.clear()
    assert backend.store.load(state.session_id) == state


# -- the cap per owner (client address) ----------------------------------------------------


def _size(state: ParkedSession) -> int:
    return len(parked.pack(state))


def test_an_owner_may_park_only_up_to_its_limit(backend: Backend, prefix: str) -> None:
    a, b, c = (make_state(f"{prefix}{n}") for n in "abc")
    # Room for a and the larger of b and c (their packed sizes may differ by a byte or two:
    # each state carries the time it was made), so c fits once b is gone.
    limit = _size(a) + max(_size(b), _size(c))
    assert backend.store.save(a, WINDOW, owner=f"{prefix}-nat", owner_limit=limit)
    assert backend.store.save(b, WINDOW, owner=f"{prefix}-nat", owner_limit=limit)
    assert not backend.store.save(c, WINDOW, owner=f"{prefix}-nat", owner_limit=limit)
    assert backend.stored_ids() == {a.session_id, b.session_id}
    # Another address is not affected; re-parking a session replaces its own bytes.
    assert backend.store.save(c, WINDOW, owner=f"{prefix}-other", owner_limit=limit)
    assert backend.store.save(a, WINDOW, owner=f"{prefix}-nat", owner_limit=limit)
    backend.store.delete(b.session_id)
    assert backend.store.save(c, WINDOW, owner=f"{prefix}-nat", owner_limit=limit)


def test_expired_states_do_not_count_against_the_owner(backend: Backend, prefix: str) -> None:
    a, b = make_state(f"{prefix}a"), make_state(f"{prefix}b")
    limit = max(_size(a), _size(b))
    assert backend.store.save(a, SHORT_WINDOW, owner=f"{prefix}-x", owner_limit=limit)
    time.sleep(PAST_IT)
    assert backend.store.save(b, WINDOW, owner=f"{prefix}-x", owner_limit=limit)


def test_states_are_stored_compressed(backend: Backend, prefix: str) -> None:
    state = make_state(f"{prefix}a", sent=500, log=500)
    assert _size(state) * 2 < len(parked.dumps(state).encode())
    backend.store.save(state, WINDOW)
    assert backend.store.load(state.session_id) == state
