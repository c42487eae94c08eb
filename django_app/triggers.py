"""Database triggers that capture every change of the published tables.

Job: generate, from the registered collections, the PL/pgSQL that turns row changes into
change-stream changes (``relay.protocol.changestream``), and install it idempotently
(``sync_triggers``: ``manage.py ddp_sync_triggers``, and automatically after ``migrate``).
Triggers see every write (ORM saves and deletes, ``QuerySet.update``, ``bulk_create``,
raw SQL, other languages) inside the writing transaction, so a rollback (or a rolled-back
savepoint) publishes nothing. What must not live here: the commit-time flush and the
tables (``django_app/migrations/0001_initial.py``), or Python-side publishing
(``django_app.changes``).

Generated objects, all named ``ddp_g_...`` (so stale ones are found and dropped):

* per collection, a function and two triggers on its table: ``AFTER INSERT OR DELETE``
  and ``AFTER UPDATE ... WHEN`` a published column, a routed column or the key changed.
  Each appends ``{"o", "id", "f"}`` to ``ddp_pending``, ``f`` holding the published
  columns by attname and every path of ``Collection.related_paths`` (declared, published
  or used by a computed field), resolved by the SQL of ``serializer.path_json_sql``: a
  scalar subquery for a single-valued path (``author__email``: ``(SELECT email FROM
  bookstore_author WHERE id = NEW.author_id)``), the sorted JSON array of the distinct
  values for a multi-valued one (``tags__name``: LEFT JOINs through the many-to-many's
  table). A changed primary key is a delete of the old id plus an insert of the new one.
* per collection and path prefix (the joins of a path up to one table it reads), a
  dependency function with three triggers on that table: when a row of it is inserted
  or deleted (statement-level, over the transition table: a ``tags.set(...)`` is one
  statement, so one change per book) or a column the paths read changes (row-level,
  ``WHEN``: the name of a tag, the key joining it), every row of the collection that
  reaches an old or new version of the changed rows is published again as ONE ``"u"``
  change with fresh values: the books of that tag, the author of that book, the book of
  that through-table row. The work is a few indexed lookups per changed row (along the
  foreign keys of the path, back to the collection's table), bounded by the data, never
  by subscribers.

* on the user table (``AUTH_USER_MODEL``, swapped or not), the token revocation trigger:
  ``AFTER UPDATE ... WHEN`` the password column changed or ``is_active`` (when the model
  has a concrete one) went from true to false, it deletes every ``ddp_login_token`` row of
  that user but the one named by the transaction-local setting ``ddp.keep_token``, unless
  ``ddp.rehash`` is ``on`` (a hash upgrade; ``django_app.accounts.revocation``). The
  deletes are row changes of the token collection, so they travel the change stream and
  relays close the sessions that held those tokens.

The first pending row of a transaction and channel is ``armed``: it queues the deferred
``ddp_flush()`` that publishes them at commit. Each function carries a digest of its SQL
as its comment; ``sync_triggers`` leaves up-to-date objects alone (so ``migrate`` takes no
table locks when nothing changed) and replaces the others in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from django_app.collection import Collection
from django_app.cursor import Hop, LookupPath
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.serializer import db_json_sql, own_column, path_json_sql

__all__ = [
    "PENDING_TABLE",
    "PREFIX",
    "SyncPlan",
    "TriggerSet",
    "change_sql",
    "enqueue_sql",
    "revocation_set",
    "sync_triggers",
    "trigger_sets",
]

logger = logging.getLogger("django_app.triggers")

#: The staging table of changes not yet committed (migration 0001).
PENDING_TABLE: Final = "ddp_pending"
#: The name prefix of every generated function and trigger.
PREFIX: Final = "ddp_g_"
#: jsonb_build_object takes at most 100 arguments (FUNC_MAX_ARGS): 50 key/value pairs.
_PAIRS_PER_CALL: Final = 50
#: PostgreSQL types without an equality operator: compare their text form instead.
_NO_EQUALITY: Final = ("json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle")


@dataclass(frozen=True)
class TriggerSet:
    """One generated function and the triggers that call it."""

    function: str
    #: The table the triggers are on.
    table: str
    #: ``CREATE OR REPLACE FUNCTION ...``.
    function_sql: str
    #: ``(trigger name, CREATE TRIGGER ...)``.
    triggers: tuple[tuple[str, str], ...]
    #: What it does, for logs.
    description: str

    @property
    def digest(self) -> str:
        text = "\n".join([self.function_sql, *(sql for _, sql in self.triggers)])
        return "ddp:" + hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class SyncPlan:
    """What ``sync_triggers`` changed (or, with ``dry_run``, would change)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: Collections left without triggers, with the reason (table missing, other database).
    skipped: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.dropped)


