"""Drop the JSON tags column, copied into ``Book.tags`` by 0004.

Reversible: going back re-adds it (empty lists), and 0004's reverse fills it from the
relation.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("bookstore", "0004_book_tags_data"),
    ]

    operations = [
        migrations.RemoveField(model_name="book", name="tags_json"),
    ]
