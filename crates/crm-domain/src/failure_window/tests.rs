use uuid::Uuid;

use super::*;
use crate::delivery::ReceiptTimes;
use crate::delivery::tests::{at, sent};
use crate::policy::FailureRatio;

fn policy(window: u32, ratio: f64) -> AutoPause {
    AutoPause::new(window, FailureRatio::new(ratio).unwrap()).unwrap()
}

/// Follow-up `n`, its delivery in `status`.
fn delivery(n: u128, status: DeliveryStatus) -> FollowUp {
    let (mut follow_up, _) = sent();
    follow_up.followup_id = FollowUpId::new(Uuid::from_u128(n));
    follow_up.delivery = Some(Delivery {
        status,
        attempts: 1,
        provider_message_id: None,
        error_code: None,
        updated_at: at(1),
        receipts: ReceiptTimes::default(),
    });
    follow_up
}

fn finished(n: u128, failed: bool) -> FinishedDelivery {
    FinishedDelivery {
        followup_id: FollowUpId::new(Uuid::from_u128(n)),
        failed,
    }
}

#[test]
fn a_failure_that_takes_the_window_past_the_ratio_pauses_and_names_the_numbers() {
    // 10 deliveries, 2 failed: at the ratio 0.2, not past it.
    let recent = (0..10).map(|n| finished(n, n < 2));
    let mut window = FailureWindow::new(policy(10, 0.2), recent);
    assert_eq!(window.failures(), 2);
    // The 11th, failed, pushes out a success (the oldest): 3 of 10.
    let cause = window.record(&delivery(100, DeliveryStatus::Failed));
    assert_eq!(
        cause,
        Some(PauseCause::FailureRatio {
            failures: 3,
            window: 10,
            max_failure_ratio: FailureRatio::new(0.2).unwrap(),
            followup_id: FollowUpId::new(Uuid::from_u128(100)),
        })
    );
}

#[test]
fn successes_never_pause_even_when_the_window_is_already_past_the_ratio() {
    let mut window = FailureWindow::new(policy(10, 0.1), (0..10).map(|n| finished(n, true)));
    for n in 100..105 {
        assert_eq!(window.record(&delivery(n, DeliveryStatus::Accepted)), None);
    }
    assert_eq!(window.failures(), 5);
}

#[test]
fn a_young_campaign_pauses_once_its_failures_exceed_the_ratio_of_a_full_window() {
    // Window 100 at 0.1: the 11th failure pauses, however few deliveries came before.
    let mut window = FailureWindow::new(policy(100, 0.1), []);
    for n in 0..10 {
        assert_eq!(
            window.record(&delivery(n, DeliveryStatus::Failed)),
            None,
            "{n}"
        );
    }
    assert!(
        window
            .record(&delivery(10, DeliveryStatus::Failed))
            .is_some()
    );
}

#[test]
fn a_message_accepted_then_failed_counts_once_as_a_failure_at_the_newest_place() {
    let mut window = FailureWindow::new(policy(10, 0.5), (0..10).map(|n| finished(n, false)));
    // Follow-up 9 (the oldest) fails by a receipt: it leaves its old place and no
    // delivery is pushed out.
    assert_eq!(window.record(&delivery(9, DeliveryStatus::Failed)), None);
    assert_eq!(window.failures(), 1);
    // Then one new success pushes out the oldest, follow-up 8, not 9.
    window.record(&delivery(50, DeliveryStatus::Accepted));
    assert_eq!(window.failures(), 1);
}

#[test]
fn unfinished_deliveries_are_not_in_the_window() {
    let mut window = FailureWindow::new(policy(10, 0.0), []);
    assert_eq!(window.record(&delivery(1, DeliveryStatus::Retrying)), None);
    assert_eq!(window.record(&sent().0), None);
    assert_eq!(window.failures(), 0);
    // At 0.0 the first failure pauses.
    assert!(
        window
            .record(&delivery(2, DeliveryStatus::Failed))
            .is_some()
    );
}

#[test]
fn a_ratio_of_one_never_pauses() {
    let mut window = FailureWindow::new(policy(10, 1.0), []);
    for n in 0..30 {
        assert_eq!(window.record(&delivery(n, DeliveryStatus::Failed)), None);
    }
    assert_eq!(window.failures(), 10);
}

#[test]
fn only_the_window_s_newest_deliveries_are_read() {
    let recent = (0..20).map(|n| finished(n, n >= 10));
    assert_eq!(FailureWindow::new(policy(10, 0.5), recent).failures(), 0);
}

#[test]
fn policies_refuse_windows_and_ratios_out_of_range() {
    let ratio = FailureRatio::new(0.5).unwrap();
    assert!(AutoPause::new(9, ratio).is_err());
    assert!(AutoPause::new(10_001, ratio).is_err());
    assert!(AutoPause::new(10, ratio).is_ok());
    for bad in [-0.1, 1.000_001, f64::NAN, f64::INFINITY] {
        assert!(FailureRatio::new(bad).is_err(), "{bad}");
    }
    assert_eq!(
        FailureRatio::new(0.123_456_7).unwrap().millionths(),
        123_457
    );
    assert!(FailureRatio::from_millionths(1_000_001).is_err());
}

#[test]
fn a_policy_read_from_json_is_checked_like_one_built_in_code() {
    let read = |text: &str| serde_json::from_str::<AutoPause>(text);
    let policy = read(r#"{"window": 10, "max_failure_ratio": 0.25}"#).unwrap();
    assert_eq!(policy, self::policy(10, 0.25));
    assert_eq!(
        serde_json::to_value(policy).unwrap(),
        serde_json::json!({"window": 10, "max_failure_ratio": 0.25})
    );
    assert!(read(r#"{"window": 9, "max_failure_ratio": 0.25}"#).is_err());
    assert!(read(r#"{"window": 10, "max_failure_ratio": 1.5}"#).is_err());
}
