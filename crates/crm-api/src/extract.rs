//! Request extraction: JSON bodies under the size limit and checked against a contract,
//! and query strings as name/value pairs.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use crm_contracts::{Contract, Contracts};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::endpoint::BodySize;
use crate::error::ApiError;
use crate::json::{self, JsonError};

/// The largest body a route accepts (`--body-limit`, and `--batch-body-limit` for the
/// routes that declare `BodySize::Batch`), and how long a client may take to send it
/// (`--request-timeout-ms`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub bytes: usize,
    pub batch_bytes: usize,
    pub timeout: std::time::Duration,
}

impl BodyLimit {
    fn of(&self, size: BodySize) -> usize {
        match size {
            BodySize::Standard => self.bytes,
            BodySize::Batch => self.batch_bytes,
        }
    }
}

/// A request body read up to the limit its endpoint declares (`routes::admit` marks the
/// request with it). Bodies over it are refused as soon as the limit is passed, without
/// buffering the rest.
pub struct RawBody(pub web::Bytes);

impl FromRequest for RawBody {
    type Error = ApiError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, ApiError>>>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let size = request
            .extensions()
            .get::<BodySize>()
            .copied()
            .unwrap_or_default();
        let (limit, timeout) = request
            .app_data::<web::Data<BodyLimit>>()
            .map_or((65_536, std::time::Duration::from_secs(10)), |limit| {
                (limit.of(size), limit.timeout)
            });
        let json_or_none = request
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .is_none_or(|value| is_json(value.to_str().unwrap_or_default()));
        let declared = request
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let payload = web::Payload::from_request(request, payload);
        Box::pin(async move {
            let payload = payload
                .await
                .map_err(|error| ApiError::InvalidJson(error.to_string()))?;
            if declared.is_some_and(|length| length > limit) {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            // A client that trickles its body must not hold the connection forever.
            let received = tokio::time::timeout(timeout, payload.to_bytes_limited(limit))
                .await
                .map_err(|_| ApiError::RequestTimeout { timeout })?;
            match received {
                // A body declared as something else is refused, so that a browser form
                // or a `text/plain` fetch from a web page cannot drive the API.
                Ok(Ok(body)) if !body.is_empty() && !json_or_none => Err(ApiError::InvalidJson(
                    "content-type must be application/json".to_owned(),
                )),
                Ok(Ok(body)) => Ok(RawBody(body)),
                Ok(Err(error)) => Err(ApiError::InvalidJson(error.to_string())),
                Err(_) => Err(ApiError::PayloadTooLarge { limit }),
            }
        })
    }
}

/// `application/json`, or any `application/<something>+json`, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a body as JSON, checks it against `contract` and deserializes it.
/// `empty` is the document an empty body stands for, if an empty body is allowed.
pub fn contract_body<T: DeserializeOwned>(
    contracts: &Contracts,
    contract: Contract,
    body: &[u8],
    empty: Option<Value>,
) -> Result<T, ApiError> {
    let json = json_body(body, empty)?;
    judge(contracts, contract, json, "")
}

/// Parses a body as JSON, strictly (no repeated keys, no numbers past what the service
/// can hold). `empty` is the document an empty body stands for, if one is allowed.
pub fn json_body(body: &[u8], empty: Option<Value>) -> Result<Value, ApiError> {
    match (body.iter().all(u8::is_ascii_whitespace), empty) {
        (true, Some(default)) => Ok(default),
        _ => json::parse(body).map_err(|error| match error {
            JsonError::Syntax(_) | JsonError::DuplicateKey { .. } => {
                ApiError::InvalidJson(error.to_string())
            }
            JsonError::NumberOutOfRange { ref pointer, .. } => {
                ApiError::violation(pointer, error.to_string())
            }
        }),
    }
}

/// Checks a document against `contract` and deserializes it. `at` is the document's own
/// pointer in the body (`""` for the body itself), which every violation starts with.
pub fn judge<T: DeserializeOwned>(
    contracts: &Contracts,
    contract: Contract,
    json: Value,
    at: &str,
) -> Result<T, ApiError> {
    contracts
        .validate(contract, &json)
        .map_err(|violations| ApiError::Validation(violations).rebased("", at))?;
    typed(json, at)
}

