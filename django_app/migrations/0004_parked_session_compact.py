"""Parked sessions are stored compressed, with their owner and size (issue 9's probe: 50
connect/subscribe/drop cycles grew the table by 170 MB in a minute).

``state`` becomes ``bytea`` (``relay.resume.parked.pack``: zlib-compressed JSON); ``owner``
is the client address that parked it and ``size`` its stored bytes, so a park is refused
once that address's live rows would pass ``RELAY_RESUME_BYTES_PER_ADDRESS``. Rows of the
old text format are not resumable by this code anyway (format version 2): they are
dropped rather than converted.
"""

from django.db import migrations

SQL = """
DELETE FROM ddp_parked_session;
ALTER TABLE ddp_parked_session
    ALTER COLUMN state TYPE bytea USING convert_to(state, 'UTF8'),
    ADD COLUMN owner text NOT NULL DEFAULT '',
    ADD COLUMN size integer NOT NULL DEFAULT 0;
CREATE INDEX ddp_parked_session_owner ON ddp_parked_session (owner, expires_at);
"""

REVERSE_SQL = """
DELETE FROM ddp_parked_session;
DROP INDEX IF EXISTS ddp_parked_session_owner;
ALTER TABLE ddp_parked_session
    DROP COLUMN size,
    DROP COLUMN owner,
    ALTER COLUMN state TYPE text USING convert_from(state, 'UTF8');
"""


class Migration(migrations.Migration):
    dependencies = [("ddp", "0003_logintoken")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
