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
         f.correlation_id, f.trace_id, f.time_zone, f.sender, f.sent_at, f.delivery, \
         f.created_at, f.updated_at"
    };
}

/// The columns of a sending policy, with `p.` in front.
macro_rules! policy_columns {
    () => {
        "p.max_per_second, p.quiet_start, p.quiet_end, p.quiet_time_zone, \
         p.max_per_second_per_sender, p.daily_recipient_limit, p.recipient_min_interval_ms, \
         p.recipient_daily_cap, p.auto_pause_window, p.auto_pause_max_failure_ratio"
    };
}

/// The columns of an outbound queue row's state (all but the item), with `q.` in front.
macro_rules! queue_columns {
    () => {
        "q.queue_item_id, q.followup_id, q.tenant_id, q.sender, q.max_attempts, q.backoff_ms, \
         q.status, q.attempt, q.available_at, q.lease_id, q.lease_expires_at, \
         q.last_ack_lease, q.last_ack_status, q.created_at, q.finished_at"
    };
}

/// Every column of an outbound item, in the order a finished item's move into
/// `crm_outbound_done` lists them: those the queue keeps, then those its finish decides.
macro_rules! moved_item_columns {
    () => {
        "seq, queue_item_id, tenant_id, idempotency_key, item, created_at, followup_id, \
         max_attempts, backoff_ms, sender, status, attempt, available_at, lease_id, \
         lease_expires_at, last_ack_lease, last_ack_status, finished_at"
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

/// The columns of a campaign's counts, in `CampaignStats::counts` order.
macro_rules! stats_columns {
    () => {
        "pending, sent, failed, delivery_accepted, delivery_retrying, delivery_failed, \
         delivery_delivered, delivery_read"
    };
}

/// What a conflicting counts row becomes: each count plus the change.
macro_rules! stats_sums {
    () => {
        "pending = s.pending + excluded.pending, sent = s.sent + excluded.sent, \
         failed = s.failed + excluded.failed, \
         delivery_accepted = s.delivery_accepted + excluded.delivery_accepted, \
         delivery_retrying = s.delivery_retrying + excluded.delivery_retrying, \
         delivery_failed = s.delivery_failed + excluded.delivery_failed, \
         delivery_delivered = s.delivery_delivered + excluded.delivery_delivered, \
         delivery_read = s.delivery_read + excluded.delivery_read"
    };
}

/// Adds the counts of bigint array `$a` (in `CampaignStats::counts` order) to the campaign
/// of each `changed` row, after the event lock of `ordered` (every writer takes them in
/// that order).
macro_rules! add_counts {
    ($a:literal) => {
        concat!(
            "INSERT INTO crm_campaign_stats AS s (campaign_id, ",
            stats_columns!(),
            ") SELECT campaign_id, c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8] \
             FROM ordered, changed, (SELECT ",
            $a,
            "::bigint[] AS c) counts WHERE campaign_id IS NOT NULL \
             ON CONFLICT (campaign_id) DO UPDATE SET ",
            stats_sums!()
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

/// Campaigns an ack may pause, locked in id order (the order every such ack takes).
pub const LOCK_CAMPAIGNS: &str = concat!(
    "SELECT ",
    campaign_columns!(),
    " FROM crm_campaigns WHERE campaign_id = ANY($1) ORDER BY campaign_id FOR NO KEY UPDATE"
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

/// One page of a tenant's campaigns after the keyset (`$2`, `$3`), at most `$4`, with
/// `$5` the state when filtered: each variant is served by an index in key order.
macro_rules! list_campaigns {
    ($filter:literal) => {
        concat!(
            "SELECT ",
            campaign_columns!(),
            " FROM crm_campaigns WHERE tenant_id = $1 ",
            $filter,
            " AND (created_at, campaign_id) > ($2, $3) ORDER BY created_at, campaign_id LIMIT $4"
        )
    };
}

pub const LIST_CAMPAIGNS: &str = list_campaigns!("");
pub const LIST_CAMPAIGNS_BY_STATE: &str = list_campaigns!("AND state = $5");

/// Creates a batch of follow-ups (parallel arrays `$1`..`$21`: the record's columns;
/// `$22`..`$27` and `$36`, `$37`: each one's counts) unless the id or the tenant's key is taken, with
/// the events (`$28`..`$33`, `$34` the follow-up each belongs to) and the campaign counts
/// of those inserted; returns the ids inserted. A batch never holds two follow-ups with
/// one id or one key (the batcher sees to it).
///
/// "Was this row inserted" is a hashed subplan (`IS TRUE` keeps the `IN` from being
/// turned into a join): the planner cannot see the arrays' lengths in a generic plan,
/// guesses ten rows, and a join planned from that guess compared every event with every
/// inserted row, a million comparisons for a batch of 1,000.
pub const CREATE_FOLLOW_UPS: &str = concat!(
    "WITH input AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], \
     $5::uuid[], $6::uuid[], $7::text[], $8::text[], $9::timestamptz[], $10::text[], \
     $11::text[], $12::text[], $13::text[], $14::text[], $15::jsonb[], $16::uuid[], \
     $17::text[], $18::text[], $19::jsonb[], $20::timestamptz[], $21::timestamptz[], \
     $22::bigint[], $23::bigint[], $24::bigint[], $25::bigint[], $26::bigint[], \
     $27::bigint[], $35::text[], $36::bigint[], $37::bigint[]) AS u(followup_id, tenant_id, \
     campaign_id, external_key, lead_id, customer_id, phone_e164, message, schedule_at, \
     channel, status, provider_message_id, last_error_code, last_error_message, \
     metadata_json, correlation_id, trace_id, time_zone, delivery, created_at, updated_at, \
     n_pending, n_sent, n_failed, n_accepted, n_retrying, n_delivery_failed, sender, \
     n_delivered, n_read)), \
     changed AS (INSERT INTO crm_followups (followup_id, tenant_id, campaign_id, \
     external_key, lead_id, customer_id, phone_e164, message, schedule_at, channel, status, \
     provider_message_id, last_error_code, last_error_message, metadata_json, \
     correlation_id, trace_id, time_zone, delivery, created_at, updated_at, sender) \
     SELECT followup_id, tenant_id, campaign_id, external_key, lead_id, customer_id, \
     phone_e164, message, schedule_at, channel, status, provider_message_id, \
     last_error_code, last_error_message, metadata_json, correlation_id, trace_id, \
     time_zone, delivery, created_at, updated_at, sender FROM input \
     ON CONFLICT DO NOTHING RETURNING followup_id), ",
    ordered!("changed"),
    ", stats AS (INSERT INTO crm_campaign_stats AS s (campaign_id, ",
    stats_columns!(),
    ") SELECT i.campaign_id, \
     sum(i.n_pending), sum(i.n_sent), sum(i.n_failed), sum(i.n_accepted), \
     sum(i.n_retrying), sum(i.n_delivery_failed), sum(i.n_delivered), sum(i.n_read) \
     FROM ordered, input i WHERE (i.followup_id IN (SELECT followup_id FROM changed)) IS TRUE \
     AND i.campaign_id IS NOT NULL GROUP BY i.campaign_id ORDER BY i.campaign_id \
     ON CONFLICT (campaign_id) DO UPDATE SET ",
    stats_sums!(),
    "), events AS (INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, \
     emitted_at, envelope) SELECT e.event_id, e.tenant_id, e.name, e.correlation_id, \
     e.emitted_at, e.envelope FROM ordered, unnest($28::uuid[], $29::text[], $30::text[], \
     $31::uuid[], $32::timestamptz[], $33::jsonb[], $34::uuid[]) WITH ORDINALITY \
     AS e(event_id, tenant_id, name, correlation_id, emitted_at, envelope, owner, n) \
     WHERE (e.owner IN (SELECT followup_id FROM changed)) IS TRUE ORDER BY e.n) \
     SELECT followup_id FROM changed"
);

/// The follow-ups whose delivery recorded one of the provider message ids `$1`, locked
/// in id order (served by `crm_followups_provider_message`).
pub const LOCK_FOLLOW_UPS_BY_PROVIDER_MESSAGE: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE (f.delivery->>'provider_message_id') = ANY($1::text[]) \
     ORDER BY f.followup_id FOR UPDATE"
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

/// The follow-ups of acked items, locked in id order: an ack, like a receipt, holds its
/// follow-ups before the campaigns it may pause, so the two never wait on each other in
/// a circle.
pub const LOCK_FOLLOW_UPS_BY_ID: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE f.followup_id = ANY($1) ORDER BY f.followup_id FOR UPDATE"
);

pub const SELECT_FOLLOW_UP_BY_KEY: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    " FROM crm_followups f WHERE f.tenant_id = $1 AND f.external_key = $2"
);

/// One page of a tenant's follow-ups after the keyset (`$2`, `$3`), at most `$4`, with
/// the filters from `$5` on: each variant is served by an index in key order.
macro_rules! list_follow_ups {
    ($filter:literal) => {
        concat!(
            "SELECT ",
            follow_up_columns!(),
            " FROM crm_followups f WHERE f.tenant_id = $1 ",
            $filter,
            " AND (f.created_at, f.followup_id) > ($2, $3) \
             ORDER BY f.created_at, f.followup_id LIMIT $4"
        )
    };
}

pub const LIST_FOLLOW_UPS: &str = list_follow_ups!("");
pub const LIST_FOLLOW_UPS_BY_STATUS: &str = list_follow_ups!("AND f.status = $5");
pub const LIST_FOLLOW_UPS_BY_CAMPAIGN: &str = list_follow_ups!("AND f.campaign_id = $5");
pub const LIST_FOLLOW_UPS_BY_CAMPAIGN_AND_STATUS: &str =
    list_follow_ups!("AND f.campaign_id = $5 AND f.status = $6");

/// The lane of a follow-up, exactly as `crm_followups_lane_zone_due` spells it: its
/// tenant, its campaign (the nil uuid for none) and its recipient's time zone ('' for
/// none).
macro_rules! lane {
    () => {
        "f.tenant_id, coalesce(f.campaign_id, '00000000-0000-0000-0000-000000000000'::uuid), \
         coalesce(f.time_zone, '')"
    };
}

/// Every lane with pending follow-ups, by a skip scan of the lane index: one index
/// descent per lane, whatever the number of rows in it.
macro_rules! lanes {
    () => {
        concat!(
            "WITH RECURSIVE lanes(tenant_id, campaign, zone) AS ((SELECT ",
            lane!(),
            " FROM crm_followups f WHERE f.status = 'pending' ORDER BY 1, 2, 3 LIMIT 1) \
             UNION ALL SELECT next.* FROM lanes l CROSS JOIN LATERAL (SELECT ",
            lane!(),
            " FROM crm_followups f WHERE f.status = 'pending' AND (",
            lane!(),
            ") > (l.tenant_id, l.campaign, l.zone) ORDER BY 1, 2, 3 LIMIT 1) next) "
        )
    };
}

/// Every lane with pending follow-ups, with its campaign's state and its tenant's policy.
pub const LANES: &str = concat!(
    lanes!(),
    "SELECT l.tenant_id, l.campaign, l.zone, c.state AS campaign_state, \
     p.tenant_id IS NOT NULL AS has_policy, ",
    policy_columns!(),
    " FROM lanes l LEFT JOIN crm_campaigns c ON c.campaign_id = l.campaign \
     LEFT JOIN crm_sending_policies p ON p.tenant_id = l.tenant_id"
);

/// The candidates of a claim: due follow-ups (`$6` now) of the open lanes (`$1`..`$3`),
/// tenants in turn, none past its cap (`$4` tenants, `$5` caps), at most `$7` from the
/// `$7` oldest of each lane (deeper than the batch, so that drains running at once, and
/// follow-ups the limits hold, still leave a batch to fill), with what the limits look at.
/// Nothing is locked: `LOCK_CLAIMED` takes the ones admitted.
pub const CANDIDATES: &str = concat!(
    "WITH open_lanes AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]) \
     AS l(tenant_id, campaign, zone)), \
     caps AS (SELECT * FROM unnest($4::text[], $5::bigint[]) AS c(tenant_id, cap)), \
     due AS (SELECT d.* FROM open_lanes l LEFT JOIN caps c ON c.tenant_id = l.tenant_id \
     CROSS JOIN LATERAL (SELECT f.followup_id, f.tenant_id, f.schedule_at \
     FROM crm_followups f WHERE (",
    lane!(),
    ") = (l.tenant_id, l.campaign, l.zone) AND f.status = 'pending' AND f.schedule_at <= $6 \
     ORDER BY f.schedule_at, f.followup_id LIMIT least($7, coalesce(c.cap, $7))) d), \
     ranked AS (SELECT due.*, row_number() OVER (PARTITION BY due.tenant_id \
     ORDER BY due.schedule_at, due.followup_id) AS turn FROM due), \
     chosen AS (SELECT r.* FROM ranked r LEFT JOIN caps c ON c.tenant_id = r.tenant_id \
     WHERE c.cap IS NULL OR r.turn <= c.cap \
     ORDER BY r.turn, r.schedule_at, r.followup_id LIMIT $7) \
     SELECT f.followup_id, f.tenant_id, f.schedule_at, f.sender, f.phone_e164 FROM chosen c \
     JOIN crm_followups f ON f.followup_id = c.followup_id \
     ORDER BY c.turn, c.schedule_at, c.followup_id"
);

/// The candidates of the tenants a claim looks deep into (`crm_ports::drain::DEEP_LOOK`):
/// the due follow-ups (`$4` now) of their open lanes (`$1`..`$3`), at most `$5` of each
/// lane, oldest first; each tenant's are cut to `$5` by the caller.
pub const DEEP_CANDIDATES: &str = concat!(
    "WITH lanes AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]) \
     AS l(tenant_id, campaign, zone)) \
     SELECT d.* FROM lanes l CROSS JOIN LATERAL \
     (SELECT f.followup_id, f.tenant_id, f.schedule_at, f.sender, f.phone_e164 \
     FROM crm_followups f WHERE (",
    lane!(),
    ") = (l.tenant_id, l.campaign, l.zone) AND f.status = 'pending' AND f.schedule_at <= $4 \
     ORDER BY f.schedule_at, f.followup_id LIMIT $5) d"
);

/// Locks the admitted candidates `$1` still pending, in that order, at most `$2`, with
/// `SKIP LOCKED` handing each to one drain only; returns their ids (`CLAIMED` reads them).
pub const LOCK_CLAIMED: &str = "SELECT f.followup_id FROM unnest($1::uuid[]) WITH ORDINALITY \
    AS u(id, n) JOIN crm_followups f ON f.followup_id = u.id WHERE f.status = 'pending' \
    ORDER BY u.n LIMIT $2 FOR UPDATE OF f SKIP LOCKED";

/// The due follow-ups (`$4` now) of each lane (`$1`..`$3`), its oldest first, at most `$5`
/// of each, with what the limits look at: what a sending status walks.
pub const DUE_IN_LANES: &str = concat!(
    "WITH lanes AS (SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[]) \
     AS l(tenant_id, campaign, zone)) \
     SELECT d.*, l.campaign, l.zone FROM lanes l CROSS JOIN LATERAL \
     (SELECT f.followup_id, f.tenant_id, f.sender, f.phone_e164, f.schedule_at \
     FROM crm_followups f WHERE (",
    lane!(),
    ") = (l.tenant_id, l.campaign, l.zone) AND f.status = 'pending' AND f.schedule_at <= $4 \
     ORDER BY f.schedule_at, f.followup_id LIMIT $5) d"
);

/// The claimed follow-ups (`$1`, in claim order) with their campaign's state and whether
/// their recipient opted out.
pub const CLAIMED: &str = concat!(
    "SELECT ",
    follow_up_columns!(),
    ", c.state AS campaign_state, EXISTS (SELECT 1 FROM crm_opt_outs o \
     WHERE o.tenant_id = f.tenant_id AND o.phone_e164 = f.phone_e164) AS recipient_opted_out \
     FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n) \
     JOIN crm_followups f ON f.followup_id = u.id \
     LEFT JOIN crm_campaigns c ON c.campaign_id = f.campaign_id ORDER BY u.n"
);

/// Due follow-ups (`$2` now) in lanes whose campaign is not in a held state (`$1`),
/// counting no further than `$3`.
pub const COUNT_DUE: &str = concat!(
    lanes!(),
    ", open_lanes AS (SELECT l.* FROM lanes l LEFT JOIN crm_campaigns c \
     ON c.campaign_id = l.campaign WHERE c.state IS NULL OR c.state <> ALL($1::text[])) \
     SELECT count(*) FROM (SELECT 1 FROM open_lanes l CROSS JOIN LATERAL \
     (SELECT 1 FROM crm_followups f WHERE (",
    lane!(),
    ") = (l.tenant_id, l.campaign, l.zone) AND f.status = 'pending' AND f.schedule_at <= $2 \
     LIMIT $3) d LIMIT $3) capped"
);

/// Locks each limited tenant of `$1` that no other transaction holds, for the rest of the
/// transaction, and returns those; never waits. A limited tenant's work is claimed by one
/// drain at a time, so its ledger answers are exact; a drain that finds it taken serves
/// the others meanwhile.
pub const TRY_LOCK_TENANTS: &str = "SELECT t FROM unnest($1::text[]) AS t \
    WHERE pg_try_advisory_xact_lock(20261130, hashtext(current_schema() || ':' || t))";

/// The rate windows of tenants `$1` moved to `$2` (a second ago): each running count
/// (`crm_send_rates`) less the sends between its window's start and `$2`; counted afresh
/// from the ledger when the window is missing, starts after `$2` (another replica's clock)
/// or before `$3` (what the ledger may have deleted). Per tenant and sender ('' for none).
macro_rules! moved_rates {
    () => {
        "t AS (SELECT * FROM unnest($1::text[]) AS t(tenant_id)), \
         w AS (SELECT w.tenant_id, w.since FROM crm_send_windows w JOIN t USING (tenant_id) \
         WHERE w.since <= $2 AND w.since >= $3), \
         counted AS (SELECT r.tenant_id, r.sender, r.sends FROM crm_send_rates r \
         JOIN w USING (tenant_id) \
         UNION ALL SELECT l.tenant_id, coalesce(l.sender, ''), -1 FROM w \
         JOIN crm_send_ledger l ON l.tenant_id = w.tenant_id AND l.sent_at > w.since \
         AND l.sent_at <= $2 \
         UNION ALL SELECT l.tenant_id, coalesce(l.sender, ''), 1 FROM t \
         JOIN crm_send_ledger l ON l.tenant_id = t.tenant_id AND l.sent_at > $2 \
         WHERE t.tenant_id NOT IN (SELECT tenant_id FROM w)), \
         rates AS (SELECT tenant_id COLLATE \"C\" AS tenant_id, sender COLLATE \"C\" AS sender, \
         sum(sends)::bigint AS sends FROM counted GROUP BY 1, 2)"
    };
}

/// The sends of tenants `$1` after `$2` (see `moved_rates!`), per tenant and sender, read
/// only.
pub const TENANT_SENDS: &str = concat!(
    "WITH ",
    moved_rates!(),
    " SELECT tenant_id, nullif(sender, ''), sends FROM rates WHERE sends > 0"
);

/// Keeps the rate windows of tenants `$1` moved to `$2` (see `moved_rates!`); run after the
/// event lock, like every write to a rate, so none is counted twice.
pub const SETTLE_RATES: &str = concat!(
    "WITH ",
    moved_rates!(),
    ", gone AS (DELETE FROM crm_send_rates r USING t WHERE r.tenant_id = t.tenant_id \
     AND NOT EXISTS (SELECT 1 FROM rates x WHERE x.tenant_id = r.tenant_id \
     AND x.sender = r.sender AND x.sends > 0)), \
     kept AS (INSERT INTO crm_send_rates AS r (tenant_id, sender, sends) \
     SELECT tenant_id, sender, sends FROM rates WHERE sends > 0 ORDER BY 1, 2 \
     ON CONFLICT (tenant_id, sender) DO UPDATE SET sends = excluded.sends) \
     INSERT INTO crm_send_windows AS w (tenant_id, since) SELECT tenant_id, $2 FROM t \
     ORDER BY 1 ON CONFLICT (tenant_id) DO UPDATE SET since = excluded.since"
);

/// Each budget of tenants `$1` settled at `$2` (a day ago): the running count brought
/// forward to recipients whose last send is after `$2`, taking off those whose last send
/// lies between its cutoff and `$2`; counted afresh from the ledger when the row is
/// missing or its cutoff is older than `$3` (what the ledger may have deleted). A cutoff
/// already past `$2` (another replica's clock) is kept.
macro_rules! settled_budgets {
    () => {
        "t AS (SELECT * FROM unnest($1::text[]) AS t(tenant_id)), \
         old AS (SELECT b.* FROM crm_send_budgets b JOIN t USING (tenant_id)), \
         kept AS (SELECT o.tenant_id, o.cutoff, o.counted FROM old o WHERE o.cutoff >= $2), \
         moved AS (SELECT o.tenant_id, $2::timestamptz AS cutoff, greatest(0, o.counted - \
         (SELECT count(DISTINCT l.phone_e164 COLLATE \"C\") FROM crm_send_ledger l LEFT JOIN LATERAL \
         (SELECT 1 AS seen FROM crm_send_ledger later WHERE later.tenant_id = l.tenant_id \
         AND later.phone_e164 = l.phone_e164 AND later.sent_at > $2 LIMIT 1) again ON true \
         WHERE l.tenant_id = o.tenant_id AND l.sent_at > o.cutoff AND l.sent_at <= $2 \
         AND again.seen IS NULL)) AS counted \
         FROM old o WHERE o.cutoff < $2 AND o.cutoff >= $3), \
         counted AS (SELECT t.tenant_id, $2::timestamptz AS cutoff, \
         (SELECT count(DISTINCT l.phone_e164 COLLATE \"C\") FROM crm_send_ledger l \
         WHERE l.tenant_id = t.tenant_id AND l.sent_at > $2) AS counted FROM t \
         WHERE t.tenant_id NOT IN (SELECT tenant_id FROM kept UNION ALL SELECT tenant_id FROM moved)), \
         budgets AS (SELECT * FROM kept UNION ALL SELECT * FROM moved UNION ALL SELECT * FROM counted)"
    };
}

/// The day's distinct recipients of tenants `$1` (see `settled_budgets!`), read only.
pub const BUDGETS: &str = concat!(
    "WITH ",
    settled_budgets!(),
    " SELECT tenant_id, counted FROM budgets"
);

/// Keeps the budgets of tenants `$1` settled at `$2` (see `settled_budgets!`); run after
/// the event lock, like every write to a budget, so none is counted twice.
pub const SETTLE_BUDGETS: &str = concat!(
    "WITH ",
    settled_budgets!(),
    " INSERT INTO crm_send_budgets AS b (tenant_id, cutoff, counted) \
     SELECT tenant_id, cutoff, counted FROM budgets ORDER BY tenant_id \
     ON CONFLICT (tenant_id) DO UPDATE SET cutoff = excluded.cutoff, counted = excluded.counted"
);

/// The ledger's history of recipients (`$1` tenants, `$2` phones) after `$3`: their last
/// send and how many.
/// One index range per recipient (a lateral subquery), whatever the statistics say.
pub const RECIPIENT_SENDS: &str = "SELECT r.tenant_id, r.phone_e164, h.last, h.sends \
    FROM unnest($1::text[], $2::text[]) AS r(tenant_id, phone_e164) CROSS JOIN LATERAL \
    (SELECT max(l.sent_at) AS last, count(*) AS sends FROM crm_send_ledger l \
    WHERE l.tenant_id = r.tenant_id AND l.phone_e164 = r.phone_e164 AND l.sent_at > $3) h \
    WHERE h.sends > 0";

/// When the first recipient counted in tenant `$1`'s day (after `$2`) stops counting: the
/// earliest of their last sends, the first send of the day, in time order, that no later
/// send to its recipient follows (most recipients get one message, so it is found after
/// a few).
pub const NEXT_RELEASE: &str = "SELECT l.sent_at FROM crm_send_ledger l LEFT JOIN LATERAL \
    (SELECT 1 AS seen FROM crm_send_ledger later WHERE later.tenant_id = l.tenant_id \
    AND later.phone_e164 = l.phone_e164 AND later.sent_at > l.sent_at LIMIT 1) again ON true \
    WHERE l.tenant_id = $1 AND l.sent_at > $2 AND again.seen IS NULL \
    ORDER BY l.sent_at LIMIT 1";

/// Adds a drain's sends to the ledger (parallel arrays: tenant, sender, phone, sent_at,
/// follow-up), counts, in each tenant's budget, the recipients it newly counts: those
/// with no send after its cutoff yet (one index probe each), and adds them to each
/// tenant's rate window they fall in. Run after the event lock, as
/// every drain does, so two drains never count one recipient twice.
pub const RECORD_SENDS: &str = "WITH sends AS (SELECT * FROM unnest($1::text[], $2::text[], \
    $3::text[], $4::timestamptz[], $5::uuid[]) AS s(tenant_id, sender, phone_e164, sent_at, \
    followup_id)), \
    newly AS (SELECT s.tenant_id, count(DISTINCT s.phone_e164 COLLATE \"C\") AS n FROM sends s \
    JOIN crm_send_budgets b ON b.tenant_id = s.tenant_id LEFT JOIN LATERAL (SELECT 1 AS seen \
    FROM crm_send_ledger l WHERE l.tenant_id = s.tenant_id AND l.phone_e164 = s.phone_e164 \
    AND l.sent_at > b.cutoff LIMIT 1) earlier ON true WHERE earlier.seen IS NULL \
    GROUP BY s.tenant_id), \
    bumped AS (UPDATE crm_send_budgets b SET counted = b.counted + newly.n FROM newly \
    WHERE b.tenant_id = newly.tenant_id), \
    rated AS (INSERT INTO crm_send_rates AS r (tenant_id, sender, sends) \
    SELECT s.tenant_id, coalesce(s.sender, ''), count(*) FROM sends s \
    JOIN crm_send_windows w ON w.tenant_id = s.tenant_id AND s.sent_at > w.since \
    GROUP BY 1, 2 ORDER BY 1, 2 \
    ON CONFLICT (tenant_id, sender) DO UPDATE SET sends = r.sends + excluded.sends) \
    INSERT INTO crm_send_ledger (tenant_id, sender, phone_e164, sent_at, followup_id) \
    SELECT * FROM sends";

/// Retention of the ledger: entries sent before `$1`, at most `$2` of them.
pub const EXPIRE_LEDGER: &str = "DELETE FROM crm_send_ledger WHERE ctid IN (SELECT ctid \
    FROM crm_send_ledger WHERE sent_at < $1 LIMIT $2)";

/// Adds changes (`$1` campaigns, `$2`..`$9` the counts) to campaigns' counts.
pub const ADD_STATS: &str = concat!(
    "INSERT INTO crm_campaign_stats AS s (campaign_id, ",
    stats_columns!(),
    ") SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], \
     $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]) ORDER BY 1 \
     ON CONFLICT (campaign_id) DO UPDATE SET ",
    stats_sums!()
);

pub const CAMPAIGN_STATS: &str = concat!(
    "SELECT ",
    stats_columns!(),
    " FROM crm_campaign_stats WHERE campaign_id = $1"
);

pub const SELECT_POLICY: &str = concat!(
    "SELECT ",
    policy_columns!(),
    " FROM crm_sending_policies p WHERE p.tenant_id = $1"
);

pub const REMOVE_POLICY: &str = "DELETE FROM crm_sending_policies WHERE tenant_id = $1";

/// Replaces a tenant's whole policy: every column, set or not.
pub const PUT_POLICY: &str = "INSERT INTO crm_sending_policies (tenant_id, max_per_second, \
    quiet_start, quiet_end, quiet_time_zone, updated_at, max_per_second_per_sender, \
    daily_recipient_limit, recipient_min_interval_ms, recipient_daily_cap, \
    auto_pause_window, auto_pause_max_failure_ratio) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
    ON CONFLICT (tenant_id) DO UPDATE SET max_per_second = excluded.max_per_second, \
    quiet_start = excluded.quiet_start, quiet_end = excluded.quiet_end, \
    quiet_time_zone = excluded.quiet_time_zone, updated_at = excluded.updated_at, \
    max_per_second_per_sender = excluded.max_per_second_per_sender, \
    daily_recipient_limit = excluded.daily_recipient_limit, \
    recipient_min_interval_ms = excluded.recipient_min_interval_ms, \
    recipient_daily_cap = excluded.recipient_daily_cap, \
    auto_pause_window = excluded.auto_pause_window, \
    auto_pause_max_failure_ratio = excluded.auto_pause_max_failure_ratio";

/// The policies of tenants `$1`, for the campaigns a batch of acks or receipts holds.
pub const SELECT_POLICIES: &str = concat!(
    "SELECT p.tenant_id, ",
    policy_columns!(),
    " FROM crm_sending_policies p WHERE p.tenant_id = ANY($1)"
);

/// The failure window of campaign `$1`: its last `$2` finished deliveries, newest first
/// (the predicate is the one of `crm_followups_finished_deliveries`).
pub const FINISHED_DELIVERIES: &str = "SELECT followup_id, delivery->>'status' = 'failed' \
    FROM crm_followups WHERE campaign_id = $1 \
    AND delivery->>'status' IN ('accepted', 'delivered', 'read', 'failed') \
    ORDER BY updated_at DESC, followup_id DESC LIMIT $2";

/// Saves a follow-up (`$1` id, then its changeable fields) if its status is still `$2`
/// and it is tenant `$16`'s, with its events and the move of its campaign's counts (`$9`
/// the changes, in `CampaignStats::counts` order).
pub const SAVE_FOLLOW_UP: &str = concat!(
    "WITH changed AS (UPDATE crm_followups SET status = $3, provider_message_id = $4, \
     last_error_code = $5, last_error_message = $6, delivery = $7, updated_at = $8 \
     WHERE followup_id = $1 AND status = $2 AND tenant_id = $16 RETURNING campaign_id), ",
    ordered!("changed"),
    ", stats AS (",
    add_counts!("$9"),
    "), events AS (",
    append_events!("$10", "$11", "$12", "$13", "$14", "$15"),
    ") SELECT count(*) FROM changed"
);

/// The drain's decisions for a whole batch, as parallel arrays (id, status,
/// provider_message_id, last_error_code, last_error_message, updated_at, sent_at).
pub const RECORD_OUTCOMES: &str = "UPDATE crm_followups f SET status = o.status, \
    provider_message_id = o.provider_message_id, last_error_code = o.last_error_code, \
    last_error_message = o.last_error_message, updated_at = o.updated_at, \
    sent_at = o.sent_at \
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
    $6::timestamptz[], $7::timestamptz[]) AS o(followup_id, status, provider_message_id, \
    last_error_code, last_error_message, updated_at, sent_at) \
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
/// created_at, follow-up id, max attempts, backoff, sender): ready from their creation.
/// The unique idempotency key refuses a second waiting item for a follow-up; that a
/// follow-up is enqueued once at all is the drain's doing (it enqueues only pending
/// follow-ups it locked, and marks them sent in the same commit).
pub const ENQUEUE_OUTBOUND: &str = "INSERT INTO crm_outbound_queue (queue_item_id, tenant_id, \
    idempotency_key, item, created_at, followup_id, max_attempts, backoff_ms, sender, \
    available_at) SELECT u.*, u.created_at FROM unnest($1::uuid[], $2::text[], $3::text[], \
    $4::jsonb[], $5::timestamptz[], $6::uuid[], $7::integer[], $8::integer[], $9::text[]) \
    AS u(queue_item_id, tenant_id, idempotency_key, item, created_at, followup_id, \
    max_attempts, backoff_ms, sender)";

/// Items a claim may take at `$1`, earliest available first, at most `$2`; each is locked
/// for this claim and passed over by every other.
pub const CLAIM_ITEMS: &str = concat!(
    "SELECT ",
    queue_columns!(),
    ", q.item FROM crm_outbound_queue q WHERE q.status <> 'done' AND q.available_at <= $1 \
     ORDER BY q.available_at, q.seq LIMIT $2 FOR UPDATE SKIP LOCKED"
);

/// The waiting items of an ack batch (`$1` ids), locked in one order so that batches
/// never deadlock. Finished items are not in the queue: see `FINISHED_ITEMS`.
pub const LOCK_ITEMS: &str = concat!(
    "SELECT ",
    queue_columns!(),
    " FROM crm_outbound_queue q WHERE q.queue_item_id = ANY($1) ORDER BY q.seq FOR UPDATE"
);

/// The finished items among `$1` ids. They never change again, so nothing locks them.
pub const FINISHED_ITEMS: &str = concat!(
    "SELECT ",
    queue_columns!(),
    " FROM crm_outbound_done q WHERE q.queue_item_id = ANY($1)"
);

pub const SELECT_ITEM: &str = concat!(
    "SELECT ",
    queue_columns!(),
    " FROM crm_outbound_items q WHERE q.queue_item_id = $1"
);

/// New states of items, as parallel arrays: an item that finishes moves from the queue
/// to the day partition of its finish (`crm_outbound_done`), one still waiting is
/// updated in place. Returns how many items were written.
pub const UPDATE_ITEMS: &str = concat!(
    "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], \
     $3::integer[], $4::timestamptz[], $5::uuid[], $6::timestamptz[], $7::uuid[], \
     $8::text[], $9::timestamptz[]) AS u(queue_item_id, status, attempt, available_at, \
     lease_id, lease_expires_at, last_ack_lease, last_ack_status, finished_at)), \
     kept AS (UPDATE crm_outbound_queue q SET status = u.status, \
     attempt = u.attempt, available_at = u.available_at, lease_id = u.lease_id, \
     lease_expires_at = u.lease_expires_at, last_ack_lease = u.last_ack_lease, \
     last_ack_status = u.last_ack_status, finished_at = u.finished_at \
     FROM u WHERE q.queue_item_id = u.queue_item_id AND u.status <> 'done' RETURNING 1), \
     moved AS (DELETE FROM crm_outbound_queue q USING u \
     WHERE q.queue_item_id = u.queue_item_id AND u.status = 'done' \
     RETURNING q.seq, q.queue_item_id, q.tenant_id, q.idempotency_key, q.item, q.created_at, \
     q.followup_id, q.max_attempts, q.backoff_ms, q.sender, u.status, u.attempt, \
     u.available_at, u.lease_id, u.lease_expires_at, u.last_ack_lease, u.last_ack_status, \
     u.finished_at), \
     done AS (INSERT INTO crm_outbound_done (",
    moved_item_columns!(),
    ") SELECT * FROM moved RETURNING 1) \
     SELECT (SELECT count(*) FROM kept) + (SELECT count(*) FROM done)"
);

/// Events of one correlation after position `$2`, at most `$3` of them.
pub const EVENTS_BY_CORRELATION: &str = "SELECT seq, tenant_id, envelope FROM crm_events \
    WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// The feed: events after `$1` in commit order, at most `$2`.
pub const FEED: &str = "SELECT seq, tenant_id, name, envelope FROM crm_events \
    WHERE seq > $1 ORDER BY seq LIMIT $2";

/// The feed of one tenant (`$3`).
pub const FEED_OF_TENANT: &str = "SELECT seq, tenant_id, name, envelope FROM crm_events \
    WHERE tenant_id = $3 AND seq > $1 ORDER BY seq LIMIT $2";

/// Where the retained events start, the last number ever handed to an event, and the
/// highest number this snapshot sees: numbers are handed out in commit order, so every
/// event up to it is visible to this statement and to any later one.
pub const FEED_BOUNDS: &str = "SELECT (SELECT events_deleted_through FROM crm_feed_state), \
    (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM crm_events_seq_seq), \
    (SELECT coalesce(max(seq), 0) FROM crm_events)";

/// Where the primary writes its WAL, in bytes from the start.
pub const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint";

/// How far a standby has replayed the primary's WAL, in bytes from the start.
pub const REPLAYED_POSITION: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

/// Where the retained events start.
pub const EVENTS_DELETED_THROUGH: &str = "SELECT events_deleted_through FROM crm_feed_state";

/// Whether an event after `$1` exists: the highest number, read from the end of each
/// day's index. (`EXISTS (… WHERE seq > $1)` was planned as a scan of every event, in
/// parallel on the partitioned table, and a waiting reader asks this on every wake.)
pub const EVENT_AFTER: &str = "SELECT coalesce((SELECT max(seq) FROM crm_events) > $1, false)";

/// Creates the missing day partitions of the tables `$1`, for `$3` days from the day of
/// `$2` (the database's clock when null): `crm_day_partition`, migration V9.
pub const MAKE_DAYS: &str = "SELECT count(crm_day_partition(parent, \
    coalesce($2, now()) + day * interval '1 day')) FROM unnest($1::text[]) parent, \
    generate_series(0, $3 - 1) day";

/// Creates the day partition of table `$1` for the time `$2`, written as the database
/// wrote it in the error that found it missing.
pub const PARTITION_FOR: &str = "SELECT crm_day_partition($1, $2::text::timestamptz)";

/// Items finished in place in the queue, by a replica of the release before partitions
/// during a rolling upgrade: moved to their day (served by `crm_outbound_finished`).
pub const MOVE_FINISHED_ITEMS: &str = concat!(
    "WITH moved AS (DELETE FROM crm_outbound_queue \
     WHERE status = 'done' AND finished_at IS NOT NULL RETURNING ",
    moved_item_columns!(),
    ") INSERT INTO crm_outbound_done (",
    moved_item_columns!(),
    ") SELECT * FROM moved"
);

/// Retention: detaches and drops the day partitions of `$1` that end by `$2`, at most `$3`
/// of them; the rows they held. Dropping events moves the feed's start past them.
pub const DROP_PARTITIONS: &str = "SELECT crm_drop_partitions($1, $2, $3)";

pub const OUTBOUND_ITEMS: &str =
    "SELECT item FROM crm_outbound_items ORDER BY seq OFFSET $1 LIMIT $2";

pub const ADD_OPT_OUT: &str = "INSERT INTO crm_opt_outs (tenant_id, phone_e164, reason, \
    created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

/// Opt-outs as parallel arrays; numbers already opted out keep their first record. Returns
/// the ones added.
pub const ADD_OPT_OUTS: &str = "INSERT INTO crm_opt_outs (tenant_id, phone_e164, reason, \
    created_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], \
    $4::timestamptz[]) ON CONFLICT DO NOTHING RETURNING tenant_id, phone_e164";

pub const SELECT_OPT_OUT: &str = "SELECT tenant_id, phone_e164, reason, created_at \
    FROM crm_opt_outs WHERE tenant_id = $1 AND phone_e164 = $2";

pub const REMOVE_OPT_OUT: &str =
    "DELETE FROM crm_opt_outs WHERE tenant_id = $1 AND phone_e164 = $2";

pub const LIST_OPT_OUTS: &str = "SELECT tenant_id, phone_e164, reason, created_at \
    FROM crm_opt_outs WHERE tenant_id = $1 AND phone_e164 > $2 ORDER BY phone_e164 LIMIT $3";
