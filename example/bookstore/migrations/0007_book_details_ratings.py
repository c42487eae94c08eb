"""``Book.details`` (JSON) and ``Book.ratings`` (integers), for the Meteor mutators'
modifiers. Their columns also get database defaults (``{}`` and an empty array), so rows
inserted by raw SQL or other programs, which the change stream publishes like any, need
not name them."""

import django.contrib.postgres.fields
import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bookstore", "0006_notice"),
    ]

    operations = [
        migrations.AddField(
            model_name="book",
            name="details",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="book",
            name="ratings",
            field=django.contrib.postgres.fields.ArrayField(
                base_field=models.IntegerField(
                    validators=[
                        django.core.validators.MinValueValidator(1),
                        django.core.validators.MaxValueValidator(5),
                    ]
                ),
                blank=True,
                default=list,
                size=None,
            ),
        ),
        migrations.RunSQL(
            "ALTER TABLE bookstore_book ALTER COLUMN details SET DEFAULT '{}'::jsonb,"
            " ALTER COLUMN ratings SET DEFAULT '{}'::integer[]",
            "ALTER TABLE bookstore_book ALTER COLUMN details DROP DEFAULT,"
            " ALTER COLUMN ratings DROP DEFAULT",
        ),
    ]
