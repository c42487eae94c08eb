"""``manage.py ddp_trace``: trace a DDP session or user at run time, export, replay.

``start --user U | --session S --minutes M`` switches a trace on (relays start recording
once the commit reaches them: no restart) and prints its id; ``stop ID`` ends it now;
``list`` shows the traces and what they hold; ``export ID`` writes the trace as JSON to
standard output (``> trace.json``); ``replay trace.json --url ws://host/websocket``
plays a recorded session's client frames against a relay and exits 1 when its answers
are not equivalent (``django_app.trace_replay``). ``--user`` takes the username (or the
primary key with ``--user-id``).

What must not live here: the traces' logic (``django_app.tracing``) or the replay's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Count, Sum

from django_app.models import SessionTrace
from django_app.trace_replay import replay
from django_app.tracing import MAX_MINUTES, export_trace, start_trace, stop_trace


class Command(BaseCommand):
    help = "Trace DDP sessions at run time (start, stop, list, export) and replay a trace."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        start = sub.add_parser("start", help="switch a trace on")
        target = start.add_mutually_exclusive_group(required=True)
        target.add_argument("--user", help="the user's username")
        target.add_argument("--user-id", help="the user's primary key")
        target.add_argument("--session", help="a DDP session id")
        start.add_argument("--minutes", type=float, default=15.0)
        start.add_argument("--max-frames", type=int, default=None)
        start.add_argument("--max-chars", type=int, default=None)
        start.add_argument("--frame-chars", type=int, default=None)
        start.add_argument("--note", default="")
        stop = sub.add_parser("stop", help="end a trace now")
        stop.add_argument("trace_id")
        sub.add_parser("list", help="the traces and what they hold")
        export = sub.add_parser("export", help="write a trace as JSON to standard output")
        export.add_argument("trace_id")
        play = sub.add_parser("replay", help="replay a recorded session against a relay")
        play.add_argument("file", help="an export (ddp_trace export), '-' for standard input")
        play.add_argument("--url", required=True, help="ws://host:port/websocket")
        play.add_argument("--session", default=None, help="the session to replay")
        play.add_argument("--timeout", type=float, default=5.0)
        play.add_argument("--unordered", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "start":
            self._start(options)
        elif action == "stop":
            stop_trace(self._trace(options["trace_id"]))
            self.stdout.write(f"trace {options['trace_id']} stopped")
        elif action == "list":
            self._list()
        elif action == "export":
            document = export_trace(self._trace(options["trace_id"]))
            self.stdout.write(json.dumps(document, indent=1))
        else:
            self._replay(options)

    def _start(self, options: dict[str, Any]) -> None:
        user = None
        if options["user"] is not None:
            model = get_user_model()
            try:
                user = model._default_manager.get_by_natural_key(options["user"])
            except model.DoesNotExist as exc:
                raise CommandError(f"no user {options['user']!r}") from exc
        if not 0 < options["minutes"] <= MAX_MINUTES:
            raise CommandError(f"--minutes must be in (0, {MAX_MINUTES}]")
        try:
            trace = start_trace(
                session_id=options["session"],
                user=user,
                user_id=options["user_id"],
                minutes=options["minutes"],
                max_frames=options["max_frames"],
                max_chars=options["max_chars"],
                frame_chars=options["frame_chars"],
                created_by="manage.py ddp_trace",
                note=options["note"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(trace.pk)

    def _list(self) -> None:
        rows = SessionTrace.objects.annotate(
            batches=Count("chunks"), chars=Sum("chunks__chars")
        ).order_by("-created")
        for row in rows:
            target = f"session {row.session_id}" if row.session_id else f"user {row.user_id}"
            self.stdout.write(
                f"{row.pk}  {target}  until {row.until.isoformat()}  "
                f"{row.batches} batch(es), {row.chars or 0} chars"
            )

    def _replay(self, options: dict[str, Any]) -> None:
        try:
            if options["file"] == "-":
                document = json.load(sys.stdin)
            else:
                with open(options["file"], encoding="utf-8") as handle:
                    document = json.load(handle)
            report = replay(
                document,
                options["url"],
                session=options["session"],
                timeout=options["timeout"],
                ordered=not options["unordered"],
            )
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot replay: {exc}") from exc
        self.stdout.write(report.describe())
        if not report.ok:
            raise CommandError("the relay's answers differ from the recording", returncode=1)

    @staticmethod
    def _trace(trace_id: str) -> SessionTrace:
        trace = SessionTrace.objects.filter(pk=trace_id).first()
        if trace is None:
            raise CommandError(f"no trace {trace_id!r}")
        return trace
