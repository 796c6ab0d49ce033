//! Storage backends: where finished artefacts go. The engine sees only [`StorageBackend`]; each
//! provider lives in its own file and is the only module that talks to its SDK or protocol.
//! Errors are a small closed set of kinds that decide whether an upload is retried.

mod azure;
pub mod encryption;
mod gcs;
mod local;
mod s3;
mod sftp;
mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use md5::{Digest, Md5};
use tokio::io::AsyncReadExt;

use crate::domain::Provider;

pub use azure::{AzureBackend, AzureCredentials, AzureSettings};
pub use gcs::{GcsBackend, GcsSettings};
pub use local::LocalBackend;
pub use s3::{S3Backend, S3Settings};
pub use sftp::{SftpBackend, SftpSettings};
pub use verify::{verify, CheckResult, VerificationReport};

/// Size of one part of a multipart (S3), block (Azure) or resumable chunk (GCS) upload, and the
/// largest file sent in one request. 8 MiB: above S3's 5 MiB minimum part, a multiple of GCS's
/// 256 KiB chunk granularity, and small enough that only one part is held in memory at a time.
pub const PART_SIZE: usize = 8 << 20;

/// An upload under way, kept in its upload job's row as it advances so that a restart (or the
/// next attempt) continues it instead of sending the whole file again. One shape for every
/// provider; each uses the fields it needs and leaves the others empty:
///
/// | provider | `upload_id` | `parts` | `offset` |
/// |---|---|---|---|
/// | S3 | the multipart upload id | acknowledged parts and their ETags | 0 |
/// | Azure | empty: the blob's uncommitted blocks are the upload | blocks stored (`etag` = block id) | 0 |
/// | GCS | the resumable session URI (a bearer capability: never log it) | empty | bytes the service confirmed |
/// | SFTP | the remote temporary file | empty | bytes the server acknowledged |
///
/// The store is always asked what it really holds before anything is skipped; the recorded
/// progress only says which upload to ask about. Rows written before `offset` existed decode
/// with 0.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MultipartProgress {
    pub upload_id: String,
    /// Length of the local file when the upload started; a different length means another file.
    pub file_len: u64,
    /// Parts the store acknowledged, in completion order (S3, Azure).
    #[serde(default)]
    pub parts: Vec<UploadedPart>,
    /// Bytes from the start of the file the store confirmed holding (GCS, SFTP).
    #[serde(default)]
    pub offset: u64,
}

impl MultipartProgress {
    /// Progress of a new upload of a file of `file_len` bytes.
    pub fn new(upload_id: impl Into<String>, file_len: u64) -> Self {
        Self {
            upload_id: upload_id.into(),
            file_len,
            parts: Vec::new(),
            offset: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadedPart {
    /// S3: the part number (from 1); Azure: the block's index in the file (from 0).
    pub number: i32,
    /// S3: the part's ETag; Azure: the block id.
    pub etag: String,
}

/// Called with the whole progress after the upload started (or was found to resume) and after
/// every acknowledged part (S3, Azure) or chunk (GCS, SFTP).
pub type ProgressSink = std::sync::Arc<dyn Fn(&MultipartProgress) + Send + Sync>;

/// A credential read from the environment or a file at start-up. `Debug` and `Display` never show
/// it, so a settings struct can be logged whole.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a backend can tell about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Hex MD5 of the content when the provider computed one itself (S3 single-part ETag, Azure
    /// Content-MD5, GCS md5Hash); `None` when it does not say.
    pub md5_hex: Option<String>,
}

/// What `put_file` sent: the bytes read from the local file and their MD5, computed while
/// streaming, to compare with what the provider reports afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    pub size: u64,
    pub md5_hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("object not found: {0}")]
    NotFound(String),
    #[error("access denied: {0}")]
    Unauthorized(String),
    #[error("bucket or container missing: {0}")]
    MissingBucket(String),
    #[error("storage service error: {0}")]
    Service(String),
    #[error("storage timed out: {0}")]
    Timeout(String),
    #[error("storage i/o: {0}")]
    Io(String),
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    /// The store understood the request and refused it for a reason retrying cannot fix (a 4xx
    /// other than auth and not-found, a bad setting).
    #[error("storage refused the request: {0}")]
    Invalid(String),
}

