-- Every filter the list endpoints offer is served by an index in key order: a page reads
-- its rows and no more, however many the tenant has. Each index is paid for by every
-- write of the rows it holds (a drain's status change touches them all), so the
-- campaign indexes hold only follow-ups that have a campaign, and nothing no query
-- reads is indexed.
CREATE INDEX crm_followups_tenant_status_created
    ON crm_followups (tenant_id, status, created_at, followup_id);
CREATE INDEX crm_followups_tenant_campaign_created
    ON crm_followups (tenant_id, campaign_id, created_at, followup_id)
    WHERE campaign_id IS NOT NULL;
CREATE INDEX crm_followups_tenant_campaign_status_created
    ON crm_followups (tenant_id, campaign_id, status, created_at, followup_id)
    WHERE campaign_id IS NOT NULL;
-- Replaced by the index above, whose leading columns serve what it served.
DROP INDEX crm_followups_campaign;
CREATE INDEX crm_campaigns_tenant_state_created
    ON crm_campaigns (tenant_id, state, created_at, campaign_id);
-- No query looks an event up by its id; ids are fresh v4 uuids, made once per event.
ALTER TABLE crm_events DROP CONSTRAINT crm_events_event_id_key;
