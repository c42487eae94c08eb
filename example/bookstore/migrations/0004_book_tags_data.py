"""Copy each book's JSON tag list (``tags_json``) into ``Tag`` rows and ``Book.tags`` links.

Names: a string is taken stripped of surrounding whitespace; any other JSON value but
null (earlier clients could store numbers or objects in the list) becomes its compact JSON
text; empty names and nulls are dropped, names longer than a tag name may be are cut to
fit, and a book gets each resulting name once. Reversed, each book's list is its tag
names sorted by code point (as they are published); the ``Tag`` rows are left to 0003's
reverse, which drops the table.

Must not import the app's models or code: it runs against the models as they were at
this migration (``apps.get_model``), whatever the app later becomes.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import migrations

#: ``Tag.name``'s max_length at this migration (0003).
NAME_MAX_LENGTH = 100
#: Links and tags written per INSERT.
BATCH = 1000


def tag_names(raw: Any) -> list[str]:
    """The distinct tag names of one book's JSON ``tags`` value, in their first order."""
    items = raw if isinstance(raw, list) else [raw]
    names: dict[str, None] = {}
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            name = item.strip()
        else:
            name = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        name = name[:NAME_MAX_LENGTH].strip()
        if name:
            names.setdefault(name, None)
    return list(names)


def forwards(apps: Any, schema_editor: Any) -> None:
    Book = apps.get_model("bookstore", "Book")
    Tag = apps.get_model("bookstore", "Tag")
    Link = Book.tags.through
    db = schema_editor.connection.alias
    wanted: dict[str, list[str]] = {}
    for book_id, raw in Book.objects.using(db).values_list("id", "tags_json").iterator():
        names = tag_names(raw)
        if names:
            wanted[book_id] = names
    all_names = sorted({name for names in wanted.values() for name in names})
    tag_ids = dict(Tag.objects.using(db).filter(name__in=all_names).values_list("name", "id"))
    new_tags = [Tag(name=name) for name in all_names if name not in tag_ids]
    Tag.objects.using(db).bulk_create(new_tags, batch_size=BATCH)
    tag_ids.update((tag.name, tag.id) for tag in new_tags)
    links = [
        Link(book_id=book_id, tag_id=tag_ids[name])
        for book_id, names in wanted.items()
        for name in names
    ]
    Link.objects.using(db).bulk_create(links, batch_size=BATCH, ignore_conflicts=True)


def backwards(apps: Any, schema_editor: Any) -> None:
    Book = apps.get_model("bookstore", "Book")
    Link = Book.tags.through
    db = schema_editor.connection.alias
    names: dict[str, list[str]] = {}
    for book_id, name in Link.objects.using(db).values_list("book_id", "tag__name").iterator():
        names.setdefault(book_id, []).append(name)
    books = []
    for book_id, book_names in names.items():
        book = Book(id=book_id, tags_json=sorted(book_names))
        books.append(book)
    Book.objects.using(db).bulk_update(books, ["tags_json"], batch_size=BATCH)


class Migration(migrations.Migration):
    dependencies = [
        ("bookstore", "0003_tag_book_tags"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards),
    ]