impl StorageError {
    /// Whether trying again later can succeed (an outage) or cannot (wrong credentials, no bucket).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Service(_) | StorageError::Timeout(_) | StorageError::Io(_)
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            StorageError::NotFound(_) => "STORAGE_NOT_FOUND",
            StorageError::Unauthorized(_) => "STORAGE_UNAUTHORIZED",
            StorageError::MissingBucket(_) => "STORAGE_MISSING_BUCKET",
            StorageError::Service(_) => "STORAGE_SERVICE",
            StorageError::Timeout(_) => "STORAGE_TIMEOUT",
            StorageError::Io(_) => "STORAGE_IO",
            StorageError::InvalidKey(_) => "STORAGE_INVALID_KEY",
            StorageError::Invalid(_) => "STORAGE_INVALID_REQUEST",
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

pub trait StorageBackend: Send + Sync + 'static {
    fn provider(&self) -> Provider;
    /// Where the profile stores, without credentials; shown by `storage/info`.
    fn url(&self) -> String;
    /// Where one object lives, as recorded in `location` fields.
    fn location(&self, key: &str) -> String;
    /// Writes an object whole and atomically: readers see the old object or the new one.
    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>>;
    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>>;
    /// Bytes `start..=end` of an object. The default reads the whole object and cuts it; backends
    /// that serve ranges (S3, Azure, GCS) override it and say so in `serves_ranges`.
    fn get_range(&self, key: &str, start: u64, end: u64) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let get = self.get(key);
        Box::pin(async move {
            let bytes = get.await?;
            let from = usize::try_from(start).unwrap_or(usize::MAX).min(bytes.len());
            let to = usize::try_from(end.saturating_add(1))
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            Ok(bytes[from..to.max(from)].to_vec())
        })
    }
    /// Whether `get_range` reads only the range (see [`download_to_file`]).
    fn serves_ranges(&self) -> bool {
        false
    }
    /// Copies an object into the local file `dest` (created or truncated); returns its size.
    /// The default goes through `get`; backends that can stream (SFTP) override it. Callers use
    /// [`download_to_file`], which reads range-serving backends a chunk at a time.
    fn get_to_file(&self, key: &str, dest: &Path) -> BoxFuture<'static, StorageResult<u64>> {
        let get = self.get(key);
        let dest = dest.to_path_buf();
        Box::pin(async move {
            let bytes = get.await?;
            tokio::fs::write(&dest, &bytes)
                .await
                .map_err(|err| StorageError::Io(format!("{}: {err}", dest.display())))?;
            Ok(bytes.len() as u64)
        })
    }
    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>>;
    /// Checks that the bucket (container, directory) exists and is reachable.
    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>>;
    /// A file on this node holding the object, for backends the recorder serves itself.
    fn local_path(&self, key: &str) -> Option<PathBuf>;
    /// Uploads a local file, in parts of [`PART_SIZE`] when it is larger than one part, without
    /// holding more than one part in memory. Atomic like `put`.
    fn put_file(&self, key: &str, path: &Path) -> BoxFuture<'static, StorageResult<PutReceipt>>;
    /// `put_file` that reports its progress to `on_progress` and, given the progress of an
    /// interrupted upload of the same file (same length), continues it: what the store still
    /// holds of it is not sent again (S3 parts, Azure blocks, the confirmed prefix of a GCS
    /// session or an SFTP temporary file). An upload the store no longer knows starts afresh.
    /// Backends without resumable uploads (local) ignore both and send the whole file.
    fn put_file_resumable(
        &self,
        key: &str,
        path: &Path,
        _resume_opt: Option<MultipartProgress>,
        _on_progress: ProgressSink,
    ) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        self.put_file(key, path)
    }
    /// Size (and checksum, where the provider has one) of a stored object; `NotFound` if absent.
    fn head(&self, key: &str) -> BoxFuture<'static, StorageResult<ObjectInfo>>;
    /// A URL signed by the provider (S3 presign, Azure SAS, GCS V4) that reads the object for
    /// `ttl`; `None` when the provider has no such URL (local, SFTP) and the recorder serves the
    /// object itself behind its own signed URL.
    fn signed_url(&self, key: &str, ttl: Duration) -> BoxFuture<'static, StorageResult<Option<String>>>;
}

/// An endpoint URL without user info, query or fragment, for `storage/info` and logs: a
/// credential someone put into the URL never leaves the configuration.
pub(crate) fn credential_free(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.as_str().trim_end_matches('/').to_string()
        }
        Err(_) => "(invalid endpoint)".into(),
    }
}

