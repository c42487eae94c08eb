"""Parked DDP sessions (``relay.resume.parked``): where a relay leaves a session whose
socket went away, so that any relay can resume it inside the resume window.

Written and read by the relays only (their own connection); ``expires_at`` bounds the
window and the relays' housekeeping deletes what expired.
"""

from django.db import migrations

SQL = """
CREATE TABLE ddp_parked_session (
    session_id text PRIMARY KEY,
    state text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ddp_parked_session_expires_at ON ddp_parked_session (expires_at);
"""

REVERSE_SQL = "DROP TABLE IF EXISTS ddp_parked_session;"


class Migration(migrations.Migration):
    dependencies = [("ddp", "0001_initial")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
