"""The events benchmark's writer: a Django process that publishes chat events and renames.

Events are published the way an application publishes them, from a Django process through
``django_app.events.publish_event`` (one ``ddp_pending`` row each, flushed into the
changelog and NOTIFY when the transaction commits), never with SQL the harness wrote.
Renames of the run's book go through the ORM (``QuerySet.update``), as any Django code
writes a row. Each transaction reports its id (``txid_current() % 2^32``), so the driver
reads PostgreSQL's commit timestamp of every write (``writer.commit_times``).

Two halves: ``EventWriter`` is the driver's handle (it never imports Django: the writer
runs as a child, ``python -m loadtest.bench.eventwriter``, in the example's environment);
``main`` is the child. They speak JSON lines, as the Node.js generators do: commands on
the child's stdin, events on its stdout; the child exits when its stdin closes.

Commands (each answered by one event, or ``{"event": "error", "message": ...}``):

- ``{"cmd": "book"}``: delete the books of earlier runs (titled ``TITLE...``), create a
  fresh one (a chat with no history) -> ``{"event": "book", "id", "deleted"}``;
- ``{"cmd": "publish", "kind": "event"|"rename", "book", "prefix", "count", "interval",
  "batch"}``: ``count`` events with text ``<prefix><i>`` (or renames to that title),
  ``batch`` per transaction, one transaction every ``interval`` seconds on a fixed
  schedule -> ``{"event": "published", "xids", "commits", "ids"}``, one entry per write;
- ``{"cmd": "history", "book"}``: the ids the stream's history holds now (what every
  subscriber's client-side collection must end as) -> ``{"event": "history", "ids"}``;
- ``{"cmd": "cleanup"}``: delete the run's books -> ``{"event": "cleaned", "deleted"}``.

Must not: decide what is measured, read the relay, or write rows other than its books.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import queue
import subprocess
import sys
import threading
import time
from typing import IO, Any

from devstack.launch import ROOT, example_env
from loadtest.bench.stack import BenchError, Cleanup, end_by_stdin
from loadtest.bench.writer import pace

#: Every book the events benchmark creates is titled so; ``book`` and ``cleanup`` delete them.
TITLE = "bench events "
#: The stream the example registers (``example/bookstore/ddp.py``: ``chat``, per book).
STREAM = "chat"
#: The most writes one ``publish`` command may make (a bound on the child's memory).
MAX_WRITES = 1_000_000


class EventWriter:
    """The writer child, seen from the driver: ``request`` sends a command and waits for
    its answer (bounded); ``pid`` for the CPU meter."""

    def __init__(self, database_url: str, cleanup: Cleanup, log: IO[str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.bench.eventwriter"],
            cwd=ROOT,
            env=example_env(database_url),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log if log is not None else subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        cleanup.push("event writer", self.close)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="eventwriter", daemon=True)
        self._reader.start()
        self._next("ready", 120)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    self._events.put(event)
        self._events.put(None)

    def _next(self, kind: str, timeout: float) -> dict[str, Any]:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"the event writer did not say {kind!r} in {timeout:.0f} s") from None
        if event is None:
            raise BenchError(f"the event writer exited (code {self.proc.poll()}): see its log")
        if event.get("event") == "error":
            raise BenchError(f"the event writer failed: {event.get('message')}")
        if event.get("event") != kind:
            raise BenchError(f"the event writer said {event.get('event')!r}, not {kind!r}")
        return event

    def request(self, cmd: dict[str, Any], answer: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise BenchError(f"the event writer is gone (code {self.proc.poll()})") from None
        return self._next(answer, timeout)

    def book(self) -> str:
        return str(self.request({"cmd": "book"}, "book", 60)["id"])

    def publish(
        self, kind: str, book: str, prefix: str, count: int, interval: float, batch: int = 1
    ) -> dict[str, Any]:
        """``count`` writes paced ``interval`` apart (``batch`` per transaction); waits
        for them, bounded by three times the schedule plus a minute."""
        cmd = {
            "cmd": "publish",
            "kind": kind,
            "book": book,
            "prefix": prefix,
            "count": count,
            "interval": interval,
            "batch": batch,
        }
        transactions = math.ceil(count / max(1, batch))
        return self.request(cmd, "published", transactions * interval * 3 + 60)

    def history(self, book: str) -> list[str]:
        answer = self.request({"cmd": "history", "book": book}, "history", 60)
        return [str(i) for i in answer["ids"]]

    def close(self) -> None:
        """Close its stdin (it exits), bounded: killed after 10 s."""
        end_by_stdin(self.proc)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()


# -- the child ------------------------------------------------------------------------------


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _int(cmd: dict[str, Any], key: str, low: int, high: int) -> int:
    value = cmd.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an int from {low} to {high}")
    return value


class _Child:
    """What the writer process does once Django is set up (``main``)."""

    def __init__(self) -> None:
        # Django only in the child: the driver never imports it.
        from bookstore.models import Author, Book
        from django.db import connection, transaction

        from django_app.events import history, publish_event
        from django_app.registries import registry

        stream = registry.get_stream(STREAM)
        if stream is None:
            raise LookupError(f"the example registers no stream {STREAM!r}")
        self.stream = stream
        self.book_model, self.author_model = Book, Author
        self.connection, self.transaction = connection, transaction
        self.publish_event, self.read_history = publish_event, history

    def _delete_books(self) -> int:
        deleted, _ = self.book_model.objects.filter(title__startswith=TITLE).delete()
        return int(deleted)

    def book(self, cmd: dict[str, Any]) -> dict[str, Any]:
        deleted = self._delete_books()
        author = self.author_model.objects.order_by("pk").first()
        if author is None:
            raise LookupError("no author: did seed_demo run?")
        book = self.book_model.objects.create(
            title=f"{TITLE}{time.time():.0f}", author=author, price="1.00"
        )
        return {"event": "book", "id": str(book.pk), "deleted": deleted}

    def _xid(self) -> int:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT txid_current() % 4294967296")
            row = cursor.fetchone()
        return int(row[0])

    def publish(self, cmd: dict[str, Any]) -> dict[str, Any]:
        kind = cmd.get("kind")
        if kind not in ("event", "rename"):
            raise ValueError("kind must be event or rename")
        book, prefix = str(cmd.get("book")), str(cmd.get("prefix"))
        count = _int(cmd, "count", 0, MAX_WRITES)
        batch = _int(cmd, "batch", 1, 10_000)
        interval = float(cmd.get("interval", 0.0))
        if not 0.0 <= interval <= 3600.0:
            raise ValueError("interval must be 0 to 3600 seconds")
        if not self.book_model.objects.filter(pk=book).exists():
            raise LookupError(f"no book {book!r}")
        xids: list[int] = []
        commits: list[float] = []
        ids: list[str] = []

        def write(t: int) -> None:
            first = t * batch
            indexes = range(first, min(count, first + batch))
            made: list[str] = []
            with self.transaction.atomic():
                for i in indexes:
                    if kind == "event":
                        payload = {
                            "bookId": book,
                            "text": f"{prefix}{i}",
                            "userId": "bench",
                            "createdAt": dt.datetime.now(dt.UTC),
                        }
                        made.append(self.publish_event(self.stream, payload, key=book))
                    else:
                        self.book_model.objects.filter(pk=book).update(title=f"{prefix}{i}")
                        made.append(book)
                xid = self._xid()
            committed = time.time()
            for event_id in made:
                xids.append(xid)
                commits.append(committed)
                ids.append(event_id)

        transactions = math.ceil(count / batch)
        pace(transactions, interval, write, max_seconds=transactions * interval * 2 + 30)
        return {"event": "published", "kind": kind, "xids": xids, "commits": commits, "ids": ids}

    def history(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cursor = self.stream.cursor(str(cmd.get("book")))
        return {"event": "history", "ids": [doc.id for doc in self.read_history(cursor)]}

    def cleanup(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"event": "cleaned", "deleted": self._delete_books()}


def main() -> int:
    import django

    django.setup()
    child = _Child()
    handlers = {
        "book": child.book,
        "publish": child.publish,
        "history": child.history,
        "cleanup": child.cleanup,
    }
    _emit({"event": "ready"})
    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            handler = handlers[cmd["cmd"]]
        except (ValueError, KeyError, TypeError):
            _emit({"event": "error", "message": f"not a command: {line.strip()[:200]!r}"})
            continue
        try:
            _emit(handler(cmd))
        except Exception as exc:  # the driver decides; the child keeps serving
            _emit({"event": "error", "message": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
