"""The Django admin of login tokens (``django_app.models.LoginToken``) and session traces.

Job: let staff see who holds DDP login tokens (user, kind, created, expires) and revoke
them: deleting a token (one, or a selection) closes the DDP sessions that hold it on every
relay, since the delete travels the change stream; the action "Revoke every token of these
users" logs the selected tokens' users out of DDP everywhere. Tokens are only issued by
logins, never added or edited here, and their hashes are not shown.

Session traces (``django_app.models.SessionTrace``): start one (a session id or a user
id, for a number of minutes), stop it (the action, or lower ``until``), read its first
frames on its page and download it whole as JSON (``<id>/download/``, what
``ddp_trace replay`` plays). The actions "Trace these users' DDP sessions for 15/60
minutes" are added to the user admin registered before this module (Django's
``UserAdmin`` when ``django.contrib.auth`` is listed before ``django_app``); a project
with its own user admin adds ``TRACE_USER_ACTIONS`` to its ``actions``.

What must not live here: token logic (``django_app.accounts.tokens``). Django's admin
imports this module when ``django.contrib.admin`` is installed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from django_app.models import LoginToken, SessionTrace
from django_app.tracing import MAX_MINUTES, export_trace, start_trace, stop_trace

__all__ = ["TRACE_USER_ACTIONS", "LoginTokenAdmin", "SessionTraceAdmin"]


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


#: Frames shown on a trace's admin page (the download has them all).
PREVIEW_FRAMES = 200
#: Characters of a frame shown there.
PREVIEW_CHARS = 300


class SessionTraceForm(forms.ModelForm):  # type: ignore[type-arg]
    """A new trace: its target, and for how long (``until`` is computed)."""

    minutes = forms.FloatField(min_value=0.1, max_value=MAX_MINUTES, initial=15)

    class Meta:
        model = SessionTrace
        fields = ("session_id", "user_id", "max_frames", "max_chars", "frame_chars", "note")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("session_id")) == bool(data.get("user_id")):
            raise forms.ValidationError("Trace exactly one target: a session id or a user id.")
        return data

    def save(self, commit: bool = True) -> SessionTrace:
        trace: SessionTrace = super().save(commit=False)
        trace.session_id = trace.session_id or None
        trace.user_id = trace.user_id or None
        trace.until = timezone.now() + dt.timedelta(minutes=self.cleaned_data["minutes"])
        if commit:
            trace.save()
        return trace


@admin.register(SessionTrace)
class SessionTraceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Traces: start, stop, read the first frames, download as JSON."""

    list_display = ("id", "session_id", "user_id", "until", "created", "created_by", "download")
    search_fields = ("id", "session_id", "user_id")
    ordering = ("-created",)
    actions = ("stop_traces",)
    readonly_fields = (
        "id",
        "session_id",
        "user_id",
        "until",
        "created",
        "created_by",
        "max_frames",
        "max_chars",
        "frame_chars",
        "max_total_chars",
        "note",
        "download",
        "frames",
    )

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = SessionTraceForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return (*SessionTraceForm.Meta.fields[:2], "minutes", *SessionTraceForm.Meta.fields[2:])
        return self.readonly_fields

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = str(getattr(request.user, "get_username", lambda: "")())[:150]
        super().save_model(request, obj, form, change)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # stopped by the action; a trace's frames are never edited

    @admin.display(description="JSON")
    def download(self, obj: SessionTrace) -> str:
        url = reverse(f"{self.admin_site.name}:ddp_sessiontrace_download", args=[obj.pk])
        return format_html('<a href="{}">download</a>', url)

    @admin.display(description="first frames")
    def frames(self, obj: SessionTrace) -> str:
        lines: list[str] = []
        for chunk in obj.chunks.order_by("id"):
            for frame in chunk.frames:
                if len(lines) >= PREVIEW_FRAMES:
                    break
                moment = dt.datetime.fromtimestamp(frame.get("t", 0), dt.UTC)
                text = str(frame.get("m", ""))[:PREVIEW_CHARS]
                lines.append(
                    f"{moment:%H:%M:%S.%f} {chunk.relay} {chunk.session_id}"
                    f" {'->' if frame.get('d') == 'in' else '<-'} {text}"
                )
        return format_html("<pre>{}</pre>", "\n".join(lines) or "(nothing recorded yet)")

    def get_urls(self) -> list[URLPattern]:
        download = path(
            "<path:object_id>/download/",
            self.admin_site.admin_view(self.download_view),
            name="ddp_sessiontrace_download",
        )
        return [download, *super().get_urls()]

    def download_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The whole trace as a JSON attachment (``django_app.tracing.export_trace``)."""
        trace = SessionTrace.objects.filter(pk=object_id).first()
        if trace is None:
            raise Http404("no such trace")
        if not self.has_view_permission(request, trace):
            raise PermissionDenied
        response = JsonResponse(export_trace(trace), json_dumps_params={"indent": 1})
        response["Content-Disposition"] = f'attachment; filename="trace-{trace.pk}.json"'
        return response

    @admin.action(description="Stop these traces now", permissions=["view"])
    def stop_traces(self, request: HttpRequest, queryset: QuerySet[SessionTrace]) -> None:
        for trace in queryset:
            stop_trace(trace)
        self.message_user(request, f"Stopped {len(queryset)} trace(s).", messages.SUCCESS)


def _trace_users_action(minutes: int) -> Callable[[Any, HttpRequest, QuerySet[Any]], None]:
    def trace_users(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        if not request.user.has_perm("ddp.add_sessiontrace"):
            raise PermissionDenied
        by = str(getattr(request.user, "get_username", lambda: "")())
        ids = [start_trace(user=user, minutes=minutes, created_by=by).pk for user in queryset]
        modeladmin.message_user(
            request,
            f"Tracing the DDP sessions of {len(ids)} user(s) for {minutes} minutes: "
            f"{json.dumps(ids)} (see Session traces).",
            messages.SUCCESS,
        )

    trace_users.__name__ = f"trace_ddp_sessions_{minutes}"
    return admin.action(description=f"Trace these users' DDP sessions for {minutes} minutes")(
        trace_users
    )


#: The user admin's actions that start traces (see the module).
TRACE_USER_ACTIONS = (_trace_users_action(15), _trace_users_action(60))


def _add_user_actions() -> None:
    user_model = get_user_model()
    if not admin.site.is_registered(user_model):
        return
    user_admin = admin.site.get_model_admin(user_model)
    user_admin.actions = (*(user_admin.actions or ()), *TRACE_USER_ACTIONS)


_add_user_actions()
