"""App configs of the example project itself.

Job: ``ExampleAdminConfig``, Django's admin app with the example's throttled login as
its default site (``example.admin_site.ThrottledAdminSite``), so ``admin.site`` and every
``@admin.register`` keep working unchanged. Listed in ``INSTALLED_APPS`` in place of
``django.contrib.admin``. What must not live here: imports of models or of the admin
site (this module is imported while the app registry is being filled).
"""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig

__all__ = ["ExampleAdminConfig"]


class ExampleAdminConfig(AdminConfig):
    default_site = "example.admin_site.ThrottledAdminSite"
