use serde_json::{Map, json};
use uuid::Uuid;

use super::*;
use crate::answers::NotBefore;
use crate::follow_up::{FollowUpStatus, NewFollowUp};
use crate::ids::CorrelationId;

pub(crate) fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_735_722_000_000 + millis).unwrap()
}

/// A follow-up handed to the queue at `at(10)` as item 7, and its queue entry.
pub(crate) fn sent() -> (FollowUp, QueueEntry) {
    let (follow_up, _) = FollowUp::schedule(
        NewFollowUp {
            followup_id: FollowUpId::new(Uuid::from_u128(1)),
            tenant_id: TenantId::parse("tenant_a").unwrap(),
            campaign_id: None,
            external_key: None,
            lead_id: None,
            customer_id: None,
            phone_e164: "+5511999998888".into(),
            message: "hi".into(),
            schedule_at: at(0),
            channel: "whatsapp".into(),
            status: FollowUpStatus::Pending,
            metadata: Map::new(),
            correlation_id: CorrelationId::new(Uuid::from_u128(9)),
            trace_id: "trace-0001".into(),
            time_zone: None,
            sender: None,
        },
        at(0),
    );
    let item_id = QueueItemId::new(Uuid::from_u128(7));
    let (follow_up, _) = follow_up.mark_sent(item_id, at(10)).unwrap();
    let item = OutboundItem::for_follow_up(&follow_up, item_id, at(10));
    let entry = QueueEntry::new(&item, follow_up.followup_id, follow_up.sender.clone());
    (follow_up, entry)
}

fn lease(n: u128) -> LeaseId {
    LeaseId(Uuid::from_u128(n))
}

fn leased(entry: &QueueEntry, follow_up: &FollowUp, id: u128, now: i64) -> QueueEntry {
    match claim(entry, Some(follow_up), lease(id), at(now + 30_000), at(now)) {
        Claimed::Leased(entry) => entry,
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn report(accepted: bool, retryable: bool) -> Report {
    Report {
        accepted,
        provider_message_id: accepted.then(|| "wamid.1".to_owned()),
        error_code: (!accepted).then(|| "PROVIDER_DOWN".to_owned()),
        error_message: None,
        retryable,
        opt_out: false,
    }
}

/// An ack with no code of the table of answers.
fn ack(
    entry: &QueueEntry,
    follow_up: &FollowUp,
    lease_id: LeaseId,
    report: &Report,
    now: Timestamp,
    jitter: f64,
) -> Acked {
    super::ack(
        entry,
        follow_up,
        lease_id,
        report,
        Rules::default(),
        now,
        jitter,
    )
}

fn applied(outcome: Acked) -> (QueueEntry, FollowUp, DomainEvent, AckStatus) {
    match outcome {
        Acked::Applied {
            entry,
            follow_up,
            event,
            status,
            ..
        } => (*entry, *follow_up, *event, status),
        Acked::Unchanged(status) => panic!("expected a change, got {status:?}"),
    }
}

#[test]
fn a_claim_leases_a_ready_item_and_counts_the_attempt() {
    let (follow_up, entry) = sent();
    assert!(entry.claimable(at(10)));
    let leased = leased(&entry, &follow_up, 1, 20);
    assert_eq!(leased.status, QueueStatus::Leased);
    assert_eq!(leased.attempt, 1);
    assert_eq!(leased.available_at, Some(at(30_020)));
    assert!(!leased.claimable(at(30_019)));
    assert!(
        leased.claimable(at(30_020)),
        "an expired lease can be claimed again"
    );
}

#[test]
fn an_accepted_report_finishes_the_item_and_records_the_delivery_with_its_event() {
    let (follow_up, entry) = sent();
    let entry = leased(&entry, &follow_up, 1, 20);
    let (entry, recorded, event, status) = applied(ack(
        &entry,
        &follow_up,
        lease(1),
        &report(true, false),
        at(50),
        0.0,
    ));
    assert_eq!(status, AckStatus::Acked);
    assert_eq!(entry.status, QueueStatus::Done);
    assert_eq!(entry.finished_at, Some(at(50)));
    let delivery = recorded.delivery.unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Accepted);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.provider_message_id.as_deref(), Some("wamid.1"));
    assert_eq!(
        recorded.status,
        FollowUpStatus::Sent,
        "sent keeps its meaning"
    );
    assert_eq!(event.name(), "crm.followup.delivery.accepted");
    assert_eq!(
        event.payload()["queue_item_id"],
        entry.queue_item_id.to_string()
    );
    assert_eq!(event.payload()["retryable"], false);
}

