-- WhatsApp's own limits: a follow-up's sender and when it was sent, the policy fields of
-- each limit, and the ledger of sends the limits are counted from.

ALTER TABLE crm_followups ADD COLUMN sender text, ADD COLUMN sent_at timestamptz;
ALTER TABLE crm_outbound_queue ADD COLUMN sender text;

ALTER TABLE crm_sending_policies
    ADD COLUMN max_per_second_per_sender integer
        CHECK (max_per_second_per_sender BETWEEN 1 AND 1000),
    ADD COLUMN daily_recipient_limit integer
        CHECK (daily_recipient_limit BETWEEN 1 AND 10000000),
    ADD COLUMN recipient_min_interval_ms integer
        CHECK (recipient_min_interval_ms BETWEEN 1 AND 86400000),
    ADD COLUMN recipient_daily_cap integer
        CHECK (recipient_daily_cap BETWEEN 1 AND 1000);

-- The ledger of sends: one row per follow-up marked sent, written in the drain's commit,
-- kept for the longest window a limit looks back over (a day) and then deleted by
-- retention. Rates count a tenant's (and a sender's) last second; a recipient's history
-- is read for the recipients a drain is about to claim.
CREATE TABLE crm_send_ledger (
    tenant_id   text NOT NULL,
    sender      text,
    phone_e164  text NOT NULL,
    sent_at     timestamptz NOT NULL,
    followup_id uuid NOT NULL
);
CREATE INDEX crm_send_ledger_tenant_sent ON crm_send_ledger (tenant_id, sent_at)
    INCLUDE (sender, phone_e164);
CREATE INDEX crm_send_ledger_recipient ON crm_send_ledger (tenant_id, phone_e164, sent_at);
-- Retention finds the expired sends by time. A btree, not a block range index: the
-- windows a claim moves over (the sends of the last moments) may be read from it too, and
-- a block range index would hand them over with every other send of its blocks.
CREATE INDEX crm_send_ledger_sent ON crm_send_ledger (sent_at);

-- The distinct recipients of a tenant whose last send is after `cutoff`: a running
-- count, so that the day's budget is read without reading the day's sends. Every drain
-- adds the recipients it newly counts (after the event lock, so the count is exact);
-- a drain that needs the budget moves `cutoff` up to a day ago and takes off the
-- recipients whose last send it passed. A tenant gets its row the first time its budget
-- is needed.
CREATE TABLE crm_send_budgets (
    tenant_id text PRIMARY KEY,
    cutoff    timestamptz NOT NULL,
    counted   bigint NOT NULL
);

-- The sends of each tenant's rate window, per sender ('' for none): the ledger's sends
-- after `since`, a running count moved along with the window, so that a claim reads a few
-- rows instead of a second of sends. A drain that needs the rate moves `since` up to a
-- second ago and takes off the sends it passes; every drain adds its sends after the event
-- lock. A tenant gets its rows the first time its rate is needed.
CREATE TABLE crm_send_windows (
    tenant_id text PRIMARY KEY,
    since     timestamptz NOT NULL
);
CREATE TABLE crm_send_rates (
    tenant_id text NOT NULL,
    sender    text NOT NULL,
    sends     bigint NOT NULL,
    PRIMARY KEY (tenant_id, sender)
);

-- The follow-ups sent in the last day, as well as can be told (when they were last
-- changed), so that the limits count them from the start.
INSERT INTO crm_send_ledger (tenant_id, sender, phone_e164, sent_at, followup_id)
SELECT tenant_id, NULL, phone_e164, updated_at, followup_id FROM crm_followups
WHERE status = 'sent' AND updated_at > now() - interval '1 day';

-- The ledger counts what the send log counted, and more.
DROP TABLE crm_send_log;
