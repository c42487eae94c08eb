"""The change-stream tables and the commit-time flush (``relay.protocol.changestream``).

- ``ddp_channel``: one counter row per channel (``seq``, random ``epoch``).
- ``ddp_changelog``: one row per committed transaction and channel; relays backfill from
  it; ``django_app.changes.prune`` deletes rows past ``DDP_CHANGELOG_RETENTION``.
- ``ddp_pending`` (UNLOGGED): the changes of transactions in progress, appended by the
  per-collection triggers that ``django_app.triggers`` generates (after ``migrate``). Rows
  live only until their own transaction commits (or never become visible at all).
- ``ddp_flush()``: a DEFERRABLE INITIALLY DEFERRED constraint trigger, armed by the first
  pending row of a transaction and channel, so it runs once per channel just before the
  commit: for each channel of the transaction, in name order (no deadlock between two
  writers), it takes the pending rows in order, bumps the channel's ``seq`` (the row lock
  is held until commit, so sequences follow commit order), writes one changelog row and
  sends one NOTIFY (inline changes up to 7900 bytes, else a reference to the changelog).
"""

from django.db import migrations, models

from relay.protocol.changestream import MAX_PAYLOAD_BYTES

SQL = f"""
CREATE TABLE ddp_channel (
    channel text PRIMARY KEY,
    seq bigint NOT NULL,
    epoch text NOT NULL
) WITH (fillfactor = 50);

CREATE TABLE ddp_changelog (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    seq bigint NOT NULL,
    epoch text NOT NULL,
    txid bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    changes jsonb NOT NULL,
    CONSTRAINT ddp_changelog_channel_seq UNIQUE (channel, seq)
);
CREATE INDEX ddp_changelog_txid ON ddp_changelog (txid);
-- BRIN: rows arrive in created_at order; almost free to maintain, enough for prune.
CREATE INDEX ddp_changelog_created_at ON ddp_changelog USING brin (created_at);

CREATE UNLOGGED TABLE ddp_pending (
    id bigserial NOT NULL,
    txid bigint NOT NULL DEFAULT txid_current(),
    channel text NOT NULL,
    change jsonb NOT NULL,
    armed boolean NOT NULL DEFAULT false
);
CREATE INDEX ddp_pending_tx ON ddp_pending (txid, channel, id);

CREATE FUNCTION ddp_flush() RETURNS trigger LANGUAGE plpgsql AS $ddp$
DECLARE
    v_channel text;
    v_changes jsonb;
    v_seq bigint;
    v_epoch text;
    v_head text;
    v_payload text;
BEGIN
    -- All channels of the transaction at once, in name order; a later firing of the
    -- same transaction finds nothing left.
    FOR v_channel, v_changes IN
        WITH taken AS (
            DELETE FROM ddp_pending WHERE txid = NEW.txid RETURNING channel, id, change
        )
        SELECT channel, jsonb_agg(change ORDER BY id) FROM taken
        GROUP BY channel ORDER BY channel
    LOOP
        UPDATE ddp_channel SET seq = seq + 1 WHERE channel = v_channel
            RETURNING seq, epoch INTO v_seq, v_epoch;
        IF NOT FOUND THEN
            INSERT INTO ddp_channel AS c (channel, seq, epoch)
                VALUES (v_channel, 1,
                        substr(md5(random()::text || clock_timestamp()::text), 1, 16))
                ON CONFLICT (channel) DO UPDATE SET seq = c.seq + 1
                RETURNING seq, epoch INTO v_seq, v_epoch;
        END IF;
        INSERT INTO ddp_changelog (channel, seq, epoch, txid, changes)
            VALUES (v_channel, v_seq, v_epoch, NEW.txid, v_changes);
        v_head := '{{"s":' || v_seq || ',"e":' || to_json(v_epoch)::text
            || ',"x":' || NEW.txid;
        v_payload := v_head || ',"c":' || v_changes::text || '}}';
        IF octet_length(v_payload) > {MAX_PAYLOAD_BYTES} THEN
            v_payload := v_head || ',"r":true}}';
        END IF;
        PERFORM pg_notify(v_channel, v_payload);
    END LOOP;
    RETURN NULL;
END
$ddp$;

CREATE CONSTRAINT TRIGGER ddp_flush AFTER INSERT ON ddp_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.armed) EXECUTE FUNCTION ddp_flush();
"""

REVERSE_SQL = """
DO $ddp$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.proname LIKE 'ddp\\_g\\_%' AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE 'DROP FUNCTION ' || f || ' CASCADE';
    END LOOP;
END
$ddp$;
DROP TABLE ddp_pending;
DROP FUNCTION ddp_flush();
DROP TABLE ddp_changelog;
DROP TABLE ddp_channel;
"""


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.RunSQL(SQL, REVERSE_SQL),
        migrations.CreateModel(
            name="ChannelPosition",
            fields=[
                ("channel", models.TextField(primary_key=True, serialize=False)),
                ("seq", models.BigIntegerField()),
                ("epoch", models.TextField()),
            ],
            options={"db_table": "ddp_channel", "managed": False},
        ),
        migrations.CreateModel(
            name="ChangelogEntry",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("channel", models.TextField()),
                ("seq", models.BigIntegerField()),
                ("epoch", models.TextField()),
                ("txid", models.BigIntegerField()),
                ("created_at", models.DateTimeField()),
                ("changes", models.JSONField()),
            ],
            options={"db_table": "ddp_changelog", "managed": False},
        ),
    ]
