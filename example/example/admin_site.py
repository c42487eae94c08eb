"""The example's admin site: Django's, with its login form throttled.

Job: ``ThrottledAdminSite`` (the default ``admin.site`` of the example, installed by
``example.apps.ExampleAdminConfig``) answers a login form posted by a client address or
for a username that failed too often (``example.throttle``) with the form again, a
"too many failed login attempts" error, HTTP 429 and ``Retry-After``, without checking
the password. Everything else is Django's admin unchanged.

What it must not do: count anything itself (``example.throttle`` does), or be imported
before the app registry is ready (the admin's forms import the user model; Django
imports the default site lazily, when ``admin.site`` is first used).
"""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from django.contrib.admin import AdminSite
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache

from example.throttle import LoginThrottle, client_address

__all__ = ["ThrottledAdminSite", "ThrottledAuthenticationForm"]


class ThrottledAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form, refused with code ``throttled`` once the client address or
    the username has failed too often; ``retry_after`` is then the wait in seconds."""

    retry_after: int = 0

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if not (username and password):
            # Field errors already; Django tries no password either, so nothing counts.
            return super().clean()
        meta = self.request.META if self.request is not None else {}
        attempt = LoginThrottle.from_settings().attempt(
            client_address(meta, int(settings.HTTP_FORWARDED_COUNT)), username
        )
        if not attempt.allowed:
            self.retry_after = attempt.retry_after
            minutes = math.ceil(attempt.retry_after / 60)
            raise ValidationError(
                ngettext(
                    "Too many failed login attempts. Try again in %(minutes)d minute.",
                    "Too many failed login attempts. Try again in %(minutes)d minutes.",
                    minutes,
                ),
                code="throttled",
                params={"minutes": minutes},
            )
        # A wrong password, an inactive or a non-staff user raise here: the attempt
        # stays counted as a failure.
        cleaned = super().clean()
        attempt.succeeded()
        return cleaned


class ThrottledAdminSite(AdminSite):
    """Django's admin site with ``ThrottledAuthenticationForm`` as its login form."""

    login_form = ThrottledAuthenticationForm

    # The same decorators as AdminSite.login: never cached, reachable when logged out.
    @method_decorator(never_cache)
    @login_not_required
    def login(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().login(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        form = context.get("form")
        if isinstance(form, ThrottledAuthenticationForm) and form.retry_after:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response
