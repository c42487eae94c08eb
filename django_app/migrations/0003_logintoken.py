"""Login tokens (``django_app.models.LoginToken``): the credentials of Meteor accounts.

One row per resume token a DDP login handed out and per Django session a DDP session was
authenticated with; only SHA-256 hashes are stored. The revocation trigger on the user
table and the change-stream triggers of this table are generated, not migrated: ``migrate``
installs them afterwards (``django_app.triggers.sync_triggers``), so a swapped user model
gets its trigger too.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

import relay.protocol.alea


class Migration(migrations.Migration):
    dependencies = [
        ("ddp", "0002_parked_session"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="LoginToken",
            fields=[
                (
                    "id",
                    models.CharField(
                        default=relay.protocol.alea.random_id,
                        editable=False,
                        max_length=17,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("hashed_token", models.CharField(editable=False, max_length=44, unique=True)),
                (
                    "kind",
                    models.CharField(
                        choices=[("resume", "resume token"), ("session", "Django session")],
                        default="resume",
                        max_length=7,
                    ),
                ),
                ("created", models.DateTimeField()),
                ("expires", models.DateTimeField(db_index=True)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="ddp_login_tokens",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={"verbose_name": "login token", "db_table": "ddp_login_token"},
        ),
    ]
