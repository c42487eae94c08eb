"""The ``ddp`` application config.

Job: ``ready()`` registers the system checks, imports every installed app's ``ddp.py``
(where collections, publications and methods are declared), and connects one
``post_migrate`` receiver that brings the change-stream triggers in line with the
registered collections (``django_app.triggers.sync_triggers``) on the migrated database,
so ``manage.py migrate`` (and the test database's creation) installs them. Nothing else:
no connections at start, no threads.
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

__all__ = ["DDPConfig"]


class DDPConfig(AppConfig):
    """``INSTALLED_APPS = [..., "django_app"]``; the app label is ``ddp``."""

    name = "django_app"
    label = "ddp"
    verbose_name = "DDP"

    def ready(self) -> None:
        # Imported when the app registry is ready, not when Django imports this module
        # to populate it: Django's rule for app configs (no cycle is involved).
        from django_app.checks import register_checks

        register_checks()
        autodiscover_modules("ddp")
        post_migrate.connect(
            _sync_triggers_after_migrate, sender=self, dispatch_uid="ddp_sync_triggers"
        )


def _sync_triggers_after_migrate(
    sender: AppConfig, using: str, verbosity: int = 1, stdout: Any = None, **kwargs: Any
) -> None:
    from django_app.triggers import sync_triggers  # as in ready(): after populate

    plan = sync_triggers(using=using)
    if verbosity >= 1 and stdout is not None and plan.changed:
        stdout.write(
            f"  DDP change-stream triggers: {len(plan.created)} installed,"
            f" {len(plan.dropped)} removed, {len(plan.unchanged)} unchanged.\n"
        )
    if verbosity >= 1 and stdout is not None:
        for reason in plan.skipped:
            stdout.write(f"  DDP change-stream triggers skipped for {reason}\n")
