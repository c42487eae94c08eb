"""Presence (issue #11): who is present on a topic, held by subscriptions, leased per worker.

``ddp_presence`` is published (its triggers come from ``sync_triggers`` after migrate, as
for every registered collection); ``ddp_presence_hold`` and ``ddp_presence_lease`` are
private bookkeeping (``django_app.presence``).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("ddp", "0004_parked_session_compact")]

    operations = [
        migrations.CreateModel(
            name="Presence",
            fields=[
                (
                    "id",
                    models.CharField(
                        editable=False, max_length=24, primary_key=True, serialize=False
                    ),
                ),
                ("topic", models.CharField(db_index=True, max_length=200)),
                ("user_id", models.CharField(max_length=64, null=True)),
                ("since", models.DateTimeField()),
            ],
            options={"db_table": "ddp_presence"},
        ),
        migrations.CreateModel(
            name="PresenceHold",
            fields=[
                (
                    "token",
                    models.CharField(
                        editable=False, max_length=24, primary_key=True, serialize=False
                    ),
                ),
                ("presence_id", models.CharField(db_index=True, max_length=24)),
                ("owner", models.CharField(db_index=True, max_length=24)),
            ],
            options={"db_table": "ddp_presence_hold"},
        ),
        migrations.CreateModel(
            name="PresenceLease",
            fields=[
                (
                    "owner",
                    models.CharField(
                        editable=False, max_length=24, primary_key=True, serialize=False
                    ),
                ),
                ("expires_at", models.DateTimeField(db_index=True)),
            ],
            options={"db_table": "ddp_presence_lease"},
        ),
    ]
