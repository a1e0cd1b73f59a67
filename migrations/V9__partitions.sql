-- Retention by partitions: the event log and the finished outbound items live in one
-- partition per UTC day, and retention detaches and drops whole days instead of deleting
-- rows (no dead rows left for VACUUM). The service creates each day's partition ahead of
-- time (`crm_day_partition`, called after migrating and by every retention pass) and on demand
-- when a row arrives for a day that has none.
--
-- This migration rewrites both tables once, under the migration lock and in one
-- transaction: writers wait for it (see the README for how long it takes).

-- The end of the newest day retention dropped: an event emitted before it would land in
-- a day the feed has moved past, so it is refused instead (see `crm_day_partition`).
ALTER TABLE crm_feed_state ADD COLUMN events_dropped_before timestamptz;

-- The day partition of `parent` holding `at`: created (and attached) unless it exists.
-- Both maintenance functions take one lock per schema, so replicas never race on the
-- catalog and a partition is never created while retention drops its day.
CREATE FUNCTION crm_day_partition(parent text, at timestamptz) RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    day     date := (at AT TIME ZONE 'UTC')::date;
    child   text := parent || '_p' || to_char(day, 'YYYYMMDD');
    dropped timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(20261206, hashtext(current_schema()));
    IF to_regclass(format('%I.%I', current_schema(), child)) IS NOT NULL THEN
        RETURN child;
    END IF;
    IF parent = 'crm_events' THEN
        SELECT events_dropped_before INTO dropped FROM crm_feed_state;
        IF at < dropped THEN
            RAISE EXCEPTION 'an event emitted at % is older than the events retention dropped (before %): is this host''s clock behind?', at, dropped;
        END IF;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', child, parent);
    -- Attaching an empty table takes a lock that lets reads and writes of the parent go on.
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        parent, child, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    RETURN child;
END $fn$;

-- Detaches and drops the day partitions of `parent` that end at or before `cutoff`, oldest
-- first, at most `most` of them; returns how many rows they held (counted up to 100,000
-- per partition, the planner's estimate above, so the time taken does not grow with them),
-- or 0 at once when another replica is at it. Each day is detached first: detaching waits
-- for every writer of the table, so what is read of the day afterwards is all it holds.
-- Dropping events moves the feed's start past the highest number dropped: the feed is
-- read by number, so a cursor is either past every dropped event or expired.
CREATE FUNCTION crm_drop_partitions(parent text, cutoff timestamptz, most integer)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    child   text;
    ends    timestamptz;
    counted bigint;
    dropped bigint := 0;
    last    bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(20261206, hashtext(current_schema())) THEN
        RETURN 0;
    END IF;
    FOR child, ends IN
        SELECT c.relname,
               (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(format('%I.%I', current_schema(), parent))
          -- Days this function made; a table attached by hand is left to whoever did.
          AND c.relname = parent || '_p' || right(c.relname, 8)
          AND right(c.relname, 8) ~ '^[0-9]{8}$'
        ORDER BY c.relname LIMIT most
    LOOP
        EXIT WHEN ends > cutoff;
        EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', parent, child);
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %I LIMIT 100000) s', child)
            INTO counted;
        IF counted = 100000 THEN
            SELECT greatest(counted, reltuples::bigint) INTO counted
            FROM pg_class WHERE oid = to_regclass(format('%I.%I', current_schema(), child));
        END IF;
        IF parent = 'crm_events' THEN
            EXECUTE format('SELECT max(seq) FROM %I', child) INTO last;
            UPDATE crm_feed_state SET
                events_deleted_through = greatest(events_deleted_through, coalesce(last, 0)),
                events_dropped_before = greatest(events_dropped_before, ends);
        END IF;
        EXECUTE format('DROP TABLE %I', child);
        dropped := dropped + counted;
    END LOOP;
    RETURN dropped;
END $fn$;

-- The event log, partitioned by when each event was emitted. Numbers keep coming from the
-- same sequence; a number is unique by the sequence, the key adds the day as partitioning
-- requires.
ALTER TABLE crm_events RENAME TO crm_events_unpartitioned;
ALTER INDEX crm_events_pkey RENAME TO crm_events_unpartitioned_pkey;
ALTER INDEX crm_events_correlation RENAME TO crm_events_unpartitioned_correlation;
ALTER INDEX crm_events_tenant_seq RENAME TO crm_events_unpartitioned_tenant_seq;
CREATE TABLE crm_events (
    seq            bigint NOT NULL DEFAULT nextval('crm_events_seq_seq'),
    event_id       uuid NOT NULL,
    tenant_id      text NOT NULL,
    name           text NOT NULL,
    correlation_id uuid NOT NULL,
    emitted_at     timestamptz NOT NULL,
    envelope       jsonb NOT NULL,
    PRIMARY KEY (seq, emitted_at)
) PARTITION BY RANGE (emitted_at);
ALTER SEQUENCE crm_events_seq_seq OWNED BY crm_events.seq;
CREATE INDEX crm_events_correlation ON crm_events (correlation_id, seq);
CREATE INDEX crm_events_tenant_seq ON crm_events (tenant_id, seq);

SELECT crm_day_partition('crm_events', day)
FROM (SELECT DISTINCT date_trunc('day', emitted_at, 'UTC') AS day
      FROM crm_events_unpartitioned) days;
INSERT INTO crm_events (seq, event_id, tenant_id, name, correlation_id, emitted_at, envelope)
SELECT seq, event_id, tenant_id, name, correlation_id, emitted_at, envelope
FROM crm_events_unpartitioned;
DROP TABLE crm_events_unpartitioned;

-- Finished outbound items move out of the queue, in the commit that finishes them, into a
-- table partitioned by when they finished. The queue keeps what may still be claimed or
-- acknowledged. A column added to one of the two tables later must be added to both.
CREATE TABLE crm_outbound_done (LIKE crm_outbound_queue INCLUDING DEFAULTS)
    PARTITION BY RANGE (finished_at);
ALTER TABLE crm_outbound_done ALTER COLUMN finished_at SET NOT NULL;
-- Serves single reads and acks of finished items, and the list of every item.
CREATE INDEX crm_outbound_done_item ON crm_outbound_done (queue_item_id);
CREATE INDEX crm_outbound_done_seq ON crm_outbound_done (seq);

SELECT crm_day_partition('crm_outbound_done', day)
FROM (SELECT DISTINCT date_trunc('day', finished_at, 'UTC') AS day
      FROM crm_outbound_queue WHERE status = 'done' AND finished_at IS NOT NULL) days;
WITH moved AS (
    DELETE FROM crm_outbound_queue
    WHERE status = 'done' AND finished_at IS NOT NULL
    RETURNING *
)
INSERT INTO crm_outbound_done SELECT * FROM moved;
-- `crm_outbound_finished` stays: it finds items a replica of the release before finishes
-- in place during a rolling upgrade, which every retention pass moves to their day.

-- Every item, waiting or finished, for reads that do not care which.
CREATE VIEW crm_outbound_items AS
    SELECT * FROM crm_outbound_queue
    UNION ALL
    SELECT * FROM crm_outbound_done;
