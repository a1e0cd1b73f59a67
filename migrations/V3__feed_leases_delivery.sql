-- The event feed, leased outbound items with their delivery results, opt-outs.

-- Writers number events under a transaction-level advisory lock held to commit (see the
-- adapter's sql.rs), so numbers are handed out in commit order: a reader that has seen
-- number N has seen every committed event below N.
CREATE INDEX crm_events_tenant_seq ON crm_events (tenant_id, seq);

-- Retention removed every event up to here; a feed cursor before it has expired.
CREATE TABLE crm_feed_state (
    singleton              boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    events_deleted_through bigint NOT NULL DEFAULT 0
);
INSERT INTO crm_feed_state DEFAULT VALUES;

-- Outbound items are leased to senders and acknowledged. Items of the release before
-- leases were never acknowledged: they are ready, at their first attempt.
ALTER TABLE crm_outbound_queue
    ADD COLUMN followup_id      uuid,
    ADD COLUMN max_attempts     integer,
    ADD COLUMN backoff_ms       integer,
    ADD COLUMN status           text NOT NULL DEFAULT 'ready'
        CHECK (status IN ('ready', 'leased', 'done')),
    ADD COLUMN attempt          integer NOT NULL DEFAULT 0,
    -- When the item can be claimed: ready_at, or the end of its lease; null once done.
    ADD COLUMN available_at     timestamptz,
    ADD COLUMN lease_id         uuid,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN last_ack_lease   uuid,
    ADD COLUMN last_ack_status  text,
    ADD COLUMN finished_at      timestamptz;
UPDATE crm_outbound_queue SET
    followup_id = (item #>> '{context,context_id}')::uuid,
    max_attempts = (item #>> '{retry_policy,max_attempts}')::integer,
    backoff_ms = (item #>> '{retry_policy,backoff_ms}')::integer,
    available_at = created_at;
ALTER TABLE crm_outbound_queue
    ALTER COLUMN followup_id SET NOT NULL,
    ALTER COLUMN max_attempts SET NOT NULL,
    ALTER COLUMN backoff_ms SET NOT NULL;
-- Serves the claim: items not done, in the order they become available.
CREATE INDEX crm_outbound_available
    ON crm_outbound_queue (available_at, seq) WHERE status <> 'done';
-- Serves retention of finished items.
CREATE INDEX crm_outbound_finished
    ON crm_outbound_queue (finished_at) WHERE status = 'done';

-- The recipient's time zone for quiet hours, and what the sender reported.
ALTER TABLE crm_followups
    ADD COLUMN time_zone text,
    ADD COLUMN delivery  jsonb;

CREATE TABLE crm_opt_outs (
    tenant_id  text NOT NULL,
    phone_e164 text NOT NULL,
    reason     text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, phone_e164)
);
