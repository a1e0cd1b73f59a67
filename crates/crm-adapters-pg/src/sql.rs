//! Query text. Every statement names its columns; none is built from user input.
//!
//! Every write is one statement or one short transaction: a change and its events (given
//! as parallel arrays: event id, tenant, name, correlation id, emitted_at, envelope)
//! commit together or not at all. Events are numbered in commit order: whoever appends
//! events first takes a transaction-level advisory lock of the schema, held until its
//! commit, so the `seq` numbers are handed out one transaction after another and a reader
//! that sees number N sees every committed event below it. The appender also notifies
//! `crm_events` (payload: the schema) so that waiting feed readers wake at the commit.

/// The columns of a campaign row, in the order `rows::campaign` reads them by name.
macro_rules! campaign_columns {
    () => {
        "campaign_id, tenant_id, external_key, name, channel, audience_segment, state, \
         scheduled_at, metadata_json, revision, created_at, updated_at"
    };
}

/// The columns of a follow-up row, with `f.` in front.
macro_rules! follow_up_columns {
    () => {
        "f.followup_id, f.tenant_id, f.campaign_id, f.external_key, f.lead_id, \
         f.customer_id, f.phone_e164, f.message, f.schedule_at, f.channel, f.status, \
         f.provider_message_id, f.last_error_code, f.last_error_message, f.metadata_json, \
         f.correlation_id, f.trace_id, f.time_zone, f.delivery, f.created_at, f.updated_at"
    };
}

/// The columns of an outbound queue row's state (all but the item), with `q.` in front.
macro_rules! queue_columns {
    () => {
        "q.queue_item_id, q.followup_id, q.tenant_id, q.max_attempts, q.backoff_ms, \
         q.status, q.attempt, q.available_at, q.lease_id, q.lease_expires_at, \
         q.last_ack_lease, q.last_ack_status, q.created_at, q.finished_at"
    };
}

/// Takes the schema's event lock and notifies waiting readers, once, when `$from` has a
/// row; events appended after it are numbered in commit order.
macro_rules! ordered {
    ($from:literal) => {
        concat!(
            "ordered AS (SELECT pg_advisory_xact_lock(20261128, hashtext(current_schema())), \
             pg_notify('crm_events', current_schema()) FROM (SELECT 1 FROM ",
            $from,
            " LIMIT 1) any_row)"
        )
    };
}

/// Appends the events of parameters `$a`..`$f` after `ordered`.
macro_rules! append_events {
    ($a:literal, $b:literal, $c:literal, $d:literal, $e:literal, $f:literal) => {
        concat!(
            "INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, emitted_at, \
             envelope) SELECT u.* FROM ordered, unnest(",
            $a,
            "::uuid[], ",
            $b,
            "::text[], ",
            $c,
            "::text[], ",
            $d,
            "::uuid[], ",
            $e,
            "::timestamptz[], ",
            $f,
            "::jsonb[]) AS u"
        )
    };
}

/// `ON CONFLICT DO NOTHING` without a target covers the primary key and the
/// `(tenant_id, external_key)` index alike; the caller then finds out which one it was.
pub const CREATE_CAMPAIGN: &str = concat!(
    "WITH changed AS (INSERT INTO crm_campaigns (",
    campaign_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT DO NOTHING RETURNING 1), ",
    ordered!("changed"),
    ", events AS (",
    append_events!("$13", "$14", "$15", "$16", "$17", "$18"),
    ") SELECT count(*) FROM changed"
);

pub const SELECT_CAMPAIGN_BY_ID: &str = concat!(
    "SELECT ",
    campaign_columns!(),
    " FROM crm_campaigns WHERE campaign_id = $1"
);

pub const SELECT_CAMPAIGN_BY_KEY: &str = concat!(
    "SELECT ",
    campaign_columns!(),
    " FROM crm_campaigns WHERE tenant_id = $1 AND external_key = $2"
);

