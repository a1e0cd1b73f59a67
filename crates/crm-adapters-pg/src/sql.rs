//! Query text. Every statement names its columns; none is built from user input.

// Every write below is one statement: the change and its events (given as parallel
// arrays: event id, tenant, name, correlation id, emitted_at, envelope) commit together
// or not at all, in a single round trip. The events are written only when the change
// wrote a row.

/// `ON CONFLICT DO NOTHING` without a target covers the primary key and the
/// `(tenant_id, external_key)` index alike; the caller then finds out which one it was.
pub const CREATE_CAMPAIGN: &str = "WITH changed AS (INSERT INTO crm_campaigns (campaign_id, \
    tenant_id, external_key, name, channel, audience_segment, state, scheduled_at, \
    metadata_json, revision, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
    $9, $10, $11, $12) ON CONFLICT DO NOTHING RETURNING 1), \
    events AS (INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, emitted_at, \
    envelope) SELECT * FROM unnest($13::uuid[], $14::text[], $15::text[], $16::uuid[], \
    $17::timestamptz[], $18::jsonb[]) WHERE EXISTS (SELECT 1 FROM changed)) \
    SELECT count(*) FROM changed";

pub const SELECT_CAMPAIGN_BY_ID: &str = "SELECT campaign_id, tenant_id, external_key, name, \
    channel, audience_segment, state, scheduled_at, metadata_json, revision, created_at, \
    updated_at FROM crm_campaigns WHERE campaign_id = $1";

pub const SELECT_CAMPAIGN_BY_KEY: &str = "SELECT campaign_id, tenant_id, external_key, name, \
    channel, audience_segment, state, scheduled_at, metadata_json, revision, created_at, \
    updated_at FROM crm_campaigns WHERE tenant_id = $1 AND external_key = $2";

/// Applies a change only if the stored revision is the one it was decided on.
pub const UPDATE_CAMPAIGN: &str = "WITH changed AS (UPDATE crm_campaigns SET external_key = $3, \
    name = $4, channel = $5, audience_segment = $6, state = $7, scheduled_at = $8, \
    metadata_json = $9, revision = $10::bigint, updated_at = $11 WHERE campaign_id = $1 \
    AND tenant_id = $2 AND revision = $10::bigint - 1 RETURNING 1), \
    events AS (INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, emitted_at, \
    envelope) SELECT * FROM unnest($12::uuid[], $13::text[], $14::text[], $15::uuid[], \
    $16::timestamptz[], $17::jsonb[]) WHERE EXISTS (SELECT 1 FROM changed)) \
    SELECT count(*) FROM changed";

pub const LIST_CAMPAIGNS: &str = "SELECT campaign_id, tenant_id, external_key, name, channel, \
    audience_segment, state, scheduled_at, metadata_json, revision, created_at, updated_at \
    FROM crm_campaigns WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2) \
    AND ($3::timestamptz IS NULL OR (created_at, campaign_id) > ($3, $4)) \
    ORDER BY created_at, campaign_id LIMIT $5";

pub const CREATE_FOLLOW_UP: &str = "WITH changed AS (INSERT INTO crm_followups (followup_id, \
    tenant_id, campaign_id, external_key, lead_id, customer_id, phone_e164, message, \
    schedule_at, channel, status, provider_message_id, last_error_code, last_error_message, \
    metadata_json, correlation_id, trace_id, created_at, updated_at) VALUES ($1, $2, $3, $4, \
    $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) \
    ON CONFLICT DO NOTHING RETURNING 1), \
    events AS (INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, emitted_at, \
    envelope) SELECT * FROM unnest($20::uuid[], $21::text[], $22::text[], $23::uuid[], \
    $24::timestamptz[], $25::jsonb[]) WHERE EXISTS (SELECT 1 FROM changed)) \
    SELECT count(*) FROM changed";

pub const SELECT_FOLLOW_UP_BY_ID: &str = "SELECT followup_id, tenant_id, campaign_id, \
    external_key, lead_id, customer_id, phone_e164, message, schedule_at, channel, status, \
    provider_message_id, last_error_code, last_error_message, metadata_json, correlation_id, \
    trace_id, created_at, updated_at FROM crm_followups WHERE followup_id = $1";

pub const SELECT_FOLLOW_UP_BY_KEY: &str = "SELECT followup_id, tenant_id, campaign_id, \
    external_key, lead_id, customer_id, phone_e164, message, schedule_at, channel, status, \
    provider_message_id, last_error_code, last_error_message, metadata_json, correlation_id, \
    trace_id, created_at, updated_at FROM crm_followups WHERE tenant_id = $1 AND external_key = $2";

pub const LIST_FOLLOW_UPS: &str = "SELECT followup_id, tenant_id, campaign_id, external_key, \
    lead_id, customer_id, phone_e164, message, schedule_at, channel, status, \
    provider_message_id, last_error_code, last_error_message, metadata_json, correlation_id, \
    trace_id, created_at, updated_at FROM crm_followups WHERE tenant_id = $1 \
    AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR campaign_id = $3) \
    AND ($4::timestamptz IS NULL OR (created_at, followup_id) > ($4, $5)) \
    ORDER BY created_at, followup_id LIMIT $6";

