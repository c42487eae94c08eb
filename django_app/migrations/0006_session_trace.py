"""Session traces (issue #13): a trace switched on for a session or a user, and its frames.

``ddp_session_trace`` is published (its triggers come from ``sync_triggers`` after
migrate, as for every registered collection: relays re-read the trace orders when it
changes); ``ddp_trace_chunk`` holds the frames relays recorded, in batches
(``django_app.tracing``).
"""

import django.db.models.deletion
from django.db import migrations, models

import relay.protocol.alea


class Migration(migrations.Migration):
    dependencies = [("ddp", "0005_presence")]

    operations = [
        migrations.CreateModel(
            name="SessionTrace",
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
                (
                    "session_id",
                    models.CharField(blank=True, db_index=True, max_length=64, null=True),
                ),
                ("user_id", models.CharField(blank=True, db_index=True, max_length=64, null=True)),
                ("until", models.DateTimeField(db_index=True)),
                ("max_frames", models.PositiveIntegerField(default=2000)),
                ("max_chars", models.PositiveIntegerField(default=1000000)),
                ("frame_chars", models.PositiveIntegerField(default=4096)),
                ("max_total_chars", models.PositiveBigIntegerField(default=20000000)),
                ("created", models.DateTimeField(auto_now_add=True)),
                ("created_by", models.CharField(blank=True, default="", max_length=150)),
                ("note", models.TextField(blank=True, default="")),
            ],
            options={
                "verbose_name": "session trace",
                "db_table": "ddp_session_trace",
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(
                            ("session_id__isnull", False),
                            ("user_id__isnull", False),
                            _connector="OR",
                        ),
                        name="ddp_session_trace_has_target",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="TraceChunk",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("relay", models.CharField(max_length=255)),
                ("session_id", models.CharField(max_length=64)),
                ("first", models.PositiveIntegerField()),
                ("frames", models.JSONField()),
                ("chars", models.PositiveIntegerField()),
                ("stats", models.JSONField(default=dict)),
                ("created", models.DateTimeField(auto_now_add=True)),
                (
                    "trace",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="chunks",
                        to="ddp.sessiontrace",
                    ),
                ),
            ],
            options={
                "db_table": "ddp_trace_chunk",
                "indexes": [
                    models.Index(
                        fields=["trace", "session_id", "first"], name="ddp_trace_chunk_order"
                    )
                ],
            },
        ),
    ]