/// Error text with the query of every URL in it removed. SDK errors quote request URLs, and a
/// URL can carry a credential (an Azure SAS token, a presigned signature); error text ends up in
/// logs and in the API's `objectStorage.error`.
pub(crate) fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let next_url = |text: &str| {
        [text.find("http://"), text.find("https://")]
            .into_iter()
            .flatten()
            .min()
    };
    while let Some(start) = next_url(rest) {
        out.push_str(&rest[..start]);
        let url_len = rest[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '>'))
            .unwrap_or(rest.len() - start);
        let url = &rest[start..start + url_len];
        match url.find('?') {
            Some(q) => {
                out.push_str(&url[..q]);
                out.push_str("?(redacted)");
            }
            None => out.push_str(url),
        }
        rest = &rest[start + url_len..];
    }
    out.push_str(rest);
    out
}

/// Joins a profile's key prefix (possibly empty, with or without a trailing slash) and a key.
pub(crate) fn prefixed(prefix: &str, key: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// Reads a local file part by part for upload, hashing everything it hands out. The reads go
/// through tokio's file type, which runs them on the blocking pool, never on an executor thread.
pub(crate) struct PartReader {
    file: tokio::fs::File,
    md5: Md5,
    len: u64,
    num_read: u64,
}

impl PartReader {
    pub(crate) async fn open(path: &Path) -> StorageResult<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|err| local_file_error(path, err))?;
        let len = file.metadata().await.map_err(|err| local_file_error(path, err))?.len();
        Ok(Self {
            file,
            md5: Md5::new(),
            len,
            num_read: 0,
        })
    }

    /// Length of the file when it was opened.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Number of parts of at most `PART_SIZE` the file splits into (at least one).
    pub(crate) fn num_parts(&self) -> u64 {
        self.len.div_ceil(PART_SIZE as u64).max(1)
    }

    /// The next part, at most `PART_SIZE` bytes; `None` at the end of the file.
    pub(crate) async fn next_part(&mut self) -> StorageResult<Option<bytes::Bytes>> {
        let remaining = self.len.saturating_sub(self.num_read);
        if remaining == 0 {
            return Ok(None);
        }
        crate::fault::point(crate::fault::UPLOAD_PART).map_err(|e| StorageError::Io(e.to_string()))?;
        let want = remaining.min(PART_SIZE as u64) as usize;
        let mut buf = vec![0u8; want];
        self.file
            .read_exact(&mut buf)
            .await
            .map_err(|err| StorageError::Io(format!("local file changed while uploading: {err}")))?;
        self.md5.update(&buf);
        self.num_read += want as u64;
        Ok(Some(bytes::Bytes::from(buf)))
    }

    /// Reads and hashes the file up to byte `offset` (from where it stands) without handing the
    /// bytes out: the part of a resumed upload the store already holds still counts in the MD5.
    pub(crate) async fn read_through(&mut self, offset: u64) -> StorageResult<()> {
        let mut buf = vec![0u8; PART_SIZE.min(offset.saturating_sub(self.num_read) as usize)];
        while self.num_read < offset.min(self.len) {
            let want = (offset.min(self.len) - self.num_read).min(PART_SIZE as u64) as usize;
            self.file
                .read_exact(&mut buf[..want])
                .await
                .map_err(|err| StorageError::Io(format!("local file changed while uploading: {err}")))?;
            self.md5.update(&buf[..want]);
            self.num_read += want as u64;
        }
        Ok(())
    }

    /// Bytes read (and hashed) so far: where the next part starts.
    pub(crate) fn position(&self) -> u64 {
        self.num_read
    }

    /// Size and hex MD5 of everything read.
    pub(crate) fn finish(self) -> PutReceipt {
        PutReceipt {
            size: self.num_read,
            md5_hex: hex::encode(self.md5.finalize()),
        }
    }
}

pub(crate) fn md5_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

/// A problem with the file to upload is not the store's fault: a missing file cannot be retried
/// into existence, other i/o errors may pass.
fn local_file_error(path: &Path, err: std::io::Error) -> StorageError {
    match err.kind() {
        std::io::ErrorKind::NotFound => StorageError::NotFound(format!("local file {} is missing", path.display())),
        _ => StorageError::Io(format!("{}: {err}", path.display())),
    }
}

