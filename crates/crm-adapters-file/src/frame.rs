//! Self-checking lines: `<crc32 of the JSON, 8 lowercase hex digits> <JSON>`.
//!
//! Journal lines use this framing, so a damaged line is told apart from a good one
//! without trusting anything around it. A line is complete when its checksum matches,
//! whether or not its final newline made it to the disk.

use serde::Serialize;

/// Why a line does not hold a checked JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("malformed line")]
    Framing,
    #[error("checksum mismatch")]
    Checksum,
}

/// The framed line of `value`, newline included.
pub(crate) fn encode(value: &impl Serialize) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("records always serialize");
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(format!("{:08x} ", crc32fast::hash(&json)).as_bytes());
    line.extend_from_slice(&json);
    line.push(b'\n');
    line
}

/// The JSON of a framed line (without its newline), once its checksum matched.
pub(crate) fn decode(line: &[u8]) -> Result<&[u8], FrameError> {
    if line.len() < 10 || line[8] != b' ' {
        return Err(FrameError::Framing);
    }
    let crc = std::str::from_utf8(&line[..8])
        .ok()
        .filter(|hex| hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or(FrameError::Framing)?;
    let json = &line[9..];
    if crc32fast::hash(json) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(json)
}

/// The crc32 of `bytes` as the manifest spells it.
pub(crate) fn checksum(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_decodes_to_the_json_it_was_made_of() {
        let line = encode(&serde_json::json!({"a": 1}));
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode(&line[..line.len() - 1]), Ok(&br#"{"a":1}"#[..]));
    }

    #[test]
    fn one_changed_byte_is_a_checksum_mismatch() {
        let mut line = encode(&serde_json::json!({"a": 1}));
        line.pop();
        let last = line.len() - 2;
        line[last] = b'2';
        assert_eq!(decode(&line), Err(FrameError::Checksum));
    }

    #[test]
    fn text_without_the_frame_is_malformed() {
        for line in [
            &b""[..],
            b"{}",
            b"0000000x {}",
            b"00000000{}",
            b"ABCDEF01 {}",
        ] {
            assert_eq!(decode(line), Err(FrameError::Framing), "{line:?}");
        }
    }
}
