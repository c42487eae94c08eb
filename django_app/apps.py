"""The ``ddp`` application config.

Job: ``ready()`` registers the system checks and imports every installed app's ``ddp.py``
(where collections, publications and methods are declared). Nothing else: no signals,
no connections, no threads.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

__all__ = ["DDPConfig"]


class DDPConfig(AppConfig):
    """``INSTALLED_APPS = [..., "django_app"]``; the app label is ``ddp``."""

    name = "django_app"
    label = "ddp"
    verbose_name = "DDP"

    def ready(self) -> None:
        from django_app.checks import register_checks

        register_checks()
        autodiscover_modules("ddp")
