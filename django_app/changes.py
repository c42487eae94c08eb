"""The change stream from Python: publish what triggers cannot see, read positions, prune.

Job: the explicit side of the write path. Database triggers (``django_app.triggers``)
already publish every INSERT, UPDATE and DELETE of a published table, whoever makes it
(ORM, ``QuerySet.update``, ``bulk_create``, raw SQL). This module covers the rest:

* ``touch(objs)`` re-publishes the current state of rows as ``"u"`` changes (``"d"`` for
  instances whose row is gone): after ``TRUNCATE``, after ``ALTER TABLE ... DISABLE
  TRIGGER`` bulk loads, after ``COPY`` into a table without triggers, or when what a
  publication shows changed outside the published tables. Like a trigger it publishes at
  the commit of the surrounding transaction (nothing on rollback).
* ``prune(older_than=None)`` deletes changelog rows older than
  ``DDP_CHANGELOG_RETENTION`` (default 600 s), in small batches; a plain ``DELETE`` of
  old rows never blocks writers, who only insert. Run ``manage.py ddp_prune_changelog``
  every minute or so (cron, a Kubernetes CronJob), or call it from a periodic task.
* ``positions(channels)``, ``published_by(txids)`` and ``current_txid()``: what the
  backend needs for subscription positions and method write fences.

What must not live here: SQL generation for the triggers (``django_app.triggers``) or the
payload contract (``relay.protocol.changestream``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models, router, transaction

from django_app.conf import ddp_settings
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.triggers import change_sql, delete_sql, enqueue_sql
from relay.protocol.changestream import SELECT_BY_TXID

__all__ = ["current_txid", "positions", "prune", "published_by", "touch"]

#: Rows deleted per statement by ``prune``: short transactions, small lock footprint.
PRUNE_BATCH = 5000


def touch(
    objs: models.QuerySet[Any] | models.Model | Iterable[models.Model],
    *,
    registry: Registry | None = None,
) -> int:
    """Publish the current state of these rows (a queryset, an instance, or instances).

    Each row becomes one ``"u"`` change on its collection's channel, built by the same SQL
    as the triggers' (published columns and related paths); an instance whose row no
    longer exists becomes a ``"d"`` change. Returns the number of changes queued; they
    are published when the surrounding transaction commits (immediately in autocommit).
    Raises ``ImproperlyConfigured`` for a model that is not a published collection.
    """
    registry = registry if registry is not None else default_registry
    if isinstance(objs, models.QuerySet):
        collection = registry.collection_for_model(objs.model)
        using = objs.db
        pks = (objs if objs.query.is_sliced else objs.order_by()).values("pk")
        sql, params = pks.query.sql_with_params()
        table = connections[using].ops.quote_name(objs.model._meta.db_table)
        pk = connections[using].ops.quote_name(str(collection.pk_field.column))
        change = change_sql(collection, "r", "'u'")
        select = f"SELECT {change} AS change FROM {table} r WHERE r.{pk} IN ({sql})"
        return _enqueue(using, collection.channel, select, params)
    instances = [objs] if isinstance(objs, models.Model) else list(objs)
    by_model: dict[type[models.Model], list[models.Model]] = defaultdict(list)
    for instance in instances:
        by_model[instance._meta.concrete_model or type(instance)].append(instance)
    queued = 0
    for model, group in by_model.items():
        collection = registry.collection_for_model(model)
        using = router.db_for_write(model, instance=group[0])
        conn = connections[using]
        pk_field = collection.pk_field
        keys = [pk_field.get_db_prep_value(i.pk, conn) for i in group]
        table = conn.ops.quote_name(model._meta.db_table)
        pk = conn.ops.quote_name(str(pk_field.column))
        deleted, changed = delete_sql(collection, "k"), change_sql(collection, "r", "'u'")
        select = (
            f"SELECT CASE WHEN r.{pk} IS NULL THEN {deleted} ELSE {changed} END AS change"
            f" FROM unnest(%s::{pk_field.rel_db_type(conn)}[]) WITH ORDINALITY"
            f" AS k({pk}, n) LEFT JOIN {table} r ON r.{pk} = k.{pk} ORDER BY k.n"
        )
        queued += _enqueue(using, collection.channel, select, [keys])
    return queued


def _enqueue(using: str, channel: str, select: str, params: Sequence[Any]) -> int:
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(enqueue_sql(channel, select), params)
        return int(cursor.rowcount)


def prune(
    older_than: dt.timedelta | None = None,
    *,
    using: str = DEFAULT_DB_ALIAS,
    batch_size: int = PRUNE_BATCH,
) -> int:
    """Delete changelog rows older than ``older_than`` (default the retention setting).

    Deletes in batches of ``batch_size`` rows, each its own short transaction when called
    outside one, using the ``created_at`` index (the flush's clock time, close to the
    commit). Writers are never blocked: they insert new rows and touch no old ones.
    Returns how many rows were deleted. Counters in ``ddp_channel`` are kept, so sequence
    numbers never restart; a relay that needs pruned history sees a gap it cannot fill
    and resynchronises its subscriptions.
    """
    age = ddp_settings.CHANGELOG_RETENTION if older_than is None else older_than
    seconds = age.total_seconds()
    sql = (
        "DELETE FROM ddp_changelog WHERE id IN (SELECT id FROM ddp_changelog"
        " WHERE created_at < clock_timestamp() - make_interval(secs => %s) LIMIT %s)"
    )
    deleted = 0
    conn = connections[using]
    while True:
        with conn.cursor() as cursor:
            cursor.execute(sql, [seconds, batch_size])
            count = int(cursor.rowcount)
        deleted += count
        if count < batch_size:
            return deleted


def positions(
    channels: Iterable[str], *, using: str = DEFAULT_DB_ALIAS
) -> dict[str, tuple[int, str]]:
    """``{channel: (seq, epoch)}`` as of the current snapshot; ``(0, "")`` when a channel
    never published anything."""
    wanted = sorted(set(channels))
    found: dict[str, tuple[int, str]] = dict.fromkeys(wanted, (0, ""))
    if not wanted:
        return found
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT channel, seq, epoch FROM ddp_channel WHERE channel = ANY(%s)", [wanted]
        )
        for channel, seq, epoch in cursor.fetchall():
            found[channel] = (int(seq), str(epoch))
    return found


def current_txid(*, using: str = DEFAULT_DB_ALIAS) -> int | None:
    """The id of the current transaction if it wrote anything, else None."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT txid_current_if_assigned()")
        row = cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def published_by(txids: Iterable[int], *, using: str = DEFAULT_DB_ALIAS) -> list[tuple[str, int]]:
    """``(channel, seq)`` of every change-stream position these committed transactions
    published, ordered by channel and sequence."""
    out: set[tuple[str, int]] = set()
    with connections[using].cursor() as cursor:
        for txid in sorted(set(txids)):
            cursor.execute(SELECT_BY_TXID, [txid])
            out.update((str(channel), int(seq)) for channel, seq in cursor.fetchall())
    return sorted(out)
