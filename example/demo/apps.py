"""App config of the demo page (``demo``). Must not import models or views (loaded while
the app registry fills)."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["DemoConfig"]


class DemoConfig(AppConfig):
    name = "demo"
    verbose_name = "Live demo page"
