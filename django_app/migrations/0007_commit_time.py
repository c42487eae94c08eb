"""The commit time in every change-stream payload (issue #13: commit-to-client latency).

``ddp_flush()`` (from ``0001_initial``) is replaced by the same function plus one field:
each NOTIFY payload carries ``"t"``, the instant of the flush (just before the commit) in
integer microseconds since the Unix epoch, and the changelog row's ``created_at`` is that
same instant, so a relay that backfills from the changelog measures from the same clock
reading as one that got the notification (``relay.protocol.changestream``). Relays read
payloads without ``t`` as before: the change is compatible in both directions.

Reverse: the function of ``0001_initial`` again.
"""

from django.db import migrations

from relay.protocol.changestream import MAX_PAYLOAD_BYTES


def _flush(with_commit_time: bool) -> str:
    now = "v_now" if with_commit_time else "clock_timestamp()"
    # Microseconds: an integer survives the relay's JSON decoding unchanged (a
    # fractional number would be read as Decimal).
    stamp = (
        """ || ',"t":' || (extract(epoch FROM v_now) * 1000000)::bigint"""
        if with_commit_time
        else ""
    )
    return f"""
CREATE OR REPLACE FUNCTION ddp_flush() RETURNS trigger LANGUAGE plpgsql AS $ddp$
DECLARE
    v_channel text;
    v_changes jsonb;
    v_seq bigint;
    v_epoch text;
    v_head text;
    v_payload text;
    v_now timestamptz;
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
        -- After the counter's row lock: as close to the commit as this trigger gets.
        v_now := clock_timestamp();
        INSERT INTO ddp_changelog (channel, seq, epoch, txid, created_at, changes)
            VALUES (v_channel, v_seq, v_epoch, NEW.txid, {now}, v_changes);
        v_head := '{{"s":' || v_seq || ',"e":' || to_json(v_epoch)::text
            || ',"x":' || NEW.txid{stamp};
        v_payload := v_head || ',"c":' || v_changes::text || '}}';
        IF octet_length(v_payload) > {MAX_PAYLOAD_BYTES} THEN
            v_payload := v_head || ',"r":true}}';
        END IF;
        PERFORM pg_notify(v_channel, v_payload);
    END LOOP;
    RETURN NULL;
END
$ddp$;
"""


SQL = _flush(True)
REVERSE_SQL = _flush(False)


class Migration(migrations.Migration):
    dependencies = [("ddp", "0006_session_trace")]

    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
