//! Keyset pagination shared by every list: oldest first by `(created_at, id)`.
//!
//! A cursor is the position of the last item of a page. It is opaque to clients; a
//! text the server could not have issued does not decode.

use uuid::Uuid;

use crate::timestamp::Timestamp;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

const CURSOR_PREFIX: &str = "c1_";

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
        let millis: i64 = millis.parse().ok()?;
        if id.len() != 32 {
            return None;
        }
        let id = Uuid::try_parse(id).ok()?;
        let cursor = Self {
            created_at: Timestamp::from_unix_millis(millis)?,
            id,
        };
        // Only the canonical spelling is one we issued.
        (cursor.encode() == text).then_some(cursor)
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
    fn texts_the_server_did_not_issue_do_not_decode() {
        for text in [
            "",
            "abc",
            "c1_",
            "c1_12_zz",
            "c1_+12_00000000000000000000000000000000",
            "c1_1_0000",
        ] {
            assert_eq!(Cursor::decode(text), None, "{text}");
        }
    }
}
