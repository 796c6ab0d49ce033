//! Publish tokens: short-lived, HMAC-signed credentials that let one publisher (a browser, a
//! WHIP client) send media to one recorder instance without holding an API key.
//!
//! Format: `pt1.<payload>.<signature>`, both base64url without padding. The payload is JSON
//! `{"org","inst","conf","user"?,"exp"}`; the signature is HMAC-SHA256 over `pt1.<payload>` with a
//! key derived from the node's signing secret (domain-separated from signed URLs).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "pt1.";
/// Longest lifetime a token may be issued with.
pub const MAX_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Longest token text looked at; anything longer is not one of ours.
const MAX_TOKEN_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishGrant {
    #[serde(rename = "org")]
    pub organization_id: String,
    #[serde(rename = "inst")]
    pub instance_id: String,
    #[serde(rename = "conf")]
    pub conference_id: String,
    /// When set, the token may publish only as this userId.
    #[serde(rename = "user", default, skip_serializing_if = "Option::is_none")]
    pub user_id_opt: Option<String>,
    /// When set, the publisher's role (its stereo channel); a publish declaring another is refused.
    #[serde(rename = "role", default, skip_serializing_if = "Option::is_none")]
    pub role_opt: Option<recorder_actors::domain::ParticipantRole>,
    /// Unix seconds after which the token is refused.
    #[serde(rename = "exp")]
    pub expires: i64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a publish token")]
    NotAToken,
    #[error("the publish token is malformed")]
    Malformed,
    #[error("the publish token's signature does not match")]
    BadSignature,
    #[error("the publish token has expired")]
    Expired,
}

pub struct PublishTokens {
    key: Vec<u8>,
}

impl PublishTokens {
    pub fn new(signing_secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(signing_secret).expect("HMAC takes keys of any length");
        mac.update(b"rtc-recorder publish tokens v1");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub fn issue(&self, grant: &PublishGrant) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(grant).expect("a grant serializes"));
        let signed = format!("{PREFIX}{payload}");
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    pub fn looks_like_token(text: &str) -> bool {
        text.starts_with(PREFIX)
    }

    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<PublishGrant, TokenError> {
        if !Self::looks_like_token(token) {
            return Err(TokenError::NotAToken);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        if signed.len() <= PREFIX.len() || !signed.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(&signed[PREFIX.len()..])
            .map_err(|_| TokenError::Malformed)?;
        let grant: PublishGrant = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if now.timestamp() > grant.expires {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires: i64) -> PublishGrant {
        PublishGrant {
            organization_id: "o".into(),
            instance_id: "i".into(),
            conference_id: "c".into(),
            user_id_opt: Some("u".into()),
            role_opt: None,
            expires,
        }
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let tokens = PublishTokens::new(b"secret-secret-secret");
        let now = Utc::now();
        let token = tokens.issue(&grant(now.timestamp() + 60));
        assert_eq!(tokens.verify(&token, now), Ok(grant(now.timestamp() + 60)));
        assert_eq!(
            tokens.verify(&token, now + chrono::Duration::seconds(61)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn tampered_foreign_and_garbage_tokens_are_refused() {
        let tokens = PublishTokens::new(b"secret-secret-secret");
        let now = Utc::now();
        let token = tokens.issue(&grant(now.timestamp() + 60));
        let other = PublishTokens::new(b"another-secret-123").issue(&grant(now.timestamp() + 60));
        assert_eq!(tokens.verify(&other, now), Err(TokenError::BadSignature));
        let (head, _) = token.rsplit_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&PublishGrant {
                instance_id: "x".into(),
                ..grant(i64::MAX)
            })
            .unwrap(),
        );
        let forged = format!("pt1.{forged_payload}.{}", token.rsplit_once('.').unwrap().1);
        assert_eq!(tokens.verify(&forged, now), Err(TokenError::BadSignature));
        assert_eq!(tokens.verify(&format!("{head}.!!"), now), Err(TokenError::Malformed));
        assert_eq!(tokens.verify("pt1.", now), Err(TokenError::Malformed));
        assert_eq!(tokens.verify("dev-key", now), Err(TokenError::NotAToken));
    }
}
