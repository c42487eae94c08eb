"""Tags become rows: a ``Tag`` model, and ``Book.tags`` a many-to-many to it.

First of three steps (schema, data, schema), each its own transaction: PostgreSQL refuses
to alter a table with deferred constraint checks pending, which the copy in 0004 leaves.
The JSON column is renamed ``tags_json`` here (0004 copies it into the new relation, 0005
drops it), so the relation can take the name ``tags`` at once.
"""

from django.db import migrations, models

import django_app.fields


class Migration(migrations.Migration):
    dependencies = [
        ("bookstore", "0002_favorite"),
    ]

    operations = [
        migrations.CreateModel(
            name="Tag",
            fields=[
                ("id", django_app.fields.MeteorIdField(primary_key=True, serialize=False)),
                ("name", models.CharField(max_length=100, unique=True)),
            ],
            options={
                "ordering": ["name"],
            },
        ),
        migrations.RenameField(model_name="book", old_name="tags", new_name="tags_json"),
        migrations.AddField(
            model_name="book",
            name="tags",
            field=models.ManyToManyField(blank=True, related_name="books", to="bookstore.tag"),
        ),
    ]