#[test]
fn a_retryable_failure_with_attempts_left_backs_off_exponentially_within_ten_percent() {
    let (follow_up, entry) = sent();
    let mut entry = leased(&entry, &follow_up, 1, 0);
    let (retried, recorded, event, status) = applied(ack(
        &entry,
        &follow_up,
        lease(1),
        &report(false, true),
        at(100),
        1.0,
    ));
    assert_eq!(status, AckStatus::RetryScheduled);
    assert_eq!(retried.status, QueueStatus::Ready);
    // First retry: backoff_ms × 2^0, here +10 %.
    assert_eq!(retried.available_at, Some(at(100 + 550)));
    assert_eq!(recorded.delivery.unwrap().status, DeliveryStatus::Retrying);
    assert_eq!(event.name(), "crm.followup.delivery.retrying");
    assert_eq!(event.payload()["retryable"], true);
    assert_eq!(event.payload()["retry_at"], json!(at(100 + 550)));
    // Second attempt fails too: 500 × 2^1, here -10 %.
    entry = leased(&retried, &follow_up, 2, 700);
    let (retried, ..) = applied(ack(
        &entry,
        &follow_up,
        lease(2),
        &report(false, true),
        at(800),
        -1.0,
    ));
    assert_eq!(retried.available_at, Some(at(800 + 900)));
    // The third and last attempt fails: done, failed for good.
    entry = leased(&retried, &follow_up, 3, 2_000);
    let (done, recorded, event, status) = applied(ack(
        &entry,
        &follow_up,
        lease(3),
        &report(false, true),
        at(2_100),
        0.0,
    ));
    assert_eq!(status, AckStatus::Acked);
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(recorded.delivery.unwrap().status, DeliveryStatus::Failed);
    assert_eq!(event.name(), "crm.followup.delivery.failed");
    assert_eq!(event.payload()["retryable"], false);
    assert_eq!(event.payload()["attempt"], 3);
}

#[test]
fn a_failure_that_is_not_retryable_finishes_at_once() {
    let (follow_up, entry) = sent();
    let entry = leased(&entry, &follow_up, 1, 0);
    let (done, recorded, ..) = applied(ack(
        &entry,
        &follow_up,
        lease(1),
        &report(false, false),
        at(5),
        0.0,
    ));
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(recorded.delivery.unwrap().status, DeliveryStatus::Failed);
}

#[test]
fn repeating_an_ack_answers_the_same_and_changes_nothing() {
    let (follow_up, entry) = sent();
    let entry = leased(&entry, &follow_up, 1, 0);
    let (retried, ..) = applied(ack(
        &entry,
        &follow_up,
        lease(1),
        &report(false, true),
        at(5),
        0.0,
    ));
    for repeat in [report(false, true), report(true, false)] {
        assert_eq!(
            ack(&retried, &follow_up, lease(1), &repeat, at(6), 0.0),
            Acked::Unchanged(AckStatus::RetryScheduled)
        );
    }
}

