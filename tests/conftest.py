"""Test-suite wiring: the session PostgreSQL server and how Django tests use it.

How a Django test reaches PostgreSQL (pytest-django, ``DJANGO_SETTINGS_MODULE =
"example.settings"`` in pyproject):

1. pytest-django imports the settings very early (``pytest_load_initial_conftests``),
   before any fixture can run, so ``settings.DATABASES`` first holds whatever
   ``DATABASE_URL`` said then (or the settings' default). Nothing connects yet.
2. The first test that needs the database requests pytest-django's ``django_db_setup``,
   which depends on ``django_db_modify_db_settings``. Our override below depends on
   ``pg_server`` (``tests/fixtures/postgres.py``): it starts the one EmbeddedPostgres of the
   session, then points every PostgreSQL alias of ``settings.DATABASES`` at it (HOST
   127.0.0.1, its PORT, USER ``relay``, no password), in place, before any connection is
   opened. The database NAME stays the settings' own; Django creates ``test_<NAME>``.
3. ``django_db_setup`` then creates the test database and runs migrations, as usual.

Tests that never touch the database never start the server. ``django_database_url`` gives
subprocesses (gunicorn relays, manage.py) a DSN for the test database Django created.

The fixture plugins: ``tests/fixtures/postgres.py`` (``pg_server``),
``tests/fixtures/zookeeper.py`` (``zk_server``, ``zk_outage``) and
``tests/fixtures/relays.py`` (``relay_stack``, ``module_relay_stack``, ``relay_server``,
``e2e_database``, ``cluster``: real relays on a migrated, seeded database). Test modules
take these fixtures; they never import another test module.
"""

from __future__ import annotations

import pytest

from devstack.embedded_postgres import SUPERUSER, EmbeddedPostgres

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.zookeeper",
    "tests.fixtures.relays",
]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None,
    pg_server: EmbeddedPostgres,
) -> None:
    """Point Django's PostgreSQL databases at the session's throwaway server."""
    from django.conf import settings
    from django.db import connections

    default_engine = settings.DATABASES.get("default", {}).get("ENGINE", "")
    if "postgresql" not in default_engine and "postgis" not in default_engine:
        pytest.fail(
            f"settings.DATABASES['default'] uses {default_engine!r}; the test suite needs "
            "PostgreSQL (ENGINE django.db.backends.postgresql)",
            pytrace=False,
        )
    for db in settings.DATABASES.values():
        engine = db.get("ENGINE", "")
        if "postgresql" in engine or "postgis" in engine:
            db.update(HOST="127.0.0.1", PORT=str(pg_server.port), USER=SUPERUSER, PASSWORD="")
    # A connection opened before this point (import-time code) would use the old address.
    connections.close_all()


@pytest.fixture(scope="session")
def django_database_url(django_db_setup: None, pg_server: EmbeddedPostgres) -> str:
    """``postgresql://relay@127.0.0.1:PORT/test_<name>``: the test database Django made."""
    from django.db import connections

    return pg_server.dsn(str(connections["default"].settings_dict["NAME"]))