/// Applies a change only if the stored revision is the one it was decided on.
pub const UPDATE_CAMPAIGN: &str = concat!(
    "WITH changed AS (UPDATE crm_campaigns SET external_key = $3, name = $4, channel = $5, \
     audience_segment = $6, state = $7, scheduled_at = $8, metadata_json = $9, \
     revision = $10::bigint, updated_at = $11 WHERE campaign_id = $1 AND tenant_id = $2 \
     AND revision = $10::bigint - 1 RETURNING 1), ",
    ordered!("changed"),
    ", events AS (",
    append_events!("$12", "$13", "$14", "$15", "$16", "$17"),
    ") SELECT count(*) FROM changed"
);

pub const LIST_CAMPAIGNS: &str = concat!(
    "SELECT ",
    campaign_columns!(),
    " FROM crm_campaigns WHERE tenant_id = $1 AND ($2::text IS NULL OR state = $2) \
     AND ($3::timestamptz IS NULL OR (created_at, campaign_id) > ($3, $4)) \
     ORDER BY created_at, campaign_id LIMIT $5"
);

pub const CREATE_FOLLOW_UP: &str = concat!(
    "WITH changed AS (INSERT INTO crm_followups (followup_id, tenant_id, campaign_id, \
     external_key, lead_id, customer_id, phone_e164, message, schedule_at, channel, status, \
     provider_message_id, last_error_code, last_error_message, metadata_json, \
     correlation_id, trace_id, time_zone, delivery, created_at, updated_at) VALUES ($1, $2, \
     $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
     ON CONFLICT DO NOTHING RETURNING 1), ",
    ordered!("changed"),
    ", events AS (",
    append_events!("$22", "$23", "$24", "$25", "$26", "$27"),
    ") SELECT count(*) FROM changed"
);

pub const SELECT_FOLLOW_UP_BY_ID: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE f.followup_id = $1"
);

pub const SELECT_FOLLOW_UPS_BY_ID: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE f.followup_id = ANY($1)"
);

pub const SELECT_FOLLOW_UP_BY_KEY: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE f.tenant_id = $1 AND f.external_key = $2"
);

pub const LIST_FOLLOW_UPS: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE f.tenant_id = $1 AND ($2::text IS NULL OR f.status = $2) \
     AND ($3::uuid IS NULL OR f.campaign_id = $3) \
     AND ($4::timestamptz IS NULL OR (f.created_at, f.followup_id) > ($4, $5)) \
     ORDER BY f.created_at, f.followup_id LIMIT $6"
);

/// The lane of a follow-up, exactly as `crm_followups_lane_due` spells it: its tenant and
/// its campaign (the nil uuid for none).
macro_rules! lane {
    () => {
        "f.tenant_id, coalesce(f.campaign_id, '00000000-0000-0000-0000-000000000000'::uuid)"
    };
}

/// Every lane with pending follow-ups, by a skip scan of the lane index: one index
/// descent per lane, whatever the number of rows in it. `$1`: the held campaign states,
/// whose lanes are left out.
macro_rules! open_lanes {
    () => {
        concat!(
            "WITH RECURSIVE lanes(tenant_id, campaign) AS ((SELECT ",
            lane!(),
            " FROM crm_followups f WHERE f.status = 'pending' ORDER BY 1, 2 LIMIT 1) \
             UNION ALL SELECT next.* FROM lanes l CROSS JOIN LATERAL (SELECT ",
            lane!(),
            " FROM crm_followups f WHERE f.status = 'pending' AND (",
            lane!(),
            ") > (l.tenant_id, l.campaign) ORDER BY 1, 2 LIMIT 1) next), \
             open_lanes AS (SELECT l.* FROM lanes l LEFT JOIN crm_campaigns c \
             ON c.campaign_id = l.campaign WHERE c.state IS NULL \
             OR c.state <> ALL($1::text[])) "
        )
    };
}

