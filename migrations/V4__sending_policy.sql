-- Sending policy: per-tenant rate and quiet hours, the sends each paced tenant's rate
-- window has used, per-campaign counts, and lanes that know the recipient's time zone.

CREATE TABLE crm_sending_policies (
    tenant_id       text PRIMARY KEY,
    max_per_second  integer CHECK (max_per_second BETWEEN 1 AND 100000),
    quiet_start     text,
    quiet_end       text,
    quiet_time_zone text,
    updated_at      timestamptz NOT NULL,
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL)
           AND (quiet_start IS NULL) = (quiet_time_zone IS NULL))
);

-- Follow-ups each drain claimed for a paced tenant, and when; a drain locks the tenant,
-- sums the window and adds its own row before it commits.
CREATE TABLE crm_send_log (
    tenant_id  text NOT NULL,
    sent_at    timestamptz NOT NULL,
    claimed    integer NOT NULL
);
CREATE INDEX crm_send_log_tenant_sent ON crm_send_log (tenant_id, sent_at);

-- The counts of each campaign's follow-ups, moved by every change of one.
CREATE TABLE crm_campaign_stats (
    campaign_id       uuid PRIMARY KEY REFERENCES crm_campaigns (campaign_id),
    pending           bigint NOT NULL DEFAULT 0,
    sent              bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    delivery_accepted bigint NOT NULL DEFAULT 0,
    delivery_retrying bigint NOT NULL DEFAULT 0,
    delivery_failed   bigint NOT NULL DEFAULT 0
);
INSERT INTO crm_campaign_stats
SELECT campaign_id,
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'sent'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE delivery->>'status' = 'accepted'),
       count(*) FILTER (WHERE delivery->>'status' = 'retrying'),
       count(*) FILTER (WHERE delivery->>'status' = 'failed')
FROM crm_followups WHERE campaign_id IS NOT NULL GROUP BY campaign_id;

-- Lanes gain the recipient's time zone, so quiet hours close a lane without reading it.
-- The expressions must match the queries' text exactly.
CREATE INDEX crm_followups_lane_zone_due
    ON crm_followups (tenant_id, (coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)),
                      (coalesce(time_zone, '')), schedule_at, followup_id)
    WHERE status = 'pending';
DROP INDEX crm_followups_lane_due;
