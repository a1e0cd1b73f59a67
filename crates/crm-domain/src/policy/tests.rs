use super::*;

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn zone(name: &str) -> TimeZoneName {
    TimeZoneName::parse(name).unwrap()
}

fn night(time_zone: &str) -> QuietHours {
    QuietHours::new(
        TimeOfDay::parse("21:00").unwrap(),
        TimeOfDay::parse("08:00").unwrap(),
        zone(time_zone),
    )
    .unwrap()
}

#[test]
fn times_of_day_are_hh_mm_and_print_back_the_same() {
    for text in ["00:00", "08:05", "23:59"] {
        assert_eq!(TimeOfDay::parse(text).unwrap().to_string(), text);
    }
    for bad in [
        "24:00", "8:00", "08:60", "0800", "08:00:00", "", "ab:cd", "+1:00",
    ] {
        assert!(TimeOfDay::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn only_iana_names_the_database_knows_are_time_zones() {
    for name in ["UTC", "America/Sao_Paulo", "Europe/Lisbon", "Asia/Kolkata"] {
        assert!(TimeZoneName::parse(name).is_ok(), "{name}");
    }
    for bad in ["", "Mars/Olympus", "+03:00", "-3", "America/Sao Paulo"] {
        assert!(TimeZoneName::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn rates_run_from_one_to_the_maximum() {
    assert!(SendingPolicy::new(Some(1), None).is_ok());
    assert!(SendingPolicy::new(Some(MAX_RATE), None).is_ok());
    assert!(SendingPolicy::new(None, None).is_ok());
    let rate = PolicyError::OutOfRange {
        field: "max_per_second",
        min: 1,
        max: MAX_RATE,
    };
    assert_eq!(SendingPolicy::new(Some(0), None), Err(rate.clone()));
    assert_eq!(SendingPolicy::new(Some(MAX_RATE + 1), None), Err(rate));
}

#[test]
fn every_limit_is_refused_out_of_its_range_naming_its_field() {
    type Case = (&'static str, u32, u32, fn(u32) -> SendingPolicy);
    let cases: [Case; 4] = [
        ("max_per_second_per_sender", 1, 1_000, |value| {
            SendingPolicy {
                max_per_second_per_sender: Some(value),
                ..SendingPolicy::default()
            }
        }),
        ("daily_recipient_limit", 1, 10_000_000, |value| {
            SendingPolicy {
                daily_recipient_limit: Some(value),
                ..SendingPolicy::default()
            }
        }),
        ("recipient_min_interval_ms", 1, 86_400_000, |value| {
            SendingPolicy {
                recipient_min_interval_ms: Some(value),
                ..SendingPolicy::default()
            }
        }),
        ("recipient_daily_cap", 1, 1_000, |value| SendingPolicy {
            recipient_daily_cap: Some(value),
            ..SendingPolicy::default()
        }),
    ];
    for (field, min, max, policy) in cases {
        assert!(policy(min).checked().is_ok(), "{field} {min}");
        assert!(policy(max).checked().is_ok(), "{field} {max}");
        for bad in [min - 1, max + 1] {
            let error = policy(bad).checked().unwrap_err();
            assert_eq!(error.field(), field);
            assert_eq!(error, PolicyError::OutOfRange { field, min, max });
        }
    }
}

#[test]
fn a_window_across_midnight_holds_the_night_in_local_time() {
    let quiet = night("America/Sao_Paulo"); // UTC-3, no daylight saving since 2019
    assert!(quiet.contains(None, at("2025-06-01T00:30:00Z"))); // 21:30 local
    assert!(quiet.contains(None, at("2025-06-01T10:59:00Z"))); // 07:59 local
    assert!(!quiet.contains(None, at("2025-06-01T11:00:00Z"))); // 08:00 local
    assert!(!quiet.contains(None, at("2025-06-01T23:59:00Z"))); // 20:59 local
}

#[test]
fn a_window_within_one_day_holds_only_between_start_and_end() {
    let lunch = QuietHours::new(
        TimeOfDay::parse("12:00").unwrap(),
        TimeOfDay::parse("13:30").unwrap(),
        zone("UTC"),
    )
    .unwrap();
    assert!(!lunch.contains(None, at("2025-06-01T11:59:59Z")));
    assert!(lunch.contains(None, at("2025-06-01T12:00:00Z")));
    assert!(lunch.contains(None, at("2025-06-01T13:29:59Z")));
    assert!(!lunch.contains(None, at("2025-06-01T13:30:00Z")));
}

#[test]
fn the_recipients_zone_wins_over_the_policys() {
    let quiet = night("UTC");
    let now = at("2025-06-01T22:00:00Z"); // 22:00 in UTC, 07:30 in Kolkata, 18:00 in New York
    assert!(quiet.contains(None, now));
    assert!(quiet.contains(Some(&zone("Asia/Kolkata")), now));
    assert!(!quiet.contains(Some(&zone("America/New_York")), now));
}

#[test]
fn quiet_hours_follow_daylight_saving_changes() {
    let quiet = night("Europe/Lisbon");
    // 20:30 UTC is 21:30 in Lisbon in summer (UTC+1), 20:30 in winter (UTC+0).
    assert!(quiet.contains(None, at("2025-07-01T20:30:00Z")));
    assert!(!quiet.contains(None, at("2025-01-15T20:30:00Z")));
    // The night the clocks go back (2025-10-26), 07:30 UTC is 07:30 local: still quiet.
    assert!(quiet.contains(None, at("2025-10-26T07:30:00Z")));
    // The morning the clocks go forward (2025-03-30), 07:30 UTC is 08:30 local: open.
    assert!(!quiet.contains(None, at("2025-03-30T07:30:00Z")));
}

#[test]
fn an_empty_window_is_refused() {
    let at_eight = TimeOfDay::parse("08:00").unwrap();
    assert_eq!(
        QuietHours::new(at_eight, at_eight, zone("UTC")),
        Err(PolicyError::EmptyWindow)
    );
}

#[test]
fn the_allowance_is_what_the_window_has_left() {
    assert_eq!(allowance(80, 0), 80);
    assert_eq!(allowance(80, 79), 1);
    assert_eq!(allowance(80, 80), 0);
    assert_eq!(allowance(80, 500), 0);
}