/// Claims due follow-ups (`$2` now, `$3` how many, `$4` how deep to look), oldest
/// `schedule_at` first. Candidates come from the open lanes only and are then looked up
/// by id; `SKIP LOCKED` hands each row to one drain only, and looking deeper than the
/// batch lets concurrent drains each fill theirs.
pub const CLAIM_DUE: &str = concat!(
    open_lanes!(),
    ", candidates AS (SELECT d.followup_id FROM open_lanes l CROSS JOIN LATERAL \
     (SELECT f.followup_id, f.schedule_at FROM crm_followups f WHERE (",
    lane!(),
    ") = (l.tenant_id, l.campaign) AND f.status = 'pending' AND f.schedule_at <= $2 \
     ORDER BY f.schedule_at, f.followup_id LIMIT $4) d ORDER BY d.schedule_at, \
     d.followup_id LIMIT $4) SELECT ",
    follow_up_columns!(),
    ", c.state AS campaign_state FROM crm_followups f LEFT JOIN crm_campaigns c \
     ON c.campaign_id = f.campaign_id \
     WHERE f.followup_id = ANY(ARRAY(SELECT followup_id FROM candidates)) \
     AND f.status = 'pending' ORDER BY f.schedule_at, f.followup_id LIMIT $3 \
     FOR UPDATE OF f SKIP LOCKED"
);

