//! Strict JSON for request bodies: an object that repeats a key is refused (parsers
//! disagree on which value wins, so a gateway and this service could read different
//! tenants from one body), and numbers are kept exactly.
//!
//! Numbers are held as their decimal text, never as a float, and written in the plain
//! decimal form PostgreSQL's `numeric` (and so `jsonb`) gives them: exponents are written
//! out (`1E2` is `100`, `1.5e-3` is `0.0015`), trailing zeros of a fraction are kept
//! (`1.50`), and minus zero is zero. Both stores then hold and return the same text.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("{0}")]
    Syntax(String),
    #[error("the object at {pointer:?} repeats the key {key:?}")]
    DuplicateKey { pointer: String, key: String },
    #[error("the number at {pointer:?} is out of range: {text}")]
    NumberOutOfRange { pointer: String, text: String },
}

/// Parses `bytes`, refusing repeated keys, with every number in its exact decimal form.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    NoDuplicates {
        pointer: String::new(),
    }
    .deserialize(&mut deserializer)
    .map_err(|error| match duplicate_key(&error) {
        Some(duplicate) => duplicate,
        None => JsonError::Syntax(error.to_string()),
    })?;
    let mut value: Value =
        serde_json::from_slice(bytes).map_err(|error| JsonError::Syntax(error.to_string()))?;
    canonical_numbers(&mut value, &mut String::new())?;
    Ok(value)
}

/// A duplicate key is reported through serde's custom error, tagged so it can be told
/// apart from a syntax error.
const DUPLICATE: &str = "\u{1}duplicate\u{1}";

fn duplicate_key(error: &serde_json::Error) -> Option<JsonError> {
    let text = error.to_string();
    let rest = text.strip_prefix(DUPLICATE)?;
    let (pointer, key) = rest.split_once(DUPLICATE)?;
    let key = key.split(" at line ").next().unwrap_or(key);
    Some(JsonError::DuplicateKey {
        pointer: pointer.to_owned(),
        key: key.to_owned(),
    })
}

/// Walks a document only to check that no object repeats a key.
struct NoDuplicates {
    pointer: String,
}

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let mut index = 0;
        while items
            .next_element_seed(NoDuplicates {
                pointer: format!("{}/{index}", self.pointer),
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = entries.next_key::<String>()? {
            let escaped = key.replace('~', "~0").replace('/', "~1");
            let pointer = format!("{}/{escaped}", self.pointer);
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "{DUPLICATE}{}{DUPLICATE}{key}",
                    self.pointer
                )));
            }
            entries.next_value_seed(NoDuplicates { pointer })?;
        }
        Ok(())
    }
}

/// The most digits a number may have once its exponent is written out, which keeps it
/// within what PostgreSQL's `numeric` holds.
const MAX_DIGITS: usize = 1_000;

fn canonical_numbers(value: &mut Value, pointer: &mut String) -> Result<(), JsonError> {
    match value {
        Value::Number(number) => {
            let text = number.to_string();
            let canonical = canonical_number(&text).ok_or_else(|| JsonError::NumberOutOfRange {
                pointer: pointer.clone(),
                text: text.clone(),
            })?;
            if canonical != text {
                *number = serde_json::from_str::<Number>(&canonical)
                    .expect("a canonical number is a JSON number");
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let length = pointer.len();
                pointer.push_str(&format!("/{index}"));
                canonical_numbers(item, pointer)?;
                pointer.truncate(length);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields.iter_mut() {
                let length = pointer.len();
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                canonical_numbers(item, pointer)?;
                pointer.truncate(length);
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
    Ok(())
}

/// The plain decimal form of a JSON number's text, or `None` when it would need more
/// than `MAX_DIGITS` digits.
pub fn canonical_number(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i64>().ok()?),
        None => (unsigned, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits: String = [integer, fraction].concat();
    // The value is digits × 10^-scale; a positive scale is the count of fraction digits.
    let scale = i64::try_from(fraction.len()).ok()?.checked_sub(exponent)?;
    let width = usize::try_from(scale.unsigned_abs()).ok()?;
    if digits.len().saturating_add(width) > MAX_DIGITS {
        return None;
    }
    let mut plain = if scale <= 0 {
        let mut whole = digits;
        whole.extend(std::iter::repeat_n('0', width));
        let whole = whole.trim_start_matches('0');
        if whole.is_empty() { "0" } else { whole }.to_owned()
    } else {
        let padded = format!("{digits:0>width$}", width = width + 1);
        let (whole, fraction) = padded.split_at(padded.len() - width);
        let whole = whole.trim_start_matches('0');
        format!("{}.{fraction}", if whole.is_empty() { "0" } else { whole })
    };
    if negative && plain.bytes().any(|b| matches!(b, b'1'..=b'9')) {
        plain.insert(0, '-');
    }
    Some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_plain_decimal_form_exactly() {
        for (text, plain) in [
            (
                "123456789012345678901234567890",
                "123456789012345678901234567890",
            ),
            ("1E2", "100"),
            ("1e+2", "100"),
            ("1.5E1", "15"),
            ("1.50", "1.50"),
            ("100e-2", "1.00"),
            ("1.5e-3", "0.0015"),
            ("-0", "0"),
            ("-0.0", "0.0"),
            ("-12.5", "-12.5"),
            ("0", "0"),
            ("0.1", "0.1"),
            ("7", "7"),
        ] {
            assert_eq!(canonical_number(text).as_deref(), Some(plain), "{text}");
        }
    }

    #[test]
    fn numbers_too_long_to_write_out_are_out_of_range() {
        assert_eq!(canonical_number("1e1000000"), None);
        assert_eq!(canonical_number("1e-5000"), None);
        assert!(canonical_number("1e900").is_some());
    }

    #[test]
    fn a_repeated_key_is_refused_with_where_it_is() {
        let error = parse(br#"{"request": {"tenant_id": "A", "tenant_id": "B"}}"#).unwrap_err();
        assert_eq!(
            error,
            JsonError::DuplicateKey {
                pointer: "/request".into(),
                key: "tenant_id".into()
            }
        );
        assert!(
            parse(br#"[{"a": 1}, {"a": 2}]"#).is_ok(),
            "keys repeat across objects"
        );
    }

    #[test]
    fn metadata_numbers_round_trip_exactly() {
        let value =
            parse(br#"{"n": 123456789012345678901234567890, "e": 1E2, "f": 0.10}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&value).unwrap(),
            r#"{"e":100,"f":0.10,"n":123456789012345678901234567890}"#
        );
    }
}
