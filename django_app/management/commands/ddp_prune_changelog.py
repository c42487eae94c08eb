"""``manage.py ddp_prune_changelog``: delete change-stream history past its retention.

Run it periodically (every minute or so: cron, a Kubernetes CronJob). It deletes in small
batches and never blocks writers. ``--older-than SECONDS`` overrides
``DDP_CHANGELOG_RETENTION`` (default 600 seconds). What must not live here: the deleting
itself (``django_app.changes.prune``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS

from django_app.changes import prune


class Command(BaseCommand):
    help = "Delete DDP changelog rows older than DDP_CHANGELOG_RETENTION."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument("--older-than", type=float, default=None, metavar="SECONDS")

    def handle(self, *args: Any, **options: Any) -> None:
        seconds = options["older_than"]
        age = None if seconds is None else dt.timedelta(seconds=seconds)
        deleted = prune(age, using=options["database"])
        self.stdout.write(f"deleted {deleted} changelog rows")
