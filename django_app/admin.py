"""The Django admin of login tokens (``django_app.models.LoginToken``).

Job: let staff see who holds DDP login tokens (user, kind, created, expires) and revoke
them: deleting a token (one, or a selection) closes the DDP sessions that hold it on every
relay, since the delete travels the change stream; the action "Revoke every token of these
users" logs the selected tokens' users out of DDP everywhere. Tokens are only issued by
logins, never added or edited here, and their hashes are not shown.

What must not live here: token logic (``django_app.accounts.tokens``). Django's admin
imports this module when ``django.contrib.admin`` is installed.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest

from django_app.models import LoginToken

__all__ = ["LoginTokenAdmin"]


@admin.register(LoginToken)
class LoginTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only list of tokens; delete to revoke."""

    list_display = ("user", "kind", "created", "expires")
    list_filter = ("kind",)
    list_select_related = ("user",)
    ordering = ("-created",)
    fields = ("user", "kind", "created", "expires")
    readonly_fields = fields
    actions = ("revoke_users_tokens",)

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return (f"user__{get_user_model().USERNAME_FIELD}",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke every token of these tokens' users", permissions=["delete"])
    def revoke_users_tokens(self, request: HttpRequest, queryset: QuerySet[LoginToken]) -> None:
        users = set(queryset.values_list("user", flat=True))
        deleted, _ = LoginToken.objects.filter(user__in=users).delete()
        self.message_user(
            request,
            f"Revoked {deleted} token(s) of {len(users)} user(s): their DDP sessions are closed.",
            messages.SUCCESS,
        )
