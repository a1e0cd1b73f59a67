-- Campaigns, follow-ups, the event log and the outbound queue of the CRM service.
-- Forward-only: a later change is a new V<n>__<name>.sql file, never an edit of this one.

CREATE TABLE crm_campaigns (
    campaign_id      uuid PRIMARY KEY,
    tenant_id        text NOT NULL,
    external_key     text,
    name             text NOT NULL,
    channel          text NOT NULL,
    audience_segment text,
    state            text NOT NULL,
    scheduled_at     timestamptz,
    metadata_json    jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Grows by one with every change; an update names the revision it was decided on.
    revision         bigint NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

CREATE UNIQUE INDEX crm_campaigns_tenant_external_key
    ON crm_campaigns (tenant_id, external_key) WHERE external_key IS NOT NULL;
-- Serves the list: one tenant, oldest first, keyset pagination.
CREATE INDEX crm_campaigns_tenant_created
    ON crm_campaigns (tenant_id, created_at, campaign_id);

CREATE TABLE crm_followups (
    followup_id         uuid PRIMARY KEY,
    tenant_id           text NOT NULL,
    campaign_id         uuid REFERENCES crm_campaigns (campaign_id),
    external_key        text,
    lead_id             uuid,
    customer_id         uuid,
    phone_e164          text NOT NULL,
    message             text NOT NULL,
    schedule_at         timestamptz NOT NULL,
    channel             text NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    provider_message_id uuid,
    last_error_code     text,
    last_error_message  text,
    metadata_json       jsonb NOT NULL DEFAULT '{}'::jsonb,
    correlation_id      uuid NOT NULL,
    trace_id            text NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

CREATE UNIQUE INDEX crm_followups_tenant_external_key
    ON crm_followups (tenant_id, external_key) WHERE external_key IS NOT NULL;
CREATE INDEX crm_followups_tenant_created
    ON crm_followups (tenant_id, created_at, followup_id);
-- Serves the drain: only pending rows, in due order.
CREATE INDEX crm_followups_due
    ON crm_followups (schedule_at, followup_id) WHERE status = 'pending';
CREATE INDEX crm_followups_campaign
    ON crm_followups (campaign_id) WHERE campaign_id IS NOT NULL;

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
    -- followup:<followup_id>; unique, so a follow-up can be enqueued at most once.
    idempotency_key text NOT NULL UNIQUE,
    item            jsonb NOT NULL,
    created_at      timestamptz NOT NULL
);