# -- SQL generation -----------------------------------------------------------------------


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _name(kind: str, *parts: str) -> str:
    """A generated object name under PostgreSQL's 63-byte identifier limit."""
    wanted = f"{PREFIX}{kind}_" + "_".join(parts)
    safe = re.sub(r"[^a-z0-9_]", "_", wanted.lower())
    if safe == wanted and len(safe) <= 63:
        return safe
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:8]
    return f"{safe[:54]}_{digest}"


def _col(f: models.Field[Any, Any]) -> str:
    return str(f.column)


def _table(model: type[models.Model]) -> str:
    return model._meta.db_table


def _own_column(model: type[models.Model], f: models.Field[Any, Any], what: str) -> str:
    """The column of ``f`` in ``model``'s own table (inherited fields live elsewhere)."""
    return own_column(model, f, what)


def _json_object(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return "'{}'::jsonb"
    calls = []
    for start in range(0, len(pairs), _PAIRS_PER_CALL):
        chunk = pairs[start : start + _PAIRS_PER_CALL]
        calls.append(
            "jsonb_build_object(" + ", ".join(f"{_literal(k)}, {v}" for k, v in chunk) + ")"
        )
    return " || ".join(calls)


def _related_sql(collection: Collection, path: LookupPath, alias: str) -> str:
    """The JSON form of one related path of the row ``alias``."""
    what = f"{type(collection).__qualname__}.related {path.key!r}"
    base = f"{alias}.{_q(_own_column(collection.model, path.base_field, what))}"
    return path_json_sql(path, base, what)


def change_sql(collection: Collection, alias: str, op_sql: str) -> str:
    """SQL for the change of row ``alias`` (``NEW``, ``r``): ``{"o", "id", "f"}``."""
    model = collection.model
    what = type(collection).__qualname__
    pairs = [
        (p.attname, db_json_sql(p.field, f"{alias}.{_q(_own_column(model, p.field, what))}"))
        for p in collection.published
    ]
    pairs += [(r.key, _related_sql(collection, r, alias)) for r in collection.related_paths]
    pk = _q(_own_column(model, collection.pk_field, what))
    return f"jsonb_build_object('o', {op_sql}, 'id', {alias}.{pk}, 'f', {_json_object(pairs)})"


def delete_sql(collection: Collection, alias: str) -> str:
    """SQL for the delete change of row ``alias``."""
    pk = _q(_col(collection.pk_field))
    return f"jsonb_build_object('o', 'd', 'id', {alias}.{pk})"


def _not_yet_armed(channel: str) -> str:
    """True when this transaction has no pending change on ``channel`` yet."""
    return (
        f"NOT EXISTS (SELECT 1 FROM {PENDING_TABLE} p WHERE p.txid = txid_current()"
        f" AND p.channel = {_literal(channel)})"
    )


def enqueue_sql(channel: str, select_changes: str) -> str:
    """``INSERT ... SELECT`` of many changes (``select_changes`` yields a ``change``
    column), arming the flush with the first one when the transaction has none yet."""
    return (
        f"INSERT INTO {PENDING_TABLE} (channel, change, armed)"
        f" SELECT {_literal(channel)}, s.change,"
        f" (row_number() OVER () = 1 AND {_not_yet_armed(channel)})"
        f" FROM ({select_changes}) s"
    )


def _enqueue_one(channel: str, change: str) -> str:
    return (
        f"INSERT INTO {PENDING_TABLE} (channel, change, armed)"
        f" VALUES ({_literal(channel)}, {change}, {_not_yet_armed(channel)});"
    )


def _distinct(columns: Iterable[tuple[str, models.Field[Any, Any]]], conn: Any) -> str:
    tests = []
    for column, f in columns:
        db_type = (f.db_type(conn) or "").lower().split("(")[0].strip()
        cast = "::text" if db_type in _NO_EQUALITY else ""
        tests.append(f"OLD.{_q(column)}{cast} IS DISTINCT FROM NEW.{_q(column)}{cast}")
    return " OR ".join(tests)


_OP: Final = "CASE TG_OP WHEN 'UPDATE' THEN 'u' ELSE 'i' END"


def _trigger_names(function: str) -> tuple[str, str]:
    """The names of a function's two triggers (``..._i``, ``..._u``), at most 63 bytes."""
    return _trigger_name(function, "i"), _trigger_name(function, "u")


def _trigger_name(function: str, suffix: str) -> str:
    """``<function>_<suffix>``, at most 63 bytes."""
    return f"{function[:61]}_{suffix}"


def _row_set(collection: Collection, conn: BaseDatabaseWrapper) -> TriggerSet:
    model = collection.model
    table = _table(model)
    channel = collection.channel
    pk = _q(_col(collection.pk_field))
    function = _name("row", table)
    body = f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $ddp$
BEGIN
    IF TG_OP = 'DELETE' THEN
        {_enqueue_one(channel, delete_sql(collection, "OLD"))}
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.{pk} IS DISTINCT FROM NEW.{pk} THEN
        {_enqueue_one(channel, delete_sql(collection, "OLD"))}
        {_enqueue_one(channel, change_sql(collection, "NEW", "'i'"))}
        RETURN NULL;
    END IF;
    {_enqueue_one(channel, change_sql(collection, "NEW", _OP))}
    RETURN NULL;
END
$ddp$;"""
    # An UPDATE matters when the key, a published column or a column a routed value
    # reads (a local related field, the first foreign key of a related path) changed.
    watched: dict[str, models.Field[Any, Any]] = {_col(collection.pk_field): collection.pk_field}
    for p in collection.published:
        watched.setdefault(_col(p.field), p.field)
    for r in collection.related_paths:
        watched.setdefault(_col(r.base_field), r.base_field)
    upsert, update = _trigger_names(function)
    triggers = (
        (
            upsert,
            f"CREATE TRIGGER {upsert} AFTER INSERT OR DELETE ON {_q(table)}"
            f" FOR EACH ROW EXECUTE FUNCTION {function}()",
        ),
        (
            update,
            f"CREATE TRIGGER {update} AFTER UPDATE ON {_q(table)} FOR EACH ROW"
            f" WHEN ({_distinct(watched.items(), conn)}) EXECUTE FUNCTION {function}()",
        ),
    )
    return TriggerSet(function, table, body, triggers, f"{collection!r} row changes")


def _dependency_sets(collection: Collection, conn: BaseDatabaseWrapper) -> list[TriggerSet]:
    """One set per path prefix: re-publish dependents when a row they read changes."""
    what = f"{type(collection).__qualname__}.related"
    groups: dict[tuple[Hop, ...], dict[str, models.Field[Any, Any]]] = {}
    for r in collection.related_paths:
        for j in range(1, len(r.hops) + 1):
            prefix = r.hops[:j]
            end = prefix[-1]
            watched = groups.setdefault(prefix, {})
            # The column joining the table to the previous one, and the column the path
            # reads next (the next join's, or the value's).
            read = r.field if j == len(r.hops) else r.hops[j].source_field
            for f in (end.target_field, read):
                watched[_own_column(end.target, f, what)] = f
    return [
        _dependency_set(collection, prefix, watched, conn) for prefix, watched in groups.items()
    ]


def _dependency_set(
    collection: Collection,
    prefix: tuple[Hop, ...],
    watched: dict[str, models.Field[Any, Any]],
    conn: BaseDatabaseWrapper,
) -> TriggerSet:
    model = collection.model
    what = f"{type(collection).__qualname__}.related"
    end = prefix[-1]
    table = _table(end.target)
    link = _q(_own_column(end.target, end.target_field, what))

    def republish(changed_keys: str) -> str:
        """Enqueue one change per row of the collection reaching a changed row, whose
        joining column (``link``) holds one of ``changed_keys`` (SQL)."""
        first = prefix[0]
        local = f"r.{_q(_own_column(model, first.source_field, what))}"
        if len(prefix) == 1:
            where = f"{local} IN ({changed_keys})"
        else:
            # Walk back from the changed rows to the collection's table: each join is an
            # indexed lookup (a foreign key's column, or the key it points at).
            sql_from = ""
            for i, hop in enumerate(prefix[:-1], start=1):
                joined = f"{_q(_table(hop.target))} d{i}"
                if i == 1:
                    sql_from = joined
                else:
                    key = _q(_own_column(hop.target, hop.target_field, what))
                    before = _q(_own_column(prefix[i - 2].target, hop.source_field, what))
                    sql_from += f" JOIN {joined} ON d{i}.{key} = d{i - 1}.{before}"
            n = len(prefix) - 1
            reached = f"d{n}.{_q(_own_column(prefix[-2].target, end.source_field, what))}"
            back = f"d1.{_q(_own_column(first.target, first.target_field, what))}"
            where = (
                f"{local} IN (SELECT {back} FROM {sql_from} WHERE {reached} IN ({changed_keys}))"
            )
        change = change_sql(collection, "r", "'u'")
        select = f"SELECT {change} AS change FROM {_q(_table(model))} r WHERE {where}"
        return enqueue_sql(collection.channel, select)

    function = _name("dep", _table(model), "__".join(_hop_name(h) for h in prefix))
    body = f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $ddp$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        {republish(f"SELECT x.{link} FROM ddp_rows x")};
    ELSE
        {republish(f"OLD.{link}, NEW.{link}")};
    END IF;
    RETURN NULL;
END
$ddp$;"""
    insert, delete, update = (_trigger_name(function, s) for s in ("i", "d", "u"))
    triggers = (
        (
            insert,
            f"CREATE TRIGGER {insert} AFTER INSERT ON {_q(table)}"
            f" REFERENCING NEW TABLE AS ddp_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ),
        (
            delete,
            f"CREATE TRIGGER {delete} AFTER DELETE ON {_q(table)}"
            f" REFERENCING OLD TABLE AS ddp_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
        ),
        (
            update,
            f"CREATE TRIGGER {update} AFTER UPDATE ON {_q(table)} FOR EACH ROW"
            f" WHEN ({_distinct(watched.items(), conn)}) EXECUTE FUNCTION {function}()",
        ),
    )
    path = "__".join(
        h.name
        for i, h in enumerate(prefix)
        # A many-to-many is two hops of one name: into its through table, then out.
        if not (i and prefix[i - 1].reverse and not h.reverse and prefix[i - 1].name == h.name)
    )
    description = f"{collection!r} rows reading {table} through {path}"
    return TriggerSet(function, table, body, triggers, description)


def _hop_name(hop: Hop) -> str:
    """A prefix's part of a dependency function's name: a forward key's name (so paths of
    forward keys keep their readable names), or a marker that makes ``_name`` hash it."""
    if not hop.reverse:
        return hop.fk.name
    return f"~{hop.target._meta.model_name}.{hop.fk.name}"


def trigger_sets(collection: Collection, conn: BaseDatabaseWrapper) -> list[TriggerSet]:
    """Every generated object of ``collection``."""
    return [_row_set(collection, conn), *_dependency_sets(collection, conn)]


def _user_model() -> type[models.Model] | None:
    """``AUTH_USER_MODEL``, or None when it is not installed (no auth app)."""
    try:
        return apps.get_model(settings.AUTH_USER_MODEL, require_ready=False)
    except (LookupError, ValueError):
        return None


def revocation_set(
    conn: BaseDatabaseWrapper, user_model: type[models.Model] | None = None
) -> TriggerSet | None:
    """The token revocation trigger on the user table (see the module), or None when the
    model has neither a concrete ``password`` nor a concrete boolean ``is_active``."""
    user_model = user_model or _user_model()
    if user_model is None:
        return None
    what = "token revocation"
    opts = user_model._meta
    tests = []
    fields = {f.name: f for f in opts.concrete_fields}
    password = fields.get("password")
    if password is not None:
        column = _q(_own_column(user_model, password, what))
        tests.append(f"OLD.{column} IS DISTINCT FROM NEW.{column}")
    active = fields.get("is_active")
    if isinstance(active, models.BooleanField):
        column = _q(_own_column(user_model, active, what))
        tests.append(f"(OLD.{column} IS TRUE AND NEW.{column} IS NOT TRUE)")
    if not tests:
        return None
    from django_app.models import LoginToken  # a model: only once the app registry is ready

    owner = LoginToken._meta.get_field("user")
    assert isinstance(owner, models.ForeignKey)
    token_pk = LoginToken._meta.pk
    assert token_pk is not None
    tokens = _q(LoginToken._meta.db_table)
    table = _table(user_model)
    # The key the token's foreign key points at (the primary key), in this user model.
    target = user_model._meta.get_field(owner.remote_field.field_name or "pk")
    assert isinstance(target, models.Field)
    user_key = _q(_own_column(user_model, target, what))
    function = _name("revoke", table)
    body = f"""CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $ddp$
BEGIN
    IF current_setting('ddp.rehash', true) = 'on' THEN
        RETURN NULL;
    END IF;
    DELETE FROM {tokens} t WHERE t.{_q(_col(owner))} = NEW.{user_key}
        AND t.{_q(_col(token_pk))} IS DISTINCT FROM
            nullif(current_setting('ddp.keep_token', true), '');
    RETURN NULL;
END
$ddp$;"""
    update = _trigger_names(function)[1]
    triggers = (
        (
            update,
            f"CREATE TRIGGER {update} AFTER UPDATE ON {_q(table)} FOR EACH ROW"
            f" WHEN ({' OR '.join(tests)}) EXECUTE FUNCTION {function}()",
        ),
    )
    return TriggerSet(function, table, body, triggers, f"login token revocation on {table}")


# -- installation -------------------------------------------------------------------------

_EXISTING_FUNCTIONS = (
    "SELECT p.proname, obj_description(p.oid, 'pg_proc') FROM pg_proc p"
    " WHERE p.proname LIKE 'ddp\\_g\\_%' AND p.pronamespace = current_schema()::regnamespace"
)
_EXISTING_TRIGGERS = (
    "SELECT t.tgname, c.relname, t.tgfoid::regproc::text, t.tgenabled FROM pg_trigger t"
    " JOIN pg_class c ON c.oid = t.tgrelid"
    " WHERE NOT t.tgisinternal AND t.tgname LIKE 'ddp\\_g\\_%'"
    " AND c.relnamespace = current_schema()::regnamespace"
)


def _revocation_set_for(
    using: str, conn: BaseDatabaseWrapper, tables: set[str], plan: SyncPlan
) -> TriggerSet | None:
    """The revocation trigger when ``using`` holds both the user and the token tables."""
    from django_app.models import LoginToken  # a model: only once the app registry is ready

    user_model = _user_model()
    if user_model is None:
        return None
    for model in (user_model, LoginToken):
        if not router.allow_migrate_model(using, model) or _table(model) not in tables:
            plan.skipped.append(
                f"login token revocation: {model._meta.label} is not in database {using!r}"
            )
            return None
    try:
        return revocation_set(conn, user_model)
    except ImproperlyConfigured as exc:
        logger.error("no login token revocation trigger: %s", exc)
        plan.skipped.append(f"login token revocation: {exc}")
        return None


def sync_triggers(
    using: str = DEFAULT_DB_ALIAS,
    registry: Registry | None = None,
    *,
    drop_stale: bool = True,
    dry_run: bool = False,
) -> SyncPlan:
    """Make the database's generated triggers match the registered collections (and the
    user table's token revocation trigger).

    Idempotent: up-to-date objects are left alone; changed ones are replaced and (with
    ``drop_stale``) those of collections that no longer exist are dropped, all in one
    transaction. Collections whose tables (or related tables) do not exist in ``using``,
    or that the database router does not migrate there, are skipped. Does nothing before
    the ``ddp`` migrations ran.
    """
    registry = registry if registry is not None else default_registry
    conn = connections[using]
    plan = SyncPlan()
    tables = set(conn.introspection.table_names())
    if PENDING_TABLE not in tables:
        plan.skipped.append(f"everything: {PENDING_TABLE} does not exist (migrate ddp)")
        return plan
    desired: dict[str, TriggerSet] = {}
    for collection in registry.collections:
        if not router.allow_migrate_model(using, collection.model):
            plan.skipped.append(f"{collection!r}: not migrated to database {using!r}")
            continue
        try:
            sets = trigger_sets(collection, conn)
        except ImproperlyConfigured as exc:
            logger.error("%r: no change-stream triggers: %s", collection, exc)
            plan.skipped.append(f"{collection!r}: {exc}")
            continue
        missing = sorted({s.table for s in sets} - tables)
        if missing:
            plan.skipped.append(f"{collection!r}: missing tables {missing}")
            continue
        for s in sets:
            desired[s.function] = s
    revocation = _revocation_set_for(using, conn, tables, plan)
    if revocation is not None:
        desired[revocation.function] = revocation
    with conn.cursor() as cursor:
        cursor.execute(_EXISTING_FUNCTIONS)
        functions = dict(cursor.fetchall())
        cursor.execute(_EXISTING_TRIGGERS)
        triggers: dict[str, set[tuple[str, str, bool]]] = {}
        for name, table, function, enabled in cursor.fetchall():
            triggers.setdefault(function, set()).add((name, table, enabled != "D"))
    to_drop = []
    to_create = []
    for name, digest in functions.items():
        wanted = desired.get(name)
        if wanted is None:
            if drop_stale:
                to_drop.append(name)
            continue
        present = triggers.get(name, set())
        expected = {(trigger, wanted.table, True) for trigger, _ in wanted.triggers}
        if digest == wanted.digest and present == expected:
            plan.unchanged.append(name)
        else:
            to_drop.append(name)
            to_create.append(wanted)
    to_create += [s for name, s in desired.items() if name not in functions]
    plan.dropped = sorted(to_drop)
    plan.created = sorted(s.function for s in to_create)
    if dry_run or not plan.changed:
        return plan
    with transaction.atomic(using=using), conn.cursor() as cursor:
        for name in plan.dropped:
            # ``name`` was read from pg_proc: whoever can create a function named
            # ``ddp_g_...`` chooses it, so it is quoted like any identifier.
            cursor.execute(f"DROP FUNCTION IF EXISTS {_q(name)}() CASCADE")
        for s in to_create:
            cursor.execute(s.function_sql)
            cursor.execute(f"COMMENT ON FUNCTION {_q(s.function)}() IS {_literal(s.digest)}")
            for trigger, sql in s.triggers:
                cursor.execute(f"DROP TRIGGER IF EXISTS {_q(trigger)} ON {_q(s.table)}")
                cursor.execute(sql)
            logger.info("installed %s (%s)", s.function, s.description)
    return plan
