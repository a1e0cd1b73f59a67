//! A tenant's sending policy: how fast its follow-ups may go out, and when they may not
//! (quiet hours, in the recipient's time zone). Decided where the drain claims work, so
//! that everything not yet handed over stays pending, visible and stoppable.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

/// The highest rate a policy may set, in follow-ups per second.
pub const MAX_RATE: u32 = 100_000;

/// The window the rate is measured over, in milliseconds: no tenant has more than its
/// rate of follow-ups marked sent in any window this long.
pub const RATE_WINDOW_MILLIS: i64 = 1_000;

/// A tenant's policy. `None` fields: no limit of that kind.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SendingPolicy {
    /// Follow-ups of the tenant marked sent in any one-second window.
    pub max_per_second: Option<u32>,
    pub quiet_hours: Option<QuietHours>,
    /// Follow-ups of one sender (a business phone number) marked sent in any one-second
    /// window; follow-ups without a sender share one budget.
    pub max_per_second_per_sender: Option<u32>,
    /// Distinct recipients sent to in any moving 24 hours (WhatsApp's messaging limit).
    pub daily_recipient_limit: Option<u32>,
    /// The least time between two follow-ups marked sent to one recipient (the pair rate).
    pub recipient_min_interval_ms: Option<u32>,
    /// Follow-ups marked sent to one recipient in any moving 24 hours, across campaigns.
    pub recipient_daily_cap: Option<u32>,
    /// Pause a running campaign whose recent deliveries fail too often.
    pub auto_pause: Option<AutoPause>,
}

/// When a running campaign is paused for its failures: more than `max_failure_ratio` of
/// its last `window` finished deliveries failed (see `failure_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AutoPauseFields")]
pub struct AutoPause {
    pub window: u32,
    pub max_failure_ratio: FailureRatio,
}

/// `AutoPause` as it is read, before its range is checked.
#[derive(Deserialize)]
struct AutoPauseFields {
    window: u32,
    max_failure_ratio: FailureRatio,
}

impl TryFrom<AutoPauseFields> for AutoPause {
    type Error = PolicyError;

    fn try_from(fields: AutoPauseFields) -> Result<Self, PolicyError> {
        Self::new(fields.window, fields.max_failure_ratio)
    }
}

/// The least and most deliveries an `auto_pause` window may span.
pub const AUTO_PAUSE_WINDOW: (u32, u32) = (10, 10_000);

impl AutoPause {
    pub fn new(window: u32, max_failure_ratio: FailureRatio) -> Result<Self, PolicyError> {
        let (min, max) = AUTO_PAUSE_WINDOW;
        if !(min..=max).contains(&window) {
            return Err(PolicyError::Window { min, max });
        }
        Ok(Self {
            window,
            max_failure_ratio,
        })
    }

    /// Whether `failures` among the window's deliveries are more than the policy allows.
    pub fn exceeded_by(&self, failures: u32) -> bool {
        u64::from(failures) * FailureRatio::SCALE
            > u64::from(self.max_failure_ratio.0) * u64::from(self.window)
    }
}

/// A ratio from 0 to 1, kept in millionths so that a policy compares and stores exactly;
/// written as the number from 0 to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FailureRatio(u32);

impl Serialize for FailureRatio {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for FailureRatio {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl FailureRatio {
    const SCALE: u64 = 1_000_000;

    /// The ratio nearest `value` to the millionth; `value` must be from 0 to 1.
    pub fn new(value: f64) -> Result<Self, PolicyError> {
        if !(0.0..=1.0).contains(&value) {
            return Err(PolicyError::Ratio(value.to_string()));
        }
        Ok(Self((value * Self::SCALE as f64).round() as u32))
    }

    /// The ratio in millionths, as stores keep it.
    pub fn millionths(self) -> u32 {
        self.0
    }

