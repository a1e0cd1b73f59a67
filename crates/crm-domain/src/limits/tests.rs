use super::*;

fn now() -> Timestamp {
    Timestamp::parse("2026-03-01T12:00:00.000Z").unwrap()
}

fn ago(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(now().unix_millis() - millis).unwrap()
}

fn to(phone: &str) -> Candidate<'_> {
    Candidate {
        sender: None,
        phone_e164: phone,
    }
}

fn from<'a>(sender: &'a str, phone: &'a str) -> Candidate<'a> {
    Candidate {
        sender: Some(sender),
        phone_e164: phone,
    }
}

/// Walks `candidates` through an admission of `policy` with `usage` and the recipients'
/// `history`; returns what became of each.
fn check(
    policy: SendingPolicy,
    usage: TenantUsage,
    history: &[(&str, RecipientUsage)],
    candidates: &[Candidate<'_>],
) -> Vec<Result<(), HoldReason>> {
    let policy = policy.checked().unwrap();
    let history = history
        .iter()
        .map(|(phone, usage)| ((*phone).to_owned(), *usage))
        .collect();
    let mut admission = Admission::new(&policy, policy.max_per_second, usage, history, now());
    candidates
        .iter()
        .map(|candidate| admission.admit(*candidate))
        .collect()
}

const OK: Result<(), HoldReason> = Ok(());

#[test]
fn without_limits_everything_is_admitted_and_nothing_needs_asking() {
    let policy = SendingPolicy::default();
    assert!(!policy.needs(None).any());
    let outcomes = check(policy, TenantUsage::default(), &[], &[to("+1"), to("+1")]);
    assert_eq!(outcomes, [OK, OK]);
}

#[test]
fn the_tenant_rate_counts_what_the_window_holds_and_the_batch() {
    let policy = SendingPolicy {
        max_per_second: Some(3),
        ..SendingPolicy::default()
    };
    let usage = TenantUsage {
        sends: 1,
        ..TenantUsage::default()
    };
    let outcomes = check(policy, usage, &[], &[to("+1"), to("+2"), to("+3")]);
    assert_eq!(outcomes, [OK, OK, Err(HoldReason::Rate)]);
}

#[test]
fn a_sender_rate_holds_each_sender_apart_and_senderless_follow_ups_share_one() {
    let policy = SendingPolicy {
        max_per_second_per_sender: Some(1),
        ..SendingPolicy::default()
    };
    let usage = TenantUsage {
        sender_sends: HashMap::from([(Some("pn-1".to_owned()), 1)]),
        ..TenantUsage::default()
    };
    let outcomes = check(
        policy,
        usage,
        &[],
        &[
            from("pn-1", "+1"),
            from("pn-2", "+2"),
            from("pn-2", "+3"),
            to("+4"),
            to("+5"),
        ],
    );
    assert_eq!(
        outcomes,
        [
            Err(HoldReason::SenderRate),
            OK,
            Err(HoldReason::SenderRate),
            OK,
            Err(HoldReason::SenderRate)
        ]
    );
}

#[test]
fn the_daily_limit_counts_distinct_recipients_and_one_counted_already_goes_out_free() {
    let policy = SendingPolicy {
        daily_recipient_limit: Some(2),
        ..SendingPolicy::default()
    };
    let usage = TenantUsage {
        recipients: 1,
        ..TenantUsage::default()
    };
    let seen = RecipientUsage {
        last_sent_at: Some(ago(60_000)),
        sends: 1,
    };
    let outcomes = check(
        policy,
        usage,
        &[("+1", seen)],
        &[to("+2"), to("+3"), to("+1"), to("+2")],
    );
    assert_eq!(
        outcomes,
        [OK, Err(HoldReason::DailyRecipientLimit), OK, OK],
        "+2 uses the last place; +1 and +2 again are counted already"
    );
}

#[test]
fn a_recipient_sent_to_a_day_ago_counts_again() {
    let policy = SendingPolicy {
        daily_recipient_limit: Some(1),
        ..SendingPolicy::default()
    };
    let usage = TenantUsage {
        recipients: 1,
        ..TenantUsage::default()
    };
    let stale = RecipientUsage {
        last_sent_at: Some(ago(DAY_MILLIS)),
        sends: 0,
    };
    let outcomes = check(policy, usage, &[("+1", stale)], &[to("+1")]);
    assert_eq!(outcomes, [Err(HoldReason::DailyRecipientLimit)]);
}

#[test]
fn the_pair_interval_holds_a_recipient_sent_to_too_recently_the_batch_included() {
    let policy = SendingPolicy {
        recipient_min_interval_ms: Some(6_000),
        ..SendingPolicy::default()
    };
    let recent = RecipientUsage {
        last_sent_at: Some(ago(5_999)),
        sends: 1,
    };
    let long_ago = RecipientUsage {
        last_sent_at: Some(ago(6_000)),
        sends: 1,
    };
    let outcomes = check(
        policy,
        TenantUsage::default(),
        &[("+1", recent), ("+2", long_ago)],
        &[to("+1"), to("+2"), to("+3"), to("+3")],
    );
    assert_eq!(
        outcomes,
        [
            Err(HoldReason::RecipientInterval),
            OK,
            OK,
            Err(HoldReason::RecipientInterval)
        ]
    );
}

#[test]
fn the_daily_cap_counts_sends_to_one_recipient_across_campaigns() {
    let policy = SendingPolicy {
        recipient_daily_cap: Some(2),
        ..SendingPolicy::default()
    };
    let once = RecipientUsage {
        last_sent_at: Some(ago(3_600_000)),
        sends: 1,
    };
    let outcomes = check(
        policy,
        TenantUsage::default(),
        &[("+1", once)],
        &[to("+1"), to("+1"), to("+2")],
    );
    assert_eq!(outcomes, [OK, Err(HoldReason::RecipientDailyCap), OK]);
}

#[test]
fn the_first_rule_that_holds_is_the_one_named() {
    let policy = SendingPolicy {
        max_per_second: Some(1),
        daily_recipient_limit: Some(1),
        recipient_min_interval_ms: Some(6_000),
        ..SendingPolicy::default()
    };
    let usage = TenantUsage {
        sends: 1,
        recipients: 1,
        ..TenantUsage::default()
    };
    let outcomes = check(policy, usage, &[], &[to("+1")]);
    assert_eq!(outcomes, [Err(HoldReason::Rate)]);
}

#[test]
fn each_limit_says_what_must_be_asked_of_the_ledger() {
    let needs = |policy: SendingPolicy, rate| policy.needs(rate);
    assert!(needs(SendingPolicy::default(), Some(80)).sends);
    let per_sender = SendingPolicy {
        max_per_second_per_sender: Some(80),
        ..SendingPolicy::default()
    };
    assert_eq!(
        needs(per_sender, None),
        UsageNeeds {
            sends: true,
            ..UsageNeeds::default()
        }
    );
    let daily = SendingPolicy {
        daily_recipient_limit: Some(250),
        ..SendingPolicy::default()
    };
    assert_eq!(
        needs(daily, None),
        UsageNeeds {
            recipients: true,
            recipient_history: true,
            ..UsageNeeds::default()
        }
    );
    for policy in [
        SendingPolicy {
            recipient_min_interval_ms: Some(6_000),
            ..SendingPolicy::default()
        },
        SendingPolicy {
            recipient_daily_cap: Some(3),
            ..SendingPolicy::default()
        },
    ] {
        assert_eq!(
            needs(policy, None),
            UsageNeeds {
                recipient_history: true,
                ..UsageNeeds::default()
            }
        );
    }
}
