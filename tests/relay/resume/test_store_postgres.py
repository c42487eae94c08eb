"""What only the PostgreSQL park store does, beyond the contract (``test_store_contract.py``):
a connection the database dropped is replaced without the caller noticing, SQL errors are
reported as ``ParkStoreError`` too, and the window is measured by the database's clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import pytest

from relay.resume import store as store_module
from relay.resume.store import ParkStoreError, PostgresParkStore
from tests.relay.resume.helpers import make_state

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]


@pytest.fixture
def admin(django_database_url: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(django_database_url)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def session_id(admin: psycopg2.extensions.connection) -> Iterator[str]:
    sid = f"t{uuid.uuid4().hex[:12]}"
    yield sid
    with admin.cursor() as cur:
        cur.execute("DELETE FROM ddp_parked_session WHERE session_id = %s", (sid,))


def test_relay_server_node_still_finds_it_as_park_store() -> None:
    assert store_module.ParkStore is PostgresParkStore


def test_a_connection_the_database_dropped_is_replaced_unnoticed(
    django_database_url: str, admin: psycopg2.extensions.connection, session_id: str
) -> None:
    store = PostgresParkStore(django_database_url)
    state = make_state(session_id)
    store.save(state, 60.0)
    with admin.cursor() as cur:
        # What a database restart does to the store's open connection.
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'ddp-relay parking' AND datname = current_database()"
        )
        assert cur.fetchone() == (1,)
    assert store.load(session_id) == state
    store.close()


def test_an_sql_error_is_a_park_store_error_with_its_cause(django_database_url: str) -> None:
    # The server's maintenance database has no ddp_parked_session table (never migrated).
    parts = urlsplit(django_database_url)
    store = PostgresParkStore(urlunsplit(parts._replace(path="/postgres")))
    with pytest.raises(ParkStoreError) as caught:
        store.load("anything")
    assert isinstance(caught.value.__cause__, psycopg2.errors.UndefinedTable)
    store.close()


def test_the_window_is_measured_by_the_database_clock(
    django_database_url: str, admin: psycopg2.extensions.connection, session_id: str
) -> None:
    store = PostgresParkStore(django_database_url)
    store.save(make_state(session_id), 90.5)
    with admin.cursor() as cur:
        cur.execute(
            "SELECT expires_at - parked_at, now() - parked_at < interval '10 seconds'"
            " FROM ddp_parked_session WHERE session_id = %s",
            (session_id,),
        )
        window, recent = cur.fetchone() or (None, None)
    assert window is not None and window.total_seconds() == 90.5
    assert recent is True
    store.close()
