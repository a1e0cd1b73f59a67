use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::outbound::OutboundItem;

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn pending(campaign_id: Option<u128>) -> FollowUp {
    let (follow_up, _) = FollowUp::schedule(
        NewFollowUp {
            followup_id: FollowUpId::new(Uuid::from_u128(1)),
            tenant_id: TenantId::parse("tenant_a").unwrap(),
            campaign_id: campaign_id.map(|id| CampaignId::new(Uuid::from_u128(id))),
            external_key: None,
            lead_id: Some(Uuid::from_u128(5)),
            customer_id: None,
            phone_e164: "+5511999998888".into(),
            message: "Your invoice is due".into(),
            schedule_at: at("2025-01-01T09:00:00.000Z"),
            channel: "whatsapp".into(),
            status: FollowUpStatus::Pending,
            metadata: Map::new(),
            correlation_id: CorrelationId::new(Uuid::from_u128(9)),
            trace_id: "trace-0001".into(),
            time_zone: None,
            sender: None,
        },
        at("2024-12-31T00:00:00.000Z"),
    );
    follow_up
}

#[test]
fn a_pending_follow_up_is_due_once_its_time_has_come() {
    let follow_up = pending(None);
    assert!(!follow_up.is_due(at("2025-01-01T08:59:59.999Z")));
    assert!(follow_up.is_due(at("2025-01-01T09:00:00.000Z")));
}

#[test]
fn marking_sent_records_the_queue_item_and_emits_a_completed_event() {
    let follow_up = pending(None);
    let item = QueueItemId::new(Uuid::from_u128(77));
    let (sent, event) = follow_up
        .mark_sent(item, at("2025-01-01T09:00:01.000Z"))
        .unwrap();
    assert_eq!(sent.status, FollowUpStatus::Sent);
    assert_eq!(sent.provider_message_id, Some(item.to_string()));
    assert!(!sent.is_due(at("2030-01-01T00:00:00.000Z")));
    assert_eq!(event.name(), "crm.followup.sent");
    assert_eq!(event.payload()["provider_message_id"], json!(item));
}

#[test]
fn marking_failed_records_the_code_and_whether_a_retry_can_help() {
    let follow_up = pending(None);
    let now = at("2025-01-01T09:00:01.000Z");
    for (reason, code, retryable) in [
        (
            FailureReason::OutboundContractInvalid,
            "OUTBOUND_CONTRACT_INVALID",
            false,
        ),
        (
            FailureReason::ProviderSendError,
            "PROVIDER_SEND_ERROR",
            true,
        ),
        (FailureReason::CampaignCanceled, "CAMPAIGN_CANCELED", false),
        (FailureReason::CampaignFailed, "CAMPAIGN_FAILED", false),
    ] {
        let (failed, event) = follow_up.mark_failed(reason, now).unwrap();
        assert_eq!(failed.status, FollowUpStatus::Failed);
        assert_eq!(failed.last_error_code.as_deref(), Some(code));
        assert!(failed.last_error_message.is_some());
        assert_eq!(event.payload()["error_code"], json!(code));
        assert_eq!(event.payload()["retryable"], json!(retryable));
    }
}

#[test]
fn sent_and_failed_are_final() {
    let now = at("2025-01-01T09:00:01.000Z");
    let item = QueueItemId::new(Uuid::from_u128(77));
    let (sent, _) = pending(None).mark_sent(item, now).unwrap();
    let (failed, _) = pending(None)
        .mark_failed(FailureReason::ProviderSendError, now)
        .unwrap();
    for done in [sent, failed] {
        assert!(done.mark_sent(item, now).is_err());
        assert!(
            done.mark_failed(FailureReason::CampaignFailed, now)
                .is_err()
        );
    }
}

#[test]
fn campaign_gating_holds_paused_and_fails_canceled_and_failed_campaigns() {
    use CampaignState::*;
    assert_eq!(gate(None, false), Gate::Dispatch);
    for state in [Draft, Scheduled, Running, Completed] {
        assert_eq!(gate(Some(state), false), Gate::Dispatch, "{state}");
    }
    assert_eq!(gate(Some(Paused), false), Gate::Hold);
    assert_eq!(
        gate(Some(Canceled), false),
        Gate::Fail(FailureReason::CampaignCanceled)
    );
    assert_eq!(
        gate(Some(Failed), false),
        Gate::Fail(FailureReason::CampaignFailed)
    );
}

#[test]
fn an_opted_out_recipient_fails_unless_the_campaign_holds_or_failed_first() {
    use CampaignState::*;
    let opted_out = Gate::Fail(FailureReason::RecipientOptedOut);
    assert_eq!(gate(None, true), opted_out);
    assert_eq!(gate(Some(Running), true), opted_out);
    assert_eq!(gate(Some(Paused), true), Gate::Hold);
    assert_eq!(
        gate(Some(Canceled), true),
        Gate::Fail(FailureReason::CampaignCanceled)
    );
}

#[test]
fn canceling_fails_a_pending_follow_up_once_and_refuses_a_final_one() {
    let follow_up = pending(None);
    let now = at("2025-01-01T09:00:05.000Z");

    let (canceled, event) = follow_up.cancel(now).unwrap().expect("a change");

    assert_eq!(canceled.status, FollowUpStatus::Failed);
    assert_eq!(canceled.last_error_code.as_deref(), Some("CANCELED"));
    assert!(matches!(
        event,
        crate::event::DomainEvent::FollowUpFailed {
            retryable: false,
            ..
        }
    ));
    assert_eq!(canceled.cancel(now), Ok(None), "a repeat changes nothing");
    let (sent, _) = follow_up
        .mark_sent(QueueItemId::new(Uuid::from_u128(9)), now)
        .unwrap();
    assert!(sent.cancel(now).is_err());
    let (failed, _) = follow_up
        .mark_failed(FailureReason::ProviderSendError, now)
        .unwrap();
    assert!(failed.cancel(now).is_err(), "failed for another reason");
}

#[test]
fn the_outbound_item_names_the_campaign_as_task_and_keys_on_the_follow_up() {
    let follow_up = pending(Some(3));
    let item = OutboundItem::for_follow_up(
        &follow_up,
        QueueItemId::new(Uuid::from_u128(77)),
        at("2025-01-01T09:00:01.000Z"),
    );
    let json = serde_json::to_value(&item).unwrap();
    assert_eq!(
        json["idempotency_key"],
        json!(format!("followup:{}", follow_up.followup_id))
    );
    assert_eq!(json["context"]["type"], json!("followup"));
    assert_eq!(json["context"]["task_id"], json!(Uuid::from_u128(3)));
    assert_eq!(
        json["context"]["module_source"],
        json!("mod-02-whatsapp-crm")
    );
    assert_eq!(
        json["recipient"],
        json!({"phone_e164": "+5511999998888", "lead_id": Uuid::from_u128(5)})
    );
    assert_eq!(
        json["message"],
        json!({"type": "text", "text": "Your invoice is due"})
    );
    assert_eq!(
        json["retry_policy"],
        json!({"max_attempts": 3, "backoff_ms": 500})
    );
    assert_eq!(json["trace_id"], json!("trace-0001"));
}

#[test]
fn without_a_campaign_the_follow_up_is_its_own_task() {
    let follow_up = pending(None);
    let item = OutboundItem::for_follow_up(
        &follow_up,
        QueueItemId::new(Uuid::from_u128(77)),
        at("2025-01-01T09:00:01.000Z"),
    );
    assert_eq!(item.context.task_id, follow_up.followup_id.as_uuid());
}