#[test]
fn an_ack_under_a_lease_that_expired_and_was_claimed_again_is_lease_lost() {
    let (follow_up, entry) = sent();
    let first = leased(&entry, &follow_up, 1, 0);
    let second = leased(&first, &follow_up, 2, 40_000);
    assert_eq!(second.attempt, 2);
    assert_eq!(
        ack(
            &second,
            &follow_up,
            lease(1),
            &report(true, false),
            at(40_001),
            0.0
        ),
        Acked::Unchanged(AckStatus::LeaseLost)
    );
    assert_eq!(
        ack(
            &second,
            &follow_up,
            lease(99),
            &report(true, false),
            at(40_001),
            0.0
        ),
        Acked::Unchanged(AckStatus::LeaseLost),
        "a lease id the item never had"
    );
    // An expired lease nobody claimed again still takes its ack.
    let (done, ..) = applied(ack(
        &first,
        &follow_up,
        lease(1),
        &report(true, false),
        at(40_000),
        0.0,
    ));
    assert_eq!(done.status, QueueStatus::Done);
}

#[test]
fn a_lease_that_runs_out_on_the_last_attempt_finishes_the_item_as_failed() {
    let (follow_up, entry) = sent();
    let mut entry = entry;
    for (attempt, now) in [(1, 0), (2, 40_000), (3, 80_000)] {
        entry = leased(&entry, &follow_up, attempt, now);
    }
    match claim(&entry, Some(&follow_up), lease(4), at(150_000), at(120_000)) {
        Claimed::Expired {
            entry,
            follow_up,
            event,
        } => {
            assert_eq!(entry.status, QueueStatus::Done);
            let delivery = follow_up.delivery.unwrap();
            assert_eq!(delivery.status, DeliveryStatus::Failed);
            assert_eq!(delivery.error_code.as_deref(), Some(LEASE_EXPIRED));
            assert_eq!(event.name(), "crm.followup.delivery.failed");
        }
        other => panic!("expected the item to finish, got {other:?}"),
    }
}

/// The follow-up of `sent()` in a campaign, leased once.
fn in_campaign() -> (FollowUp, QueueEntry) {
    let (mut follow_up, entry) = sent();
    follow_up.campaign_id = Some(crate::ids::CampaignId::new(Uuid::from_u128(3)));
    let entry = leased(&entry, &follow_up, 1, 0);
    (follow_up, entry)
}

fn coded(code: &str, retryable: bool) -> Report {
    Report {
        error_code: Some(code.to_owned()),
        ..report(false, retryable)
    }
}

fn with_action(action: Action) -> Rules {
    Rules {
        action: Some(action),
        recipient_interval_ms: None,
    }
}

fn consequences_of(outcome: Acked) -> (QueueEntry, DomainEvent, Consequences) {
    match outcome {
        Acked::Applied {
            entry,
            event,
            consequences,
            ..
        } => (*entry, *event, consequences),
        Acked::Unchanged(status) => panic!("expected a change, got {status:?}"),
    }
}

#[test]
fn a_code_that_pauses_the_campaign_finishes_the_item_though_retryable_and_asks_for_the_pause() {
    let (follow_up, entry) = in_campaign();
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("131048", true),
        with_action(Action::PauseCampaign),
        at(5),
        0.0,
    );
    let (done, event, consequences) = consequences_of(outcome);
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(event.name(), "crm.followup.delivery.failed");
    assert_eq!(
        consequences.pause,
        Some(PauseCause::ErrorCode {
            error_code: "131048".into(),
            followup_id: follow_up.followup_id
        })
    );
    assert_eq!(consequences.opt_out, None);
}

#[test]
fn a_pausing_code_on_a_follow_up_without_a_campaign_pauses_nothing() {
    let (follow_up, entry) = sent();
    let entry = leased(&entry, &follow_up, 1, 0);
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("131048", false),
        with_action(Action::PauseCampaign),
        at(5),
        0.0,
    );
    assert_eq!(consequences_of(outcome).2, Consequences::default());
}

