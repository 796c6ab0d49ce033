//! API-key authentication. Keys are configured as SHA-256 hashes; a request's key is hashed
//! and looked up, so the service never holds a plain key it did not generate itself.

use std::collections::HashMap;

use actix_web::http::header;
use actix_web::HttpRequest;
use recorder_actors::domain::OrganizationId;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::config::{ApiKey, Scope};

/// What a key may do: the organization it acts for, its applications and scopes.
#[derive(Debug, Clone)]
pub struct Grant {
    pub key_name: String,
    pub organization_id: OrganizationId,
    applications: Option<Vec<String>>,
    scopes: Vec<Scope>,
    /// Plain-RTP offers of this key may leave out the sender's address.
    pub rtp_any_source: bool,
}

impl Grant {
    pub fn may_use_application(&self, application_id: &str) -> bool {
        recorder_actors::messages::may_use(&self.applications, application_id)
    }

    /// The applications the key may use (`None`: every application of its organization), for
    /// the engine's lookups that must not even find another application's data.
    pub fn applications(&self) -> &recorder_actors::messages::Applications {
        &self.applications
    }

    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[derive(Debug, Default)]
pub struct KeyRing {
    by_hash: HashMap<[u8; 32], Grant>,
}

pub fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyRing {
    pub fn new(keys: &[ApiKey]) -> Self {
        let by_hash = keys
            .iter()
            .map(|k| {
                let grant = Grant {
                    key_name: k.name.clone(),
                    organization_id: OrganizationId::parse(k.organization_id.as_str())
                        .expect("a key's organization is a configured one, whose id the configuration checked"),
                    applications: k.applications.clone(),
                    scopes: k.scopes.clone(),
                    rtp_any_source: k.rtp_any_source,
                };
                (k.sha256, grant)
            })
            .collect();
        Self { by_hash }
    }

    /// Checks the `Authorization` header (`<key>` or `Bearer <key>`) and the scope.
    pub fn authorize(&self, req: &HttpRequest, scope: Scope) -> Result<Grant, ApiError> {
        let value = req
            .headers()
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header with an API key is required".into()))?;
        let text = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("the Authorization header is not valid text".into()))?
            .trim();
        let key = match text.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => text,
        };
        if key.is_empty() {
            return Err(ApiError::Unauthorized(
                "the Authorization header holds no API key".into(),
            ));
        }
        let grant = self
            .by_hash
            .get(&sha256(key))
            .ok_or_else(|| ApiError::Unauthorized("unknown API key".into()))?;
        if !grant.scopes.contains(&scope) {
            let name = match scope {
                Scope::Global => "global",
                Scope::Admin => "admin",
                Scope::Ops => "ops",
            };
            return Err(ApiError::Forbidden(format!("this API key lacks the {name} scope")));
        }
        tracing::debug!(key = %grant.key_name, organization_id = %grant.organization_id, "request authorized");
        Ok(grant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ring() -> KeyRing {
        KeyRing::new(&[ApiKey {
            name: "k".into(),
            sha256: sha256("secret-key-123456"),
            organization_id: "org".into(),
            applications: Some(vec!["app".into()]),
            scopes: vec![Scope::Global],
            rtp_any_source: false,
        }])
    }

    fn status(result: Result<Grant, ApiError>) -> u16 {
        use actix_web::ResponseError;
        match result {
            Ok(_) => 200,
            Err(e) => e.status_code().as_u16(),
        }
    }

    #[test]
    fn raw_and_bearer_keys_are_accepted() {
        let ring = ring();
        for value in [
            "secret-key-123456",
            "Bearer secret-key-123456",
            "bearer  secret-key-123456 ",
        ] {
            let req = TestRequest::default()
                .insert_header((header::AUTHORIZATION, value))
                .to_http_request();
            let grant = ring.authorize(&req, Scope::Global).unwrap();
            assert_eq!(grant.organization_id, "org");
            assert!(grant.may_use_application("app") && !grant.may_use_application("other"));
        }
    }

    #[test]
    fn missing_unknown_and_unscoped_keys_are_refused() {
        let ring = ring();
        assert_eq!(
            status(ring.authorize(&TestRequest::default().to_http_request(), Scope::Global)),
            401
        );
        let req = |v: &str| {
            TestRequest::default()
                .insert_header((header::AUTHORIZATION, v))
                .to_http_request()
        };
        assert_eq!(status(ring.authorize(&req("Bearer nope"), Scope::Global)), 401);
        assert_eq!(status(ring.authorize(&req("Bearer "), Scope::Global)), 401);
        assert_eq!(status(ring.authorize(&req("secret-key-123456"), Scope::Admin)), 403);
    }
}