/// Due follow-ups in open lanes (`$2` now), counting no further than `$3`.
pub const COUNT_DUE: &str = concat!(
    open_lanes!(),
    "SELECT count(*) FROM (SELECT 1 FROM open_lanes l CROSS JOIN LATERAL \
     (SELECT 1 FROM crm_followups f WHERE (",
    lane!(),
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

/// Deliveries recorded on follow-ups, as parallel arrays (id, delivery, updated_at).
pub const RECORD_DELIVERIES: &str = "UPDATE crm_followups f SET delivery = d.delivery, \
    updated_at = d.updated_at FROM unnest($1::uuid[], $2::jsonb[], $3::timestamptz[]) \
    AS d(followup_id, delivery, updated_at) WHERE f.followup_id = d.followup_id";

/// Events as parallel arrays: the last write of a transaction, just before its commit,
/// so that the event lock is held as briefly as can be.
pub const INSERT_EVENTS: &str = concat!(
    "WITH ",
    ordered!("unnest($1::uuid[])"),
    " ",
    append_events!("$1", "$2", "$3", "$4", "$5", "$6")
);

/// New outbound items as parallel arrays (queue item id, tenant, idempotency key, item,
/// created_at, follow-up id, max attempts, backoff): ready from their creation. The unique
/// idempotency key refuses a second item for a follow-up.
pub const ENQUEUE_OUTBOUND: &str = "INSERT INTO crm_outbound_queue (queue_item_id, tenant_id, \
    idempotency_key, item, created_at, followup_id, max_attempts, backoff_ms, available_at) \
    SELECT u.*, u.created_at FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], \
    $5::timestamptz[], $6::uuid[], $7::integer[], $8::integer[]) AS u(queue_item_id, \
    tenant_id, idempotency_key, item, created_at, followup_id, max_attempts, backoff_ms)";

/// Items a claim may take at `$1`, earliest available first, at most `$2`; each is locked
/// for this claim and passed over by every other.
pub const CLAIM_ITEMS: &str = concat!(
    "SELECT ",
    queue_columns!(),
    ", q.item FROM crm_outbound_queue q WHERE q.status <> 'done' AND q.available_at <= $1 \
     ORDER BY q.available_at, q.seq LIMIT $2 FOR UPDATE SKIP LOCKED"
);

/// The items of an ack batch (`$1` ids), locked in one order so that batches never
/// deadlock.
pub const LOCK_ITEMS: &str = concat!(
    "SELECT ",
    queue_columns!(),
    " FROM crm_outbound_queue q WHERE q.queue_item_id = ANY($1) ORDER BY q.seq FOR UPDATE"
);

pub const SELECT_ITEM: &str = concat!(
    "SELECT ",
    queue_columns!(),
    " FROM crm_outbound_queue q WHERE q.queue_item_id = $1"
);

/// New states of items, as parallel arrays.
pub const UPDATE_ITEMS: &str = "UPDATE crm_outbound_queue q SET status = u.status, \
    attempt = u.attempt, available_at = u.available_at, lease_id = u.lease_id, \
    lease_expires_at = u.lease_expires_at, last_ack_lease = u.last_ack_lease, \
    last_ack_status = u.last_ack_status, finished_at = u.finished_at \
    FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::timestamptz[], $5::uuid[], \
    $6::timestamptz[], $7::uuid[], $8::text[], $9::timestamptz[]) AS u(queue_item_id, \
    status, attempt, available_at, lease_id, lease_expires_at, last_ack_lease, \
    last_ack_status, finished_at) WHERE q.queue_item_id = u.queue_item_id";

/// Events of one correlation after position `$2`, at most `$3` of them.
pub const EVENTS_BY_CORRELATION: &str = "SELECT seq, tenant_id, envelope FROM crm_events \
    WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// The feed: events after `$1` in commit order, at most `$2`.
pub const FEED: &str = "SELECT seq, tenant_id, name, envelope FROM crm_events \
    WHERE seq > $1 ORDER BY seq LIMIT $2";

/// The feed of one tenant (`$3`).
pub const FEED_OF_TENANT: &str = "SELECT seq, tenant_id, name, envelope FROM crm_events \
    WHERE tenant_id = $3 AND seq > $1 ORDER BY seq LIMIT $2";

/// Where the retained events start, and the last number ever handed to an event.
pub const FEED_BOUNDS: &str = "SELECT (SELECT events_deleted_through FROM crm_feed_state), \
    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM crm_events_seq_seq)";

/// Whether an event after `$1` exists.
pub const EVENT_AFTER: &str = "SELECT EXISTS (SELECT 1 FROM crm_events WHERE seq > $1)";

/// Retention of events: deletes the oldest run of events emitted before `$1`, looking at
/// no more than `$2` of them, and moves the feed's start past them. Deleting only a run
/// from the start keeps the log without holes, so a feed cursor is either retained or
/// expired. The feed state's row lock keeps two replicas from doing it at once.
pub const EXPIRE_EVENTS: &str = "WITH state AS (SELECT events_deleted_through AS through \
    FROM crm_feed_state FOR UPDATE), \
    batch AS (SELECT e.seq, e.emitted_at FROM crm_events e, state \
    WHERE e.seq > state.through ORDER BY e.seq LIMIT $2), \
    bound AS (SELECT coalesce((SELECT min(seq) - 1 FROM batch WHERE emitted_at >= $1), \
    (SELECT max(seq) FROM batch)) AS seq), \
    gone AS (DELETE FROM crm_events e USING state, bound WHERE e.seq > state.through \
    AND e.seq <= bound.seq RETURNING 1), \
    moved AS (UPDATE crm_feed_state f SET events_deleted_through = bound.seq FROM bound \
    WHERE bound.seq > f.events_deleted_through RETURNING 1) \
    SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM moved)";

/// Retention of outbound items finished before `$1`, at most `$2` of them.
pub const EXPIRE_ITEMS: &str = "DELETE FROM crm_outbound_queue WHERE seq IN (SELECT seq \
    FROM crm_outbound_queue WHERE status = 'done' AND finished_at < $1 \
    ORDER BY finished_at LIMIT $2)";

pub const OUTBOUND_ITEMS: &str =
    "SELECT item FROM crm_outbound_queue ORDER BY seq OFFSET $1 LIMIT $2";

pub const ADD_OPT_OUT: &str = "INSERT INTO crm_opt_outs (tenant_id, phone_e164, reason, \
    created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

/// Opt-outs as parallel arrays; numbers already opted out keep their first record.
pub const ADD_OPT_OUTS: &str = "INSERT INTO crm_opt_outs (tenant_id, phone_e164, reason, \
    created_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
    $4::timestamptz[]) ON CONFLICT DO NOTHING";

pub const SELECT_OPT_OUT: &str = "SELECT tenant_id, phone_e164, reason, created_at \
    FROM crm_opt_outs WHERE tenant_id = $1 AND phone_e164 = $2";

pub const REMOVE_OPT_OUT: &str =
    "DELETE FROM crm_opt_outs WHERE tenant_id = $1 AND phone_e164 = $2";

pub const LIST_OPT_OUTS: &str = "SELECT tenant_id, phone_e164, reason, created_at \
    FROM crm_opt_outs WHERE tenant_id = $1 AND phone_e164 > $2 ORDER BY phone_e164 LIMIT $3";
