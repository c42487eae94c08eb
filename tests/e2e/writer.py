"""A standalone writer for the live-update end-to-end tests: random committed ORM writes.

Run it as its own process with the example's environment (``devstack.launch.example_env``:
``DATABASE_URL``, ``DJANGO_SETTINGS_MODULE=example.settings``, ``PYTHONPATH`` example +
root)::

    python tests/e2e/writer.py --ops 2500 --seed 42 [--shard 0/2] [--max-seconds 90]
    python tests/e2e/writer.py --only rename --exclude earthsea-1 --duration 3
    python tests/e2e/writer.py --only rename --ops 100000 --stop-file /tmp/stop --max-seconds 60

It commits random operations on the bookstore's ``Book`` rows through the Django ORM,
exactly as any Django process would (no DDP involved): the write side (``django_app``)
must turn every committed transaction into change-stream messages, and nothing of a
rolled-back one.

Operations (the mix is seeded; ``--seed`` is printed so a failure can be replayed):

- ``create``: a new ``Book`` (fresh Meteor id), title ``"<label> r0"``;
- ``rename``: title ``"<label> r<rev>"`` where ``rev`` grows per document on every attempt
  (rolled-back revisions are never reused), so a client can check that the title
  revisions it sees for one document never go backwards; some renames go through
  ``QuerySet.update()`` (no model signals: only database triggers see them);
- ``setAuthor``: moves the book to another of the three seeded authors, in or out of each
  ``books.byAuthorEmail`` subscription;
- ``edit``: new price and tags (decimal scale through the change stream; tags are a
  many-to-many, set through the ORM, so the through table's triggers republish the book);
- ``remove``: ``Model.delete()`` or ``QuerySet.delete()``.

Operations are grouped into transactions: most hold one operation, some 2-5 (``multi``);
some whole transactions are rolled back (an exception inside ``transaction.atomic()``) and
some multi-operation ones roll back a savepoint in the middle and commit the rest. A few
multi-operation transactions touch the same new document twice (create then rename,
move or even remove it).

With ``--shard i/K`` several writer processes run concurrently without ever touching the
same document: shard ``i`` owns the books whose id hashes (CRC-32) to ``i`` modulo ``K``,
whenever and by whom they were created, and draws the ids of the books it creates
accordingly, so per-document revisions stay monotonic while commits of different
processes interleave.

Prints ``seed=<seed>`` on stderr at the start and ONE JSON summary line on stdout at the
end; exits 0, or non-zero (with ``"ok": false``) when a statement fails unexpectedly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

#: Title revision suffix: "<label> r<rev>".
REVISION = re.compile(r"\sr(\d+)$")

OPS = ("create", "rename", "setAuthor", "edit", "remove")
#: Relative weights of the operations in random mode.
WEIGHTS = {"create": 24, "rename": 38, "setAuthor": 18, "edit": 6, "remove": 14}
TAGS = ("fantasy", "science fiction", "e2e", "discworld", "hainish", "broken earth", "utopia")


class Rollback(Exception):
    """Raised inside transaction.atomic() to roll a transaction (or savepoint) back."""


@dataclass
class Book:
    label: str
    author: str


@dataclass
class Stats:
    committed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    rolled_back: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    transactions: int = 0
    transactions_rolled_back: int = 0
    multi: int = 0
    savepoints_rolled_back: int = 0
    same_doc_transactions: int = 0
    queryset_writes: int = 0
    no_op: int = 0


class Writer:
    def __init__(self, args: argparse.Namespace, rng: random.Random) -> None:
        from bookstore.models import Author, Tag
        from bookstore.models import Book as BookModel

        self.args = args
        self.rng = rng
        self.Book = BookModel
        # Created once, committed, before any transaction of the run (get_or_create takes
        # the row another writer process created meanwhile).
        self.tag_rows = [Tag.objects.get_or_create(name=name)[0] for name in TAGS]
        self.authors = sorted(Author.objects.values_list("id", flat=True))
        if len(self.authors) < 2:
            raise SystemExit("writer: need at least two authors (run seed_demo)")
        shard = args.shard[0]
        exclude = set(args.exclude)
        #: The books this writer owns (id -> Book), as committed.
        self.books: dict[str, Book] = {}
        seeded = list(BookModel.objects.order_by("id").values_list("id", "author_id", "title"))
        for book_id, author_id, _title in seeded:
            if self.owner(book_id) == shard and book_id not in exclude:
                self.books[book_id] = Book(label=book_id, author=author_id)
        #: Last revision drawn per book id (never rolled back).
        self.revision: dict[str, int] = {}
        for book_id, _author, title in seeded:
            match = REVISION.search(title)
            if match:
                self.revision[book_id] = int(match.group(1))
        self.created = 0
        self.stats = Stats()

    def owner(self, book_id: str) -> int:
        """The shard that owns ``book_id``: stable, whoever created it and whenever."""
        return zlib.crc32(book_id.encode()) % int(self.args.shard[1])

    def new_id(self) -> str:
        """A fresh Meteor id that this shard owns."""
        from django_app.fields import random_meteor_id

        while True:
            book_id = random_meteor_id()
            if self.owner(book_id) == self.args.shard[0]:
                return book_id

    # -- one operation ---------------------------------------------------------------------

    def next_title(self, book_id: str, book: Book) -> str:
        rev = self.revision.get(book_id, 0) + 1
        self.revision[book_id] = rev
        return f"{book.label} r{rev}"

    def pick(self) -> str | None:
        return self.rng.choice(list(self.books)) if self.books else None

    def op_create(self) -> str:
        shard = self.args.shard[0]
        self.created += 1
        label = f"{self.args.label}{shard}-{self.created}"
        author = self.rng.choice(self.authors)
        published = (
            None
            if self.rng.random() < 0.2
            else dt.date(1950, 1, 1) + dt.timedelta(days=self.rng.randrange(27000))
        )
        book = self.Book(
            id=self.new_id(),
            title=f"{label} r0",
            author_id=author,
            published=published,
            price=self.price(),
        )
        book.save(force_insert=True)
        tags = self.tags()
        if tags:
            book.tags.set(tags)
        self.books[book.id] = Book(label=label, author=author)
        self.revision[book.id] = 0
        return str(book.id)

    def op_rename(self, book_id: str) -> None:
        from django.utils import timezone

        book = self.books[book_id]
        title = self.next_title(book_id, book)
        if self.rng.random() < 0.15:
            self.stats.queryset_writes += 1
            count = self.Book.objects.filter(pk=book_id).update(
                title=title, updated_at=timezone.now()
            )
        else:
            row = self.Book.objects.get(pk=book_id)
            row.title = title
            row.save(update_fields=["title", "updated_at"])
            count = 1
        if count != 1:
            raise RuntimeError(f"rename: book {book_id} is gone ({count} rows)")

    def op_set_author(self, book_id: str) -> None:
        book = self.books[book_id]
        author = self.rng.choice([a for a in self.authors if a != book.author])
        row = self.Book.objects.get(pk=book_id)
        row.author_id = author
        row.save(update_fields=["author", "updated_at"])
        book.author = author

    def op_edit(self, book_id: str) -> None:
        row = self.Book.objects.get(pk=book_id)
        row.price = self.price()
        row.save(update_fields=["price", "updated_at"])
        row.tags.set(self.tags())

    def op_remove(self, book_id: str) -> None:
        if self.rng.random() < 0.25:
            self.stats.queryset_writes += 1
            _, per_model = self.Book.objects.filter(pk=book_id).delete()
        else:
            _, per_model = self.Book.objects.get(pk=book_id).delete()
        # The total also counts the cascade (its through-table rows, favorites).
        deleted = per_model.get(self.Book._meta.label, 0)
        if deleted != 1:
            raise RuntimeError(f"remove: book {book_id} deleted {deleted} rows")
        del self.books[book_id]

    def price(self) -> Decimal:
        # Whole amounts too ("7.00"): the scale must survive the change stream.
        cents = self.rng.randrange(0, 5000) * (100 if self.rng.random() < 0.2 else 1)
        return (Decimal(cents) / 100).quantize(Decimal("0.01"))

    def tags(self) -> list[Any]:
        """0 to 3 of the ``TAGS`` rows."""
        return self.rng.sample(self.tag_rows, self.rng.randrange(0, 4))

    def run_op(self, name: str, target: str | None = None) -> tuple[str, str | None] | None:
        """Run operation ``name`` (on ``target`` or a random owned book); what it did."""
        if name == "create":
            return name, self.op_create()
        book_id = target if target is not None else self.pick()
        if book_id is None or book_id not in self.books:
            return None
        if name == "rename":
            self.op_rename(book_id)
        elif name == "setAuthor":
            self.op_set_author(book_id)
        elif name == "edit":
            self.op_edit(book_id)
        elif name == "remove":
            self.op_remove(book_id)
        return name, book_id

    def choose(self) -> str:
        if self.args.only:
            return str(self.rng.choice(self.args.only))
        names = list(WEIGHTS)
        weights = [WEIGHTS[n] for n in names]
        if len(self.books) < 8:  # keep a pool to work on
            return "create"
        if len(self.books) > self.args.max_books:
            weights[names.index("create")] = 0
        return self.rng.choices(names, weights)[0]

    # -- transactions ----------------------------------------------------------------------

    def transaction(self, budget: int) -> int:
        """One transaction of up to ``budget`` operations; returns how many were attempted."""
        from django.db import transaction

        rng = self.rng
        multi = budget > 1 and not self.args.single and rng.random() < 0.4
        size = min(budget, rng.randrange(2, 6)) if multi else 1
        rollback = rng.random() < self.args.rollback
        savepoint_at = rng.randrange(size) if multi and rng.random() < 0.2 else None
        same_doc = multi and not self.args.only and rng.random() < 0.1
        snapshot = {k: Book(b.label, b.author) for k, b in self.books.items()}
        done: list[tuple[str, str | None]] = []
        attempted = 0
        try:
            with transaction.atomic():
                if same_doc:
                    # A document born and changed (or even removed) in one transaction.
                    self.stats.same_doc_transactions += 1
                    result = self.run_op("create")
                    assert result is not None
                    done.append(result)
                    new_id = result[1]
                    for _ in range(size - 1):
                        if new_id not in self.books:
                            break
                        name = rng.choice(("rename", "setAuthor", "edit", "remove"))
                        result = self.run_op(name, new_id)
                        if result is not None:
                            done.append(result)
                    attempted = len(done)
                else:
                    for index in range(size):
                        if index == savepoint_at:
                            attempted += self.savepoint()
                            continue
                        attempted += 1
                        result = self.run_op(self.choose())
                        if result is None:
                            self.stats.no_op += 1
                        else:
                            done.append(result)
                if rollback:
                    raise Rollback
        except Rollback:
            self.books = snapshot
            self.stats.transactions_rolled_back += 1
            for name, _ in done:
                self.stats.rolled_back[name] += 1
            return max(attempted, 1)
        self.stats.transactions += 1
        if len(done) > 1:
            self.stats.multi += 1
        for name, _ in done:
            self.stats.committed[name] += 1
        return max(attempted, 1)

    def savepoint(self) -> int:
        """A nested atomic block whose operations are rolled back; the outer one goes on."""
        from django.db import transaction

        snapshot = {k: Book(b.label, b.author) for k, b in self.books.items()}
        ops: list[str] = []
        try:
            with transaction.atomic():
                for _ in range(self.rng.randrange(1, 3)):
                    result = self.run_op(self.choose())
                    if result is not None:
                        ops.append(result[0])
                raise Rollback
        except Rollback:
            self.books = snapshot
            self.stats.savepoints_rolled_back += 1
            for name in ops:
                self.stats.rolled_back[name] += 1
        return max(len(ops), 1)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + self.args.max_seconds
        stop_at = started + self.args.duration if self.args.duration else None
        attempted = 0
        truncated = False
        while attempted < self.args.ops:
            now = time.monotonic()
            if stop_at is not None and now >= stop_at:
                break
            if self.args.stop_file and os.path.exists(self.args.stop_file):
                break
            if now >= deadline:
                truncated = True
                break
            attempted += self.transaction(self.args.ops - attempted)
            if self.args.pace_ms:
                time.sleep(self.rng.random() * 2 * self.args.pace_ms / 1000)
        s = self.stats
        return {
            "ok": True,
            "seed": self.args.seed,
            "shard": list(self.args.shard),
            "attempted": attempted,
            "truncated": truncated,
            "seconds": round(time.monotonic() - started, 3),
            "committed": s.committed,
            "rolledBack": s.rolled_back,
            "transactions": s.transactions,
            "transactionsRolledBack": s.transactions_rolled_back,
            "multi": s.multi,
            "savepointsRolledBack": s.savepoints_rolled_back,
            "sameDocTransactions": s.same_doc_transactions,
            "querysetWrites": s.queryset_writes,
            "noOp": s.no_op,
            "ownedBooks": len(self.books),
        }


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    shard, shards = int(index), int(count or 1)
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"bad shard {text!r}")
    return shard, shards


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2500, help="operations to attempt")
    parser.add_argument("--seed", default=None, help="RNG seed (default: random, printed)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/K: own 1/K of the books")
    parser.add_argument("--label", default="w", help="title prefix of created books")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="hard time bound")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this long")
    parser.add_argument("--stop-file", default="", help="stop once this file exists")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="mean pause per transaction")
    parser.add_argument("--rollback", type=float, default=0.08, help="transactions rolled back")
    parser.add_argument("--max-books", type=int, default=400, help="stop creating above this")
    parser.add_argument("--only", action="append", choices=OPS, help="only these operations")
    parser.add_argument("--exclude", action="append", default=[], help="book ids not to touch")
    parser.add_argument("--single", action="store_true", help="one operation per transaction")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = str(random.SystemRandom().randrange(1 << 32))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    print(f"writer: seed={args.seed} shard={args.shard[0]}/{args.shard[1]}", file=sys.stderr)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
    import django

    django.setup()
    rng = random.Random(f"{args.seed}/{args.shard[0]}")
    try:
        summary = Writer(args, rng).run()
    except Exception as exc:
        print(json.dumps({"ok": False, "seed": args.seed, "error": repr(exc)}), flush=True)
        raise
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
