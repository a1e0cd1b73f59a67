//! Bearer tokens: `--api-token` guards the `Api` endpoints (`/v1/*`), `--internal-token`
//! the `Internal` ones (`/internal/*`); each endpoint's declaration says which it is.
//! Health, readiness, metrics and the OpenAPI document stay open.

use actix_web::dev::ServiceRequest;
use actix_web::http::header::AUTHORIZATION;
use actix_web::web;

use crate::config::Secret;
use crate::endpoint::Access;
use crate::error::ApiError;

/// The configured tokens; a family without a token is open (loopback-only servers).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub api: Option<Secret>,
    pub internal: Option<Secret>,
}

impl Tokens {
    fn required_for(&self, access: Access) -> Option<&Secret> {
        match access {
            Access::Api => self.api.as_ref(),
            Access::Internal => self.internal.as_ref(),
            Access::Open => None,
        }
    }
}

/// Compares in time that depends only on the lengths, so response timing does not
/// reveal how much of a guess was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let differing = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(differing) == 0 && given.len() == expected.len()
}

fn authorized(request: &ServiceRequest, expected: &Secret) -> bool {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        // The scheme name is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, token)| {
            same_secret(token.trim().as_bytes(), expected.expose().as_bytes())
        })
}

/// Whether `request` carries the token its endpoint's access needs. The router has
/// matched the decoded path before this runs, so no spelling of a path slips past it.
pub fn check(access: Access, request: &ServiceRequest) -> Result<(), ApiError> {
    let allowed = match request
        .app_data::<web::Data<Tokens>>()
        .and_then(|tokens| tokens.required_for(access))
    {
        None => true,
        Some(expected) => authorized(request, expected),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cret", b"s3cret-longer"));
        assert!(!same_secret(b"", b"s3cret"));
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        let expected = Secret::new("s3cret");
        for header in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
            let request = actix_web::test::TestRequest::default()
                .insert_header((AUTHORIZATION, header))
                .to_srv_request();
            assert!(authorized(&request, &expected), "{header}");
        }
        for header in ["Basic s3cret", "Bearers3cret", "s3cret", "Bearer s3cre"] {
            let request = actix_web::test::TestRequest::default()
                .insert_header((AUTHORIZATION, header))
                .to_srv_request();
            assert!(!authorized(&request, &expected), "{header}");
        }
    }

    #[test]
    fn each_route_family_needs_its_own_token() {
        let tokens = Tokens {
            api: Some(Secret::new("a")),
            internal: Some(Secret::new("i")),
        };
        assert_eq!(
            tokens.required_for(Access::Api).map(Secret::expose),
            Some("a")
        );
        assert_eq!(
            tokens.required_for(Access::Internal).map(Secret::expose),
            Some("i")
        );
        assert!(tokens.required_for(Access::Open).is_none());
    }
}
