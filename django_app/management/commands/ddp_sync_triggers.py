"""``manage.py ddp_sync_triggers``: install the change-stream triggers of the collections.

``migrate`` runs the same sync at its end; run this after changing a ``Collection``'s
``fields``/``related`` without a migration, or with ``--check`` in CI or a readiness
probe (exit status 1 when the database's triggers differ from the code's). What must not
live here: generating or installing the triggers (``django_app.triggers.sync_triggers``).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from django_app.triggers import sync_triggers


class Command(BaseCommand):
    help = "Install or update the DDP change-stream triggers of the registered collections."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument(
            "--check",
            action="store_true",
            help="Change nothing; exit with status 1 if the triggers are not up to date.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        plan = sync_triggers(using=options["database"], dry_run=options["check"])
        verb = "would install" if options["check"] else "installed"
        for name in plan.created:
            self.stdout.write(f"{verb} {name}")
        for name in plan.dropped:
            if name not in plan.created:
                self.stdout.write(f"{'would drop' if options['check'] else 'dropped'} {name}")
        for reason in plan.skipped:
            self.stdout.write(f"skipped {reason}")
        if options["check"] and plan.changed:
            raise CommandError("DDP change-stream triggers are out of date: run ddp_sync_triggers")
        self.stdout.write(
            f"DDP triggers: {len(plan.created)} installed, {len(plan.unchanged)} unchanged,"
            f" {len([n for n in plan.dropped if n not in plan.created])} dropped."
        )
