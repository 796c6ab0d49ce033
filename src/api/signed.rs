//! Recorder-signed download URLs: the canonical paths each kind of attachment is signed for, the
//! check of a signed request's `Date`/`Expires`/`Signature`, and the unlinked temp file a small
//! download is served from.

use actix_files::NamedFile;
use serde::Deserialize;

use super::error::ApiError;
use super::{AppState, BASE_PATH};
use crate::signing::SignatureError;

/// The canonical path a composition download URL is signed for: one composition per
/// (organization, application, conversation).
pub fn composition_attachment_path(organization: &str, application: &str, conversation: &str) -> String {
    format!("{BASE_PATH}/recordings/attachment/composition/{organization}/{application}/{conversation}")
}

/// The canonical path a track download URL is signed for.
pub fn track_attachment_path(conversation: &str, recorder: &str, instance: &str, stream: &str, track: &str) -> String {
    format!("{BASE_PATH}/recordings/attachment/track/{conversation}/{recorder}/{instance}/{stream}/{track}")
}

/// The canonical path a co-browse session file URL is signed for.
pub fn attachment_path(conversation: &str, recorder: &str, instance: &str, session: &str, file: &str) -> String {
    format!("{BASE_PATH}/recordings/attachment/cobrowse/{conversation}/{recorder}/{instance}/{session}/{file}")
}

/// Checks a recorder-signed URL's query against the canonical path it was signed for: anything
/// wrong with the signature or its times is 403, a missing parameter 400.
pub fn verify_signature(state: &AppState, signed_path: &str, query: &SignatureQuery) -> Result<(), ApiError> {
    let need = |v: &Option<String>, name: &str| {
        v.clone()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad_field(name, "query parameter is required"))
    };
    let (date, expires, signature) = (
        need(&query.date, "Date")?,
        need(&query.expires, "Expires")?,
        need(&query.signature, "Signature")?,
    );
    state
        .signer
        .verify("GET", signed_path, &date, &expires, &signature, chrono::Utc::now())
        .map_err(|e| match e {
            SignatureError::Malformed(field) => ApiError::Forbidden(format!("{field} is malformed")),
            other => ApiError::Forbidden(other.to_string()),
        })
}

#[derive(Debug, Deserialize)]
pub struct SignatureQuery {
    #[serde(rename = "Date")]
    date: Option<String>,
    #[serde(rename = "Expires")]
    expires: Option<String>,
    #[serde(rename = "Signature")]
    signature: Option<String>,
}

/// Writes `bytes` to a temp file, opens it, and removes its name: the open file lives as long as
/// the response reads it and leaves nothing behind.
pub fn unlinked_file(bytes: &[u8]) -> std::io::Result<NamedFile> {
    let path = std::env::temp_dir().join(format!("rtc-recorder-{}.json", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, bytes)?;
    let file = NamedFile::open(&path);
    let _ = std::fs::remove_file(&path);
    file
}
