-- Provider message ids are text: the outbound queue item id of this service, or any id a
-- provider (or the earlier implementation) gave.
ALTER TABLE crm_followups ALTER COLUMN provider_message_id TYPE text
    USING provider_message_id::text;

-- The drain's queue, per lane: one tenant's follow-ups of one campaign (or of none).
-- A drain visits lanes, not rows, so the follow-ups of a paused campaign cost it nothing
-- however many there are. The expression must match the queries' text exactly.
CREATE INDEX crm_followups_lane_due
    ON crm_followups (tenant_id, (coalesce(campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)),
                      schedule_at, followup_id)
    WHERE status = 'pending';
DROP INDEX crm_followups_due;
