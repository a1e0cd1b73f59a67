-- Every filter the list endpoints offer is served by an index in key order: a page reads
-- its rows and no more, however many the tenant has.
CREATE INDEX crm_followups_tenant_status_created
    ON crm_followups (tenant_id, status, created_at, followup_id);
CREATE INDEX crm_followups_tenant_campaign_created
    ON crm_followups (tenant_id, campaign_id, created_at, followup_id);
CREATE INDEX crm_followups_tenant_campaign_status_created
    ON crm_followups (tenant_id, campaign_id, status, created_at, followup_id);
-- Replaced by the index above, whose leading columns serve what it served.
DROP INDEX crm_followups_campaign;
CREATE INDEX crm_campaigns_tenant_state_created
    ON crm_campaigns (tenant_id, state, created_at, campaign_id);
