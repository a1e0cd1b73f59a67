//! Instants on the wire: RFC 3339, UTC, millisecond precision (`2025-01-01T09:00:00.000Z`).
//!
//! Every timestamp is truncated to whole milliseconds when it is made, so what is stored,
//! compared and sent is always the same value whatever the backend's own precision.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// The text was not an RFC 3339 date-time, or lies outside the years 0000–9999.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an RFC 3339 date-time")]
pub struct TimestampError {
    pub text: String,
}

impl Timestamp {
    /// The earliest instant a timestamp can hold (year 0000), a lower bound for ranges.
    pub const MIN: Timestamp = Timestamp(time::macros::datetime!(0000-01-01 00:00 UTC));
    /// The latest instant a timestamp can hold, the last millisecond of year 9999.
    pub const MAX: Timestamp = Timestamp(time::macros::datetime!(9999-12-31 23:59:59.999 UTC));

    /// Wraps an instant, normalised to UTC and truncated to milliseconds.
    pub fn from_datetime(instant: OffsetDateTime) -> Self {
        let utc = instant.to_offset(UtcOffset::UTC);
        let millis = utc.millisecond();
        Self(
            utc.replace_nanosecond(u32::from(millis) * 1_000_000)
                .expect("whole milliseconds are a valid nanosecond value"),
        )
    }

    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let error = || TimestampError {
            text: text.to_owned(),
        };
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| error())?;
        // The offset can carry an instant past the years the type holds.
        let utc = parsed.checked_to_offset(UtcOffset::UTC).ok_or_else(error)?;
        // Four-digit years only, so the value always prints back in RFC 3339 form.
        if !(0..=9999).contains(&utc.year()) {
            return Err(error());
        }
        Ok(Self::from_datetime(utc))
    }

    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
            .ok()
            .map(Self)
    }

    pub fn unix_millis(&self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    pub fn as_datetime(&self) -> OffsetDateTime {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let text = self.0.format(&format).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_normalised_to_utc_with_milliseconds() {
        let parsed = Timestamp::parse("2025-01-01T11:00:00.123456+02:00").unwrap();
        assert_eq!(parsed.to_string(), "2025-01-01T09:00:00.123Z");
    }

    #[test]
    fn text_that_is_not_rfc3339_is_refused() {
        for text in [
            "tomorrow",
            "2025-13-01T00:00:00Z",
            "2025-01-01 09:00:00",
            "",
        ] {
            assert!(Timestamp::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn offsets_that_carry_an_instant_outside_years_0000_to_9999_are_refused() {
        for text in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            assert!(Timestamp::parse(text).is_err(), "{text}");
        }
        let last = Timestamp::parse("9999-12-31T23:59:59.999+00:00").unwrap();
        assert_eq!(last.to_string(), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_leap_second_reads_as_the_last_millisecond_of_its_minute() {
        let leap = Timestamp::parse("1990-12-31T23:59:60Z").unwrap();
        assert_eq!(leap.to_string(), "1990-12-31T23:59:59.999Z");
    }

    #[test]
    fn unix_millis_round_trip() {
        let parsed = Timestamp::parse("2025-01-01T09:00:00.042Z").unwrap();
        assert_eq!(
            Timestamp::from_unix_millis(parsed.unix_millis()),
            Some(parsed)
        );
    }
}
