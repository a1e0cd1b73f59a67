use uuid::Uuid;

use super::*;
use crate::delivery::tests::{at, sent};
use crate::delivery::{Delivery, OptOutRequest, ReceiptTimes};
use crate::ids::CampaignId;
use crate::opt_out::OptOutSource;

const WAMID: &str = "wamid.HBgM";

/// A follow-up of a campaign whose message the provider accepted as `WAMID`.
fn accepted() -> FollowUp {
    let (mut follow_up, _) = sent();
    follow_up.campaign_id = Some(CampaignId::new(Uuid::from_u128(3)));
    follow_up.delivery = Some(Delivery {
        status: DeliveryStatus::Accepted,
        attempts: 1,
        provider_message_id: Some(WAMID.into()),
        error_code: None,
        updated_at: at(20),
        receipts: ReceiptTimes::default(),
    });
    follow_up
}

fn receipt(status: ReceiptStatus, millis: i64) -> Receipt {
    Receipt {
        provider_message_id: WAMID.into(),
        tenant_id: None,
        status,
        at: at(millis),
        error_code: (status == ReceiptStatus::Failed).then(|| "131026".to_owned()),
        error_message: None,
    }
}

fn applied(outcome: Received) -> (FollowUp, DomainEvent, Consequences) {
    match outcome {
        Received::Applied {
            follow_up,
            event,
            consequences,
        } => (*follow_up, *event, consequences),
        Received::Unchanged(answer) => panic!("expected a change, got {answer:?}"),
    }
}

/// Applies receipts in order, each to the result of the ones before; their answers.
fn apply_all(receipts: &[Receipt]) -> (FollowUp, Vec<ReceiptAnswer>) {
    let mut follow_up = accepted();
    let mut answers = Vec::new();
    for (n, receipt) in receipts.iter().enumerate() {
        match receive(&follow_up, receipt, None, at(1_000 + n as i64)) {
            Received::Applied {
                follow_up: moved, ..
            } => {
                follow_up = *moved;
                answers.push(ReceiptAnswer::Applied);
            }
            Received::Unchanged(answer) => answers.push(answer),
        }
    }
    (follow_up, answers)
}

#[test]
fn delivered_then_read_moves_forward_with_the_providers_times_and_events() {
    let (delivered, event, consequences) = applied(receive(
        &accepted(),
        &receipt(ReceiptStatus::Delivered, 100),
        None,
        at(500),
    ));
    let delivery = delivered.delivery.clone().unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Delivered);
    assert_eq!(delivery.receipts.delivered_at, Some(at(100)));
    assert_eq!(event.name(), "crm.followup.delivery.delivered");
    assert_eq!(event.payload()["at"], serde_json::json!(at(100)));
    assert_eq!(
        event.payload()["queue_item_id"],
        Uuid::from_u128(7).to_string()
    );
    assert_eq!(consequences, Consequences::default());
    let (read, event, _) = applied(receive(
        &delivered,
        &receipt(ReceiptStatus::Read, 200),
        None,
        at(600),
    ));
    assert_eq!(read.delivery.unwrap().receipts.read_at, Some(at(200)));
    assert_eq!(event.name(), "crm.followup.delivery.read");
}

#[test]
fn a_read_before_its_delivered_sets_both_and_the_late_delivered_is_stale() {
    let (follow_up, answers) = apply_all(&[
        receipt(ReceiptStatus::Read, 200),
        receipt(ReceiptStatus::Delivered, 100),
    ]);
    assert_eq!(answers, [ReceiptAnswer::Applied, ReceiptAnswer::Stale]);
    let delivery = follow_up.delivery.unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Read);
    assert_eq!(delivery.receipts.delivered_at, Some(at(200)));
    assert_eq!(delivery.receipts.read_at, Some(at(200)));
}