#[test]
fn a_code_that_opts_out_finishes_the_item_and_names_the_code_as_the_reason() {
    let (follow_up, entry) = in_campaign();
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("131050", true),
        with_action(Action::OptOut),
        at(5),
        0.0,
    );
    let (done, _, consequences) = consequences_of(outcome);
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(
        consequences.opt_out,
        Some(OptOutRequest {
            reason: "provider:131050".into(),
            source: OptOutSource::Provider
        })
    );
}

#[test]
fn a_sender_reported_opt_out_is_its_own_consequence() {
    let (follow_up, entry) = in_campaign();
    let report = Report {
        opt_out: true,
        ..report(false, false)
    };
    let outcome = ack(&entry, &follow_up, lease(1), &report, at(5), 0.0);
    assert_eq!(
        consequences_of(outcome).2.opt_out,
        Some(OptOutRequest {
            reason: REPORTED_OPT_OUT.into(),
            source: OptOutSource::Ack
        })
    );
}

#[test]
fn a_code_that_finishes_ignores_retryable() {
    let (follow_up, entry) = in_campaign();
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("131026", true),
        with_action(Action::Finish),
        at(5),
        0.0,
    );
    let (done, event, consequences) = consequences_of(outcome);
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(event.payload()["retryable"], false);
    assert_eq!(consequences, Consequences::default());
}

#[test]
fn a_code_that_retries_waits_at_least_its_delay_even_when_the_sender_said_not_retryable() {
    let (follow_up, entry) = in_campaign();
    let day = 86_400_000;
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("131049", false),
        with_action(Action::Retry(NotBefore::Fixed { ms: day })),
        at(5),
        1.0,
    );
    let (retried, event, _) = consequences_of(outcome);
    assert_eq!(retried.status, QueueStatus::Ready);
    assert_eq!(retried.available_at, Some(at(5 + day as i64)));
    assert_eq!(event.name(), "crm.followup.delivery.retrying");
}

#[test]
fn the_pair_rate_retry_waits_the_tenant_interval_times_four_per_earlier_attempt() {
    let (follow_up, entry) = in_campaign();
    let pair = Action::Retry(NotBefore::RecipientInterval {
        default_ms: 6_000,
        growth: 4,
    });
    let rules = Rules {
        action: Some(pair),
        recipient_interval_ms: Some(10_000),
    };
    let first = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("131056", true),
        rules,
        at(5),
        0.0,
    );
    let (retried, ..) = consequences_of(first);
    assert_eq!(retried.available_at, Some(at(5 + 10_000)));
    let again = leased(&retried, &follow_up, 2, 20_000);
    let second = super::ack(
        &again,
        &follow_up,
        lease(2),
        &coded("131056", true),
        rules,
        at(20_005),
        0.0,
    );
    let (retried, ..) = consequences_of(second);
    assert_eq!(retried.available_at, Some(at(20_005 + 40_000)));
}

#[test]
fn a_code_that_retries_finishes_when_no_attempts_are_left() {
    let (follow_up, mut entry) = in_campaign();
    entry.attempt = entry.retry_policy.max_attempts;
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &coded("130429", true),
        with_action(Action::Retry(NotBefore::Backoff)),
        at(5),
        0.0,
    );
    let (done, event, _) = consequences_of(outcome);
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(event.name(), "crm.followup.delivery.failed");
}

#[test]
fn an_accepted_report_ignores_the_table_whatever_code_it_carries() {
    let (follow_up, entry) = in_campaign();
    let report = Report {
        error_code: Some("131048".into()),
        ..report(true, false)
    };
    let outcome = super::ack(
        &entry,
        &follow_up,
        lease(1),
        &report,
        with_action(Action::PauseCampaign),
        at(5),
        0.0,
    );
    let (done, event, consequences) = consequences_of(outcome);
    assert_eq!(done.status, QueueStatus::Done);
    assert_eq!(event.name(), "crm.followup.delivery.accepted");
    assert_eq!(consequences, Consequences::default());
}
