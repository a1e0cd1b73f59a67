-- Automatic pause by failure ratio: the policy's window and ratio (in millionths, so that
-- a policy reads back exactly as it was put), set together or not at all.
ALTER TABLE crm_sending_policies
    ADD COLUMN auto_pause_window integer CHECK (auto_pause_window BETWEEN 10 AND 10000),
    ADD COLUMN auto_pause_max_failure_ratio integer
        CHECK (auto_pause_max_failure_ratio BETWEEN 0 AND 1000000),
    ADD CONSTRAINT crm_sending_policies_auto_pause_whole
        CHECK ((auto_pause_window IS NULL) = (auto_pause_max_failure_ratio IS NULL));

-- A campaign's finished deliveries, newest change first: the failure window reads the
-- last few thousand of one campaign when a failure may pause it. Follow-ups without a
-- campaign are left out (no window reads them, and their receipts pay nothing for it).
-- The query's predicate implies this one.
CREATE INDEX crm_followups_finished_deliveries
    ON crm_followups (campaign_id, updated_at DESC, followup_id DESC)
    WHERE campaign_id IS NOT NULL
      AND delivery->>'status' IN ('accepted', 'delivered', 'read', 'failed');