/// A bucket's credential-free URL: `{endpoint}/{bucket}` for a custom endpoint, else
/// `{scheme}://{bucket}`, with the key prefix appended when there is one.
pub(crate) fn bucket_url(scheme: &str, endpoint: Option<&str>, bucket: &str, key_prefix: &str) -> String {
    let base = match endpoint {
        Some(endpoint) => format!("{}/{bucket}", credential_free(endpoint)),
        None => format!("{scheme}://{bucket}"),
    };
    match key_prefix.trim_matches('/') {
        "" => base,
        prefix => format!("{base}/{prefix}"),
    }
}

/// Refuses keys that could leave the profile's root: empty or dot segments, absolute paths,
/// backslashes and NUL.
pub fn validate_key(key: &str) -> StorageResult<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if bad {
        return Err(StorageError::InvalidKey(key.to_string()));
    }
    Ok(())
}

/// Largest piece of an object held in memory by [`download_to_file`].
pub const DOWNLOAD_CHUNK: u64 = 4 << 20;

/// Copies an object into the local file `dest` (created or truncated) with bounded memory:
/// backends that serve ranges are read [`DOWNLOAD_CHUNK`] at a time, the others through their
/// own `get_to_file` (SFTP streams; the local store is read in place by callers). Returns the
/// object's size.
pub async fn download_to_file(backend: &dyn StorageBackend, key: &str, dest: &Path) -> StorageResult<u64> {
    use tokio::io::AsyncWriteExt;
    if !backend.serves_ranges() {
        return backend.get_to_file(key, dest).await;
    }
    let size = backend.head(key).await?.size;
    let io = |err: std::io::Error| StorageError::Io(format!("{}: {err}", dest.display()));
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let mut start = 0u64;
    while start < size {
        let end = start.saturating_add(DOWNLOAD_CHUNK).min(size) - 1;
        let chunk = backend.get_range(key, start, end).await?;
        if chunk.len() as u64 != end - start + 1 {
            return Err(StorageError::Io(format!(
                "range {start}-{end} of a {size}-byte object answered {} bytes",
                chunk.len()
            )));
        }
        file.write_all(&chunk).await.map_err(io)?;
        start = end + 1;
    }
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a\\b", "a\0b", "a/"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        validate_key("org/app/conv/rec/inst/chat/transcript.json").unwrap();
    }

    #[test]
    fn urls_shown_carry_no_credentials() {
        assert_eq!(
            credential_free("https://user:pw@s3.example.com:9000/path?X-Amz-Signature=abc#f"),
            "https://s3.example.com:9000/path"
        );
        assert_eq!(credential_free("http://127.0.0.1:9000/"), "http://127.0.0.1:9000");
        assert_eq!(credential_free("not a url"), "(invalid endpoint)");
    }

    #[test]
    fn prefixes_join_with_one_slash() {
        assert_eq!(prefixed("", "a/b"), "a/b");
        assert_eq!(prefixed("rec/", "a/b"), "rec/a/b");
        assert_eq!(prefixed("/rec/x", "a"), "rec/x/a");
    }

    #[test]
    fn urls_in_error_text_lose_their_query() {
        assert_eq!(
            redact_urls("error sending request for url (http://h:1/c/b?sv=1&sig=SECRET): refused"),
            "error sending request for url (http://h:1/c/b?(redacted)): refused"
        );
        assert_eq!(
            redact_urls("a https://x/y?X-Amz-Signature=s b http://z/w c"),
            "a https://x/y?(redacted) b http://z/w c"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
    }

    #[test]
    fn progress_recorded_before_offsets_existed_still_decodes() {
        let old = r#"{"upload_id":"u-1","file_len":42,"parts":[{"number":1,"etag":"\"abc\""}]}"#;
        let progress: MultipartProgress = serde_json::from_str(old).unwrap();
        assert_eq!(progress.offset, 0);
        assert_eq!(progress.parts.len(), 1);
        let gcs = MultipartProgress {
            offset: 16 << 20,
            ..MultipartProgress::new("http://127.0.0.1:1/upload?upload_id=x", 42)
        };
        let back: MultipartProgress = serde_json::from_str(&serde_json::to_string(&gcs).unwrap()).unwrap();
        assert_eq!(back, gcs);
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn only_outages_are_retried() {
        assert!(StorageError::Timeout("t".into()).is_retryable());
        assert!(StorageError::Service("503".into()).is_retryable());
        assert!(!StorageError::Unauthorized("key".into()).is_retryable());
        assert!(!StorageError::MissingBucket("b".into()).is_retryable());
    }
}
