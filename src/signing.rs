//! HMAC-signed download URLs for artefacts the recorder serves itself. A URL carries `Date`
//! (when it was signed, `YYYYMMDDTHHMMSSZ`), `Expires` (its lifetime in seconds) and `Signature`
//! (hex HMAC-SHA256 over the method, the path and both times), so it works without an API key
//! until it expires and any change to it is detected.

use chrono::{DateTime, NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";
/// Clock difference tolerated between the signer and the verifier (the same node today, but
/// nodes behind a load balancer may serve each other's URLs).
const MAX_CLOCK_SKEW_SECS: i64 = 300;
const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;

#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
    ttl_secs: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{0} is malformed")]
    Malformed(&'static str),
    #[error("the URL has expired")]
    Expired,
    #[error("the URL is dated in the future")]
    NotYetValid,
    #[error("the signature does not match the URL")]
    Mismatch,
}

pub struct SignedQuery {
    pub date: String,
    pub expires: u64,
    pub signature: String,
    pub valid_until: DateTime<Utc>,
}

impl SignedQuery {
    pub fn to_query(&self) -> String {
        format!(
            "Date={}&Expires={}&Signature={}",
            self.date, self.expires, self.signature
        )
    }
}

impl UrlSigner {
    pub fn new(secret: Vec<u8>, ttl_secs: u64) -> Self {
        Self { secret, ttl_secs }
    }

    /// The longest lifetime a signed URL may have.
    pub const fn max_lifetime_secs() -> u64 {
        MAX_LIFETIME_SECS
    }

    /// The configured lifetime of signed URLs.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    fn mac(&self, method: &str, path: &str, date: &str, expires: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        for part in [method, path, date, expires] {
            mac.update(part.as_bytes());
            mac.update(b"\n");
        }
        mac
    }

    pub fn sign(&self, method: &str, path: &str, now: DateTime<Utc>) -> SignedQuery {
        self.sign_for(method, path, now, self.ttl_secs)
    }

    /// Signs for `ttl_secs` rather than the configured lifetime (at most
    /// [`max_lifetime_secs`](Self::max_lifetime_secs), which is what `verify` accepts).
    pub fn sign_for(&self, method: &str, path: &str, now: DateTime<Utc>, ttl_secs: u64) -> SignedQuery {
        let date = now.format(DATE_FORMAT).to_string();
        let expires = ttl_secs.min(MAX_LIFETIME_SECS);
        let signature = hex::encode(
            self.mac(method, path, &date, &expires.to_string())
                .finalize()
                .into_bytes(),
        );
        // Parse back so valid_until matches what verify computes (whole seconds).
        let signed_at = parse_date(&date).expect("dates this signer formats parse");
        SignedQuery {
            date,
            expires,
            signature,
            valid_until: signed_at + chrono::Duration::seconds(expires as i64),
        }
    }

    pub fn verify(
        &self,
        method: &str,
        path: &str,
        date: &str,
        expires: &str,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let signed_at = parse_date(date).ok_or(SignatureError::Malformed("Date"))?;
        let lifetime: u64 = expires
            .parse()
            .ok()
            .filter(|s| *s <= MAX_LIFETIME_SECS)
            .ok_or(SignatureError::Malformed("Expires"))?;
        let given = hex::decode(signature).map_err(|_| SignatureError::Malformed("Signature"))?;
        // Check the signature before the times, so a tampered time reads as tampering.
        self.mac(method, path, date, expires)
            .verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)?;
        if signed_at > now + chrono::Duration::seconds(MAX_CLOCK_SKEW_SECS) {
            return Err(SignatureError::NotYetValid);
        }
        if now >= signed_at + chrono::Duration::seconds(lifetime as i64) {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

fn parse_date(date: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(date, DATE_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(b"0123456789abcdef".to_vec(), 60)
    }

    #[test]
    fn a_signed_url_verifies_until_it_expires() {
        let now = Utc::now();
        let q = signer().sign("GET", "/a/b", now);
        let sig = &q.signature;
        let exp = q.expires.to_string();
        assert_eq!(signer().verify("GET", "/a/b", &q.date, &exp, sig, now), Ok(()));
        let later = now + chrono::Duration::seconds(61);
        assert_eq!(
            signer().verify("GET", "/a/b", &q.date, &exp, sig, later),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn any_change_is_detected() {
        let now = Utc::now();
        let q = signer().sign("GET", "/a/b", now);
        let exp = q.expires.to_string();
        let s = signer();
        assert_eq!(
            s.verify("GET", "/a/c", &q.date, &exp, &q.signature, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify("PUT", "/a/b", &q.date, &exp, &q.signature, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify("GET", "/a/b", &q.date, "3600", &q.signature, now),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = q.signature.clone();
        tampered.replace_range(0..1, if tampered.starts_with('0') { "1" } else { "0" });
        assert_eq!(
            s.verify("GET", "/a/b", &q.date, &exp, &tampered, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify("GET", "/a/b", "yesterday", &exp, &q.signature, now),
            Err(SignatureError::Malformed("Date"))
        );
        assert_eq!(
            s.verify("GET", "/a/b", &q.date, "-1", &q.signature, now),
            Err(SignatureError::Malformed("Expires"))
        );
        assert_eq!(
            s.verify("GET", "/a/b", &q.date, &exp, "zz", now),
            Err(SignatureError::Malformed("Signature"))
        );
        let other = UrlSigner::new(b"another-secret-value".to_vec(), 60);
        assert_eq!(
            other.verify("GET", "/a/b", &q.date, &exp, &q.signature, now),
            Err(SignatureError::Mismatch)
        );
    }
}
