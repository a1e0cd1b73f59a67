//! Free-form metadata on records, and the one limit on it.
//!
//! Metadata is kept as the client sent it, but a record may not grow without bound:
//! transitions merge their metadata into the campaign's, and a record that grows on
//! every change would make each later change rewrite all of it.

use serde_json::{Map, Value};

/// The most bytes a record's metadata may take, written as compact JSON.
pub const MAX_METADATA_BYTES: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata would take {bytes} bytes, over the limit of {limit} bytes for a record")]
pub struct MetadataTooLarge {
    pub bytes: usize,
    pub limit: usize,
}

/// Checks that `metadata` fits a record.
pub fn check(metadata: &Map<String, Value>) -> Result<(), MetadataTooLarge> {
    let bytes = serde_json::to_vec(metadata)
        .map(|json| json.len())
        .unwrap_or(usize::MAX);
    if bytes > MAX_METADATA_BYTES {
        return Err(MetadataTooLarge {
            bytes,
            limit: MAX_METADATA_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metadata_up_to_the_limit_fits_and_one_byte_more_does_not() {
        // `{"k":"…"}` is 8 bytes around the text.
        let fits = json!({"k": "x".repeat(MAX_METADATA_BYTES - 8)});
        assert_eq!(check(fits.as_object().unwrap()), Ok(()));
        let over = json!({"k": "x".repeat(MAX_METADATA_BYTES - 7)});
        assert_eq!(
            check(over.as_object().unwrap()),
            Err(MetadataTooLarge {
                bytes: MAX_METADATA_BYTES + 1,
                limit: MAX_METADATA_BYTES
            })
        );
    }
}