    pub fn from_millionths(millionths: u32) -> Result<Self, PolicyError> {
        if u64::from(millionths) > Self::SCALE {
            return Err(PolicyError::Ratio(format!("{millionths} millionths")));
        }
        Ok(Self(millionths))
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / Self::SCALE as f64
    }
}

/// The range of each numeric field, as the wire names it.
const RANGES: [(&str, u32, u32); 5] = [
    ("max_per_second", 1, MAX_RATE),
    ("max_per_second_per_sender", 1, 1_000),
    ("daily_recipient_limit", 1, 10_000_000),
    ("recipient_min_interval_ms", 1, 86_400_000),
    ("recipient_daily_cap", 1, 1_000),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
    /// The zone of recipients whose follow-up names none.
    pub time_zone: TimeZoneName,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{field} must be a whole number from {min} to {max}, or null for no limit")]
    OutOfRange {
        field: &'static str,
        min: u32,
        max: u32,
    },
    #[error("{0:?} is not a time of day as HH:MM (00:00 to 23:59)")]
    TimeOfDay(String),
    #[error("{0:?} is not an IANA time zone name (such as America/Sao_Paulo)")]
    TimeZone(String),
    #[error("start and end are the same time: a window of nothing")]
    EmptyWindow,
    #[error("auto_pause.window must be a whole number from {min} to {max}")]
    Window { min: u32, max: u32 },
    #[error("auto_pause.max_failure_ratio must be a number from 0 to 1, not {0}")]
    Ratio(String),
}

impl PolicyError {
    /// The policy field the error is about, as the wire names it.
    pub fn field(&self) -> &'static str {
        match self {
            Self::OutOfRange { field, .. } => field,
            Self::TimeOfDay(_) | Self::TimeZone(_) | Self::EmptyWindow => "quiet_hours",
            Self::Window { .. } | Self::Ratio(_) => "auto_pause",
        }
    }
}

impl SendingPolicy {
    /// The policy, once every field is within its range.
    pub fn checked(self) -> Result<Self, PolicyError> {
        let values = [
            self.max_per_second,
            self.max_per_second_per_sender,
            self.daily_recipient_limit,
            self.recipient_min_interval_ms,
            self.recipient_daily_cap,
        ];
        for ((field, min, max), value) in RANGES.into_iter().zip(values) {
            if value.is_some_and(|value| !(min..=max).contains(&value)) {
                return Err(PolicyError::OutOfRange { field, min, max });
            }
        }
        Ok(self)
    }

    /// A policy with only a rate and quiet hours, checked.
    pub fn new(
        max_per_second: Option<u32>,
        quiet_hours: Option<QuietHours>,
    ) -> Result<Self, PolicyError> {
        Self {
            max_per_second,
            quiet_hours,
            ..Self::default()
        }
        .checked()
    }
}

impl QuietHours {
    pub fn new(
        start: TimeOfDay,
        end: TimeOfDay,
        time_zone: TimeZoneName,
    ) -> Result<Self, PolicyError> {
        if start == end {
            return Err(PolicyError::EmptyWindow);
        }
        Ok(Self {
            start,
            end,
            time_zone,
        })
    }

    /// Whether `now` falls inside the window for a recipient in `zone` (the policy's own
    /// zone when `None`). The window is local wall-clock time, so it follows
    /// daylight-saving changes; `end` before `start` spans midnight.
    pub fn contains(&self, zone: Option<&TimeZoneName>, now: Timestamp) -> bool {
        let zone = zone.unwrap_or(&self.time_zone);
        let Some(local) = zone.minute_of_day(now) else {
            return false;
        };
        let (start, end) = (self.start.minutes, self.end.minutes);
        if start < end {
            (start..end).contains(&local)
        } else {
            local >= start || local < end
        }
    }
}

/// A time of day to the minute, written `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    minutes: u16,
}

impl TimeOfDay {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let error = || PolicyError::TimeOfDay(text.to_owned());
        let (hours, minutes) = text.split_once(':').ok_or_else(error)?;
        let two_digits = |part: &str| {
            (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u16>().ok())
                .flatten()
        };
        match (two_digits(hours), two_digits(minutes)) {
            (Some(h), Some(m)) if h < 24 && m < 60 => Ok(Self {
                minutes: h * 60 + m,
            }),
            _ => Err(error()),
        }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone name the built-in time zone database knows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeZoneName(String);

impl TimeZoneName {
    pub fn parse(name: &str) -> Result<Self, PolicyError> {
        // Names are looked up as given: `UTC` and `America/Sao_Paulo`, not offsets or
        // POSIX strings.
        let known = !name.is_empty()
            && !name.starts_with(['+', '-'])
            && jiff::tz::TimeZone::get(name).is_ok();
        if known {
            Ok(Self(name.to_owned()))
        } else {
            Err(PolicyError::TimeZone(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Minutes since local midnight at `now`.
    fn minute_of_day(&self, now: Timestamp) -> Option<u16> {
        let zone = jiff::tz::TimeZone::get(&self.0).ok()?;
        let instant = jiff::Timestamp::from_millisecond(now.unix_millis()).ok()?;
        let time = zone.to_datetime(instant).time();
        Some(u16::try_from(time.hour()).ok()? * 60 + u16::try_from(time.minute()).ok()?)
    }
}

impl fmt::Display for TimeZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for TimeZoneName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TimeZoneName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How many more follow-ups a tenant limited to `rate` per second may have marked sent
/// now, when `sent` were marked sent in the window that ends now.
pub fn allowance(rate: u32, sent: u64) -> u64 {
    u64::from(rate).saturating_sub(sent)
}

#[cfg(test)]
mod tests;
