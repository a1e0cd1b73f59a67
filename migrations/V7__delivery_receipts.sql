-- Delivery receipts: what the provider reports after it accepted a message.
-- A receipt names the message by the id the provider gave it, which the accepted ack
-- recorded in the follow-up's delivery; this index finds it. Deliveries that recorded no
-- provider id (retries, failed acks) are not in it.
CREATE INDEX crm_followups_provider_message
    ON crm_followups ((delivery->>'provider_message_id'))
    WHERE delivery->>'provider_message_id' IS NOT NULL;

-- A campaign's deliveries by what the receipts said: delivered and read join accepted,
-- retrying and failed (each follow-up counts once, for where its delivery is now).
ALTER TABLE crm_campaign_stats
    ADD COLUMN delivery_delivered bigint NOT NULL DEFAULT 0,
    ADD COLUMN delivery_read      bigint NOT NULL DEFAULT 0;
