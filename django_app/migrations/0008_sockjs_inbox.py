"""The inbox of SockJS HTTP sessions (``relay.httpsession.inbox``): an ``xhr_send`` that
lands on a relay process other than the one holding its session leaves its messages
here, and the holder takes them in order (a NOTIFY on ``ddp_relay_sockjs`` rings it).

Written and read by the relays only (their own connection). Rows are taken (deleted) as
they are delivered; the relays' housekeeping deletes what no session took.
"""

from django.db import migrations

SQL = """
CREATE TABLE ddp_sockjs_inbox (
    id bigserial PRIMARY KEY,
    session_key text NOT NULL,
    messages text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ddp_sockjs_inbox_session ON ddp_sockjs_inbox (session_key, id);
CREATE INDEX ddp_sockjs_inbox_created_at ON ddp_sockjs_inbox (created_at);
"""

REVERSE_SQL = "DROP TABLE IF EXISTS ddp_sockjs_inbox;"


class Migration(migrations.Migration):
    dependencies = [("ddp", "0007_commit_time")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
