//! Keyset pagination shared by every list: oldest first by `(created_at, id)`.
//!
//! A cursor is the position of the last item of a page, spelled
//! `c1_<unix millis>_<32 hex digits>` (`CURSOR_PATTERN`). It is opaque to clients; a text
//! of another shape does not decode. A well-shaped cursor past either end of time is a
//! position like any other: it simply starts before the first or after the last item.

use uuid::Uuid;

use crate::timestamp::Timestamp;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

const CURSOR_PREFIX: &str = "c1_";

/// Exactly the texts `Cursor::decode` accepts.
pub const CURSOR_PATTERN: &str = "^c1_(0|-?[1-9][0-9]{0,17})_[0-9a-f]{32}$";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub created_at: Timestamp,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!(
            "{CURSOR_PREFIX}{}_{}",
            self.created_at.unix_millis(),
            self.id.simple()
        )
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (millis, id) = text.strip_prefix(CURSOR_PREFIX)?.split_once('_')?;
        let digits = millis.strip_prefix('-').unwrap_or(millis);
        let canonical_number = (digits == "0" || !digits.starts_with('0'))
            && (1..=18).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && millis != "-0";
        let canonical_id =
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical_number || !canonical_id {
            return None;
        }
        let millis: i64 = millis.parse().ok()?;
        let created_at = Timestamp::from_unix_millis(millis)
            .filter(|at| (Timestamp::MIN..=Timestamp::MAX).contains(at))
            .unwrap_or(if millis < 0 {
                Timestamp::MIN
            } else {
                Timestamp::MAX
            });
        Some(Self {
            created_at,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// A position in the event log (commit order), as a feed or trace reader holds it:
/// `e1_<position>`. Position 0 is before the first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventCursor(pub u64);

/// Exactly the texts `EventCursor::decode` accepts.
pub const EVENT_CURSOR_PATTERN: &str = "^e1_(0|[1-9][0-9]{0,18})$";

impl EventCursor {
    pub fn encode(&self) -> String {
        format!("e1_{}", self.0)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let digits = text.strip_prefix("e1_")?;
        let canonical = (digits == "0" || !digits.starts_with('0'))
            && (1..=19).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit());
        // Positions are counted as a signed 64-bit number by the database; a well-shaped
        // position past that is past every event, like any other beyond the last.
        canonical
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .map(|position| Self(position.min(i64::MAX as u64)))
    }
}

/// One page of a list and where the next one starts (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_decodes_to_what_was_encoded() {
        let cursor = Cursor {
            created_at: Timestamp::parse("2025-01-01T09:00:00.000Z").unwrap(),
            id: Uuid::from_u128(42),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn texts_of_another_shape_do_not_decode() {
        let zeros = "0".repeat(32);
        for text in [
            String::new(),
            "abc".into(),
            "c1_".into(),
            "c1_12_zz".into(),
            format!("c1_+12_{zeros}"),
            format!("c1_012_{zeros}"),
            format!("c1_-0_{zeros}"),
            "c1_1_0000".into(),
            format!("c1_1_{}", "A".repeat(32)),
        ] {
            assert_eq!(Cursor::decode(&text), None, "{text}");
        }
    }

    #[test]
    fn an_event_cursor_past_the_last_position_is_clamped_not_refused() {
        assert_eq!(
            EventCursor::decode("e1_9999999999999999999"),
            Some(EventCursor(i64::MAX as u64))
        );
    }

    #[test]
    fn an_event_cursor_decodes_to_what_was_encoded_and_nothing_else() {
        for position in [0, 1, 42, i64::MAX as u64] {
            assert_eq!(
                EventCursor::decode(&EventCursor(position).encode()),
                Some(EventCursor(position))
            );
        }
        for text in [
            "",
            "e1_",
            "e1_01",
            "e1_-1",
            "e1_1a",
            "c1_1",
            "e1_99999999999999999999",
        ] {
            assert_eq!(EventCursor::decode(text), None, "{text}");
        }
    }

    #[test]
    fn a_well_shaped_cursor_past_the_end_of_time_is_clamped_not_refused() {
        let zeros = "0".repeat(32);
        let late = Cursor::decode(&format!("c1_999999999999999999_{zeros}")).unwrap();
        assert_eq!(late.created_at, Timestamp::MAX);
        let early = Cursor::decode(&format!("c1_-999999999999999999_{zeros}")).unwrap();
        assert_eq!(early.created_at, Timestamp::MIN);
    }
}