/// The lane of a follow-up, exactly as `crm_followups_lane_due` spells it: its tenant and
/// its campaign (the nil uuid for none).
macro_rules! lane {
    ($alias:literal) => {
        concat!(
            $alias,
            ".tenant_id, coalesce(",
            $alias,
            ".campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)"
        )
    };
}

/// Every lane with pending follow-ups, by a skip scan of the lane index: one index
/// descent per lane, whatever the number of rows in it. `$1`: the held campaign states,
/// whose lanes are left out.
macro_rules! open_lanes {
    () => {
        concat!(
            "WITH RECURSIVE lanes(tenant_id, campaign) AS ((SELECT ",
            lane!("f"),
            " FROM crm_followups f WHERE f.status = 'pending' ORDER BY 1, 2 LIMIT 1) \
            UNION ALL SELECT next.* FROM lanes l CROSS JOIN LATERAL (SELECT ",
            lane!("f"),
            " FROM crm_followups f WHERE f.status = 'pending' AND (",
            lane!("f"),
            ") > (l.tenant_id, l.campaign) ORDER BY 1, 2 LIMIT 1) next), \
            open_lanes AS (SELECT l.* FROM lanes l LEFT JOIN crm_campaigns c \
            ON c.campaign_id = l.campaign WHERE c.state IS NULL OR c.state <> ALL($1::text[])) "
        )
    };
}

/// Claims due follow-ups (`$2` now, `$3` how many, `$4` how deep to look), oldest
/// `schedule_at` first. Candidates come from the open lanes only; `SKIP LOCKED` then hands
/// each row to one drain only, and looking deeper than the batch lets concurrent drains
/// each fill theirs.
pub const CLAIM_DUE: &str = concat!(
    open_lanes!(),
    ", candidates AS (SELECT d.followup_id FROM open_lanes l CROSS JOIN LATERAL \
    (SELECT f.followup_id, f.schedule_at FROM crm_followups f WHERE (",
    lane!("f"),
    ") = (l.tenant_id, l.campaign) AND f.status = 'pending' AND f.schedule_at <= $2 \
    ORDER BY f.schedule_at, f.followup_id LIMIT $4) d ORDER BY d.schedule_at, d.followup_id \
    LIMIT $4) \
    SELECT f.followup_id, f.tenant_id, f.campaign_id, f.external_key, f.lead_id, \
    f.customer_id, f.phone_e164, f.message, f.schedule_at, f.channel, f.status, \
    f.provider_message_id, f.last_error_code, f.last_error_message, f.metadata_json, \
    f.correlation_id, f.trace_id, f.created_at, f.updated_at, c.state AS campaign_state \
    FROM crm_followups f LEFT JOIN crm_campaigns c ON c.campaign_id = f.campaign_id \
    WHERE f.followup_id = ANY(ARRAY(SELECT followup_id FROM candidates)) \
    AND f.status = 'pending' ORDER BY f.schedule_at, f.followup_id LIMIT $3 \
    FOR UPDATE OF f SKIP LOCKED"
);

/// Due follow-ups in open lanes (`$2` now), counting no further than `$3`.
pub const COUNT_DUE: &str = concat!(
    open_lanes!(),
    "SELECT count(*) FROM (SELECT 1 FROM open_lanes l CROSS JOIN LATERAL \
    (SELECT 1 FROM crm_followups f WHERE (",
    lane!("f"),
    ") = (l.tenant_id, l.campaign) AND f.status = 'pending' AND f.schedule_at <= $2 \
    LIMIT $3) d LIMIT $3) capped"
);

/// The drain's decisions for a whole batch, as parallel arrays (id, status,
/// provider_message_id, last_error_code, last_error_message, updated_at).
pub const RECORD_OUTCOMES: &str = "UPDATE crm_followups f SET status = o.status, \
    provider_message_id = o.provider_message_id, last_error_code = o.last_error_code, \
    last_error_message = o.last_error_message, updated_at = o.updated_at \
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
    $6::timestamptz[]) AS o(followup_id, status, provider_message_id, last_error_code, \
    last_error_message, updated_at) \
    WHERE f.followup_id = o.followup_id AND f.status = 'pending'";

/// Events as parallel arrays, as in the writes above.
pub const INSERT_EVENTS: &str = "INSERT INTO crm_events (event_id, tenant_id, name, \
    correlation_id, emitted_at, envelope) SELECT * FROM unnest($1::uuid[], $2::text[], \
    $3::text[], $4::uuid[], $5::timestamptz[], $6::jsonb[])";

/// Outbound items as parallel arrays (queue item id, tenant, idempotency key, item,
/// created_at). The unique idempotency key refuses a second item for a follow-up.
pub const ENQUEUE_OUTBOUND: &str = "INSERT INTO crm_outbound_queue (queue_item_id, tenant_id, \
    idempotency_key, item, created_at) SELECT * FROM unnest($1::uuid[], $2::text[], \
    $3::text[], $4::jsonb[], $5::timestamptz[])";

/// Events of one correlation after position `$2`, at most `$3` of them.
pub const EVENTS_BY_CORRELATION: &str = "SELECT seq, tenant_id, envelope FROM crm_events \
    WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

pub const OUTBOUND_ITEMS: &str =
    "SELECT item FROM crm_outbound_queue ORDER BY seq OFFSET $1 LIMIT $2";
