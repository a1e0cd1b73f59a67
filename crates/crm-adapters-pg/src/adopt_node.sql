-- Brings the two tables of the Node.js service to what V1__crm_tables.sql makes, keeping
-- every row, inside the adoption's transaction (after every row passed the rules).
-- The service may still write during a rolling switch: what it leaves out gets a
-- default (revision 1, a fresh correlation and trace), so its inserts keep working.

ALTER TABLE crm_campaigns ADD COLUMN revision bigint NOT NULL DEFAULT 1;
-- The API serves milliseconds, and list cursors compare them: stored values must agree.
UPDATE crm_campaigns SET
    scheduled_at = date_trunc('milliseconds', scheduled_at),
    created_at = date_trunc('milliseconds', created_at),
    updated_at = date_trunc('milliseconds', updated_at);
ALTER INDEX IF EXISTS crm_campaigns_tenant_external_key_ux RENAME TO crm_campaigns_tenant_external_key;
CREATE UNIQUE INDEX IF NOT EXISTS crm_campaigns_tenant_external_key
    ON crm_campaigns (tenant_id, external_key) WHERE external_key IS NOT NULL;
DROP INDEX IF EXISTS crm_campaigns_tenant_state_idx;
CREATE INDEX crm_campaigns_tenant_created
    ON crm_campaigns (tenant_id, created_at, campaign_id);

UPDATE crm_followups SET
    correlation_id = coalesce(correlation_id, gen_random_uuid()),
    trace_id = coalesce(trace_id, replace(gen_random_uuid()::text, '-', '')),
    schedule_at = date_trunc('milliseconds', schedule_at),
    created_at = date_trunc('milliseconds', created_at),
    updated_at = date_trunc('milliseconds', updated_at);
ALTER TABLE crm_followups
    ALTER COLUMN correlation_id SET DEFAULT gen_random_uuid(),
    ALTER COLUMN correlation_id SET NOT NULL,
    ALTER COLUMN trace_id SET DEFAULT replace(gen_random_uuid()::text, '-', ''),
    ALTER COLUMN trace_id SET NOT NULL,
    ADD CONSTRAINT crm_followups_status_check CHECK (status IN ('pending', 'sent', 'failed')),
    ADD CONSTRAINT crm_followups_campaign_id_fkey
        FOREIGN KEY (campaign_id) REFERENCES crm_campaigns (campaign_id);
ALTER INDEX IF EXISTS crm_followups_tenant_external_key_ux RENAME TO crm_followups_tenant_external_key;
CREATE UNIQUE INDEX IF NOT EXISTS crm_followups_tenant_external_key
    ON crm_followups (tenant_id, external_key) WHERE external_key IS NOT NULL;
DROP INDEX IF EXISTS crm_followups_tenant_schedule_idx;
CREATE INDEX crm_followups_tenant_created
    ON crm_followups (tenant_id, created_at, followup_id);
CREATE INDEX crm_followups_due
    ON crm_followups (schedule_at, followup_id) WHERE status = 'pending';
CREATE INDEX crm_followups_campaign
    ON crm_followups (campaign_id) WHERE campaign_id IS NOT NULL;

-- The tables the Node.js service never had, as V1 makes them.
CREATE TABLE crm_events (
    seq            bigserial PRIMARY KEY,
    event_id       uuid NOT NULL UNIQUE,
    tenant_id      text NOT NULL,
    name           text NOT NULL,
    correlation_id uuid NOT NULL,
    emitted_at     timestamptz NOT NULL,
    envelope       jsonb NOT NULL
);
CREATE INDEX crm_events_correlation ON crm_events (correlation_id, seq);

CREATE TABLE crm_outbound_queue (
    seq             bigserial PRIMARY KEY,
    queue_item_id   uuid NOT NULL UNIQUE,
    tenant_id       text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    item            jsonb NOT NULL,
    created_at      timestamptz NOT NULL
);