/// Deserializes a document its contract has passed, refusing text with a NUL character
/// (which PostgreSQL cannot store). `at` as in `judge`.
pub fn typed<T: DeserializeOwned>(json: Value, at: &str) -> Result<T, ApiError> {
    if let Some(pointer) = nul_character(&json, at.to_owned()) {
        return Err(ApiError::violation(
            &pointer,
            "text must not contain the U+0000 character",
        ));
    }
    // The contract is stricter than the types, so a document that passed it always fits.
    serde_json::from_value(json).map_err(|error| ApiError::violation(at, error.to_string()))
}

/// Reads a number the contract has already proven to be a whole number, in any of the
/// forms JSON Schema counts as an integer (`5`, `5.0`, `5e0`); past `u64` it saturates,
/// which every caller then caps.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = <f64 as serde::Deserialize>::deserialize(deserializer)?;
    if number.fract() != 0.0 || number < 0.0 {
        return Err(serde::de::Error::custom("must be a whole number"));
    }
    // `as` saturates at `u64::MAX`.
    Ok(number as u64)
}

/// `whole_number` for an optional field (with `#[serde(default)]`).
pub fn optional_whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    whole_number(deserializer).map(Some)
}

/// The pointer of the first string (or key) holding U+0000, which no store keeps: text
/// in PostgreSQL cannot contain it, so it is refused everywhere alike.
fn nul_character(value: &Value, pointer: String) -> Option<String> {
    match value {
        Value::String(text) => text.contains('\0').then_some(pointer),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(index, item)| nul_character(item, format!("{pointer}/{index}"))),
        Value::Object(fields) => fields.iter().find_map(|(key, item)| {
            let escaped = key.replace('~', "~0").replace('/', "~1");
            let pointer = format!("{pointer}/{escaped}");
            if key.contains('\0') {
                Some(pointer)
            } else {
                nul_character(item, pointer)
            }
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// The query string as name/value pairs, decoded strictly: an escape that is not `%`
/// and two hex digits, text that is not UTF-8 once decoded, or U+0000 is a
/// `validation_error` naming the parameter (never text quietly replaced by `\u{fffd}`).
pub fn query_pairs(request: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for part in request
        .query_string()
        .split('&')
        .filter(|part| !part.is_empty())
    {
        let (raw_name, raw_value) = part.split_once('=').unwrap_or((part, ""));
        let name = decode_component(raw_name)
            .map_err(|message| ApiError::invalid_query(raw_name, message))?;
        let value = decode_component(raw_value)
            .map_err(|message| ApiError::invalid_query(&name, message))?;
        if name.contains('\0') || value.contains('\0') {
            return Err(ApiError::invalid_query(
                name.replace('\0', "\u{fffd}"),
                "text must not contain the U+0000 character",
            ));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// A path parameter, decoded strictly like a query parameter. It is read from the path
/// as the client sent it: the router's own copy has already replaced text that does not
/// decode with `\u{fffd}`.
pub fn path_param(request: &HttpRequest, name: &str) -> Result<String, ApiError> {
    let placeholder = format!("{{{name}}}");
    let raw = request
        .match_pattern()
        .and_then(|pattern| pattern.split('/').position(|part| part == placeholder))
        .and_then(|index| request.uri().path().split('/').nth(index))
        .unwrap_or_default();
    decode(raw, false)
        .and_then(|text| match text.contains('\0') {
            true => Err("text must not contain the U+0000 character"),
            false => Ok(text),
        })
        .map_err(|message| ApiError::invalid_path(name, message))
}

/// One name or value of a query string (`+` is a space).
fn decode_component(text: &str) -> Result<String, &'static str> {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = bytes
                    .get(index + 1..index + 3)
                    .and_then(|pair| std::str::from_utf8(pair).ok())
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or("has a `%` that is not followed by two hex digits")?;
                decoded.push(hex);
                index += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).map_err(|_| "is not UTF-8 text once decoded")
}

/// The last value of a parameter, as most HTTP stacks read repeated parameters.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::{decode, is_json};

    #[test]
    fn query_text_is_decoded_strictly() {
        assert_eq!(decode("a%20b+c", true).as_deref(), Ok("a b c"));
        assert_eq!(decode("a+b", false).as_deref(), Ok("a+b"));
        assert_eq!(decode("%E2%82%AC", true).as_deref(), Ok("€"));
        for bad in ["%", "%Z1", "%1", "%FF", "%C0%AF"] {
            assert!(decode(bad, true).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_json_media_types_are_json() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "json",
        ] {
            assert!(!is_json(other), "{other}");
        }
    }
}