#[test]
fn every_order_and_repeat_ends_in_the_state_of_one_clean_pass() {
    use ReceiptStatus::{Delivered, Read};
    let clean = apply_all(&[receipt(Delivered, 100), receipt(Read, 200)]).0;
    for order in [
        vec![receipt(Read, 200), receipt(Delivered, 100)],
        vec![
            receipt(Delivered, 100),
            receipt(Delivered, 100),
            receipt(Read, 200),
        ],
        vec![
            receipt(Read, 200),
            receipt(Read, 200),
            receipt(Delivered, 100),
        ],
    ] {
        let (follow_up, _) = apply_all(&order);
        assert_eq!(
            follow_up.delivery.as_ref().unwrap().status,
            clean.delivery.as_ref().unwrap().status
        );
    }
}

#[test]
fn a_repeat_is_a_duplicate_and_a_failure_after_read_is_stale() {
    let (_, answers) = apply_all(&[
        receipt(ReceiptStatus::Delivered, 100),
        receipt(ReceiptStatus::Delivered, 100),
        receipt(ReceiptStatus::Read, 200),
        receipt(ReceiptStatus::Failed, 300),
    ]);
    assert_eq!(
        answers,
        [
            ReceiptAnswer::Applied,
            ReceiptAnswer::Duplicate,
            ReceiptAnswer::Applied,
            ReceiptAnswer::Stale
        ]
    );
}

#[test]
fn a_failed_receipt_is_final_and_its_repeat_still_matches_as_a_duplicate() {
    let (failed, answers) = apply_all(&[
        receipt(ReceiptStatus::Delivered, 100),
        receipt(ReceiptStatus::Failed, 300),
        receipt(ReceiptStatus::Failed, 300),
        receipt(ReceiptStatus::Read, 400),
    ]);
    assert_eq!(
        answers,
        [
            ReceiptAnswer::Applied,
            ReceiptAnswer::Applied,
            ReceiptAnswer::Duplicate,
            ReceiptAnswer::Stale
        ]
    );
    let delivery = failed.delivery.unwrap();
    assert_eq!(delivery.status, DeliveryStatus::Failed);
    assert_eq!(delivery.error_code.as_deref(), Some("131026"));
    assert_eq!(delivery.receipts.failed_at, Some(at(300)));
}

#[test]
fn a_failed_receipt_pauses_or_opts_out_as_the_table_says() {
    let mut spam = receipt(ReceiptStatus::Failed, 300);
    spam.error_code = Some("131048".into());
    let (_, event, consequences) = applied(receive(
        &accepted(),
        &spam,
        Some(Action::PauseCampaign),
        at(500),
    ));
    assert_eq!(event.name(), "crm.followup.delivery.failed");
    assert_eq!(event.payload()["retryable"], false);
    assert!(consequences.pause.is_some());
    let mut stopped = receipt(ReceiptStatus::Failed, 300);
    stopped.error_code = Some("131050".into());
    let (_, _, consequences) = applied(receive(
        &accepted(),
        &stopped,
        Some(Action::OptOut),
        at(500),
    ));
    assert_eq!(
        consequences.opt_out,
        Some(OptOutRequest {
            reason: "provider:131050".into(),
            source: OptOutSource::Provider
        })
    );
}

#[test]
fn a_receipt_matches_only_an_accepted_message_with_its_id_and_tenant() {
    let follow_up = accepted();
    let mut other_id = receipt(ReceiptStatus::Delivered, 100);
    other_id.provider_message_id = "wamid.other".into();
    assert!(!other_id.matches(&follow_up));
    let mut other_tenant = receipt(ReceiptStatus::Delivered, 100);
    other_tenant.tenant_id = Some(TenantId::parse("tenant_b").unwrap());
    assert!(!other_tenant.matches(&follow_up));
    assert_eq!(
        receive(&follow_up, &other_tenant, None, at(500)),
        Received::Unchanged(ReceiptAnswer::NotFound)
    );
    let mut same_tenant = receipt(ReceiptStatus::Delivered, 100);
    same_tenant.tenant_id = Some(follow_up.tenant_id.clone());
    assert!(same_tenant.matches(&follow_up));
    // A failed ack recorded the id, but the provider never accepted the message.
    let mut refused = follow_up.clone();
    refused.delivery.as_mut().unwrap().status = DeliveryStatus::Failed;
    assert!(!receipt(ReceiptStatus::Delivered, 100).matches(&refused));
}
