//! Google Cloud Storage through `gcloud-storage` (the maintained google-cloud-rust family): the
//! JSON API, resumable uploads, V4 signed URLs, and a configurable endpoint so the same code runs
//! against an emulator. The only module that imports a Google SDK.
//!
//! Why this crate: `cloud-storage` hard-codes its endpoint and is unmaintained; `object_store`'s
//! GCS support speaks the XML API (HEAD, DELETE and multipart there are not implemented by
//! `gcp-storage-emulator`, so it could not be tested on loopback); the official
//! `google-cloud-storage` does deletes and bucket checks over gRPC, which no emulator here serves.
//! `gcloud-storage` uses the JSON API for everything this backend needs, resumable uploads
//! included, and takes an endpoint.
//!
//! Resume: the resumable session's URI is recorded as soon as the session opens, and the offset
//! the service confirmed after every chunk. After a restart the session is asked where it stands
//! (`PUT` with `Content-Range: bytes */<len>`: 308 with the confirmed `Range`, 200/201 when it
//! completed, 404/410 when it expired) and the upload continues from the confirmed byte; a
//! session the service no longer knows starts afresh. `gcp-storage-emulator` keeps sessions and
//! answers status queries like the service, except that it reports one byte (`Range:
//! bytes=0-0`) for a session that received none: a session is only resumed when the recorded
//! progress says a chunk was confirmed, so that answer is never trusted.

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::buckets::get::GetBucketRequest;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, ResumableUploadClient, UploadStatus};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::sign::{SignBy, SignedURLOptions, URLStyle};

use super::{
    prefixed, validate_key, MultipartProgress, ObjectInfo, PartReader, ProgressSink, PutReceipt, Secret,
    StorageBackend, StorageError, StorageResult,
};
use crate::domain::Provider;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";

#[derive(Debug, Clone)]
pub struct GcsSettings {
    pub bucket: String,
    /// `None` for Google; an emulator's base URL otherwise (e.g. `http://127.0.0.1:9023`).
    pub endpoint: Option<String>,
    pub key_prefix: String,
    /// Service-account key file content (JSON). Authenticates requests, and signs URLs.
    pub service_account: Option<Secret>,
    /// Send requests without a token (emulators). A service account, if given, still signs URLs.
    pub anonymous: bool,
}

pub struct GcsBackend {
    client: Client,
    settings: GcsSettings,
    endpoint: url::Url,
    /// Who signs download URLs: the service account's e-mail and private key.
    signer: Option<(String, Vec<u8>)>,
}

/// Signed URLs name the configured endpoint's host, so a URL signed for an emulator points at it.
struct EndpointStyle {
    host: String,
}

impl URLStyle for EndpointStyle {
    fn host(&self, _bucket: &str) -> String {
        self.host.clone()
    }

    fn path(&self, bucket: &str, object: &str) -> String {
        format!("{bucket}/{object}")
    }
}

impl GcsBackend {
    /// The object, or the part of it `range` names.
    fn download(&self, key: &str, range: Range, what: &'static str) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let name = self.object_name(key);
        async move {
            let request = GetObjectRequest {
                bucket,
                object: name?,
                ..Default::default()
            };
            client
                .download_object(&request, &range)
                .await
                .map_err(|e| map_err(e, what, Missing::Object))
        }
        .boxed()
    }

    pub async fn new(settings: GcsSettings) -> Result<Self, StorageError> {
        let endpoint_text = settings.endpoint.clone().unwrap_or_else(|| DEFAULT_ENDPOINT.into());
        let endpoint = url::Url::parse(&endpoint_text)
            .map_err(|e| StorageError::Invalid(format!("endpoint {endpoint_text:?}: {e}")))?;
        let credentials = match &settings.service_account {
            Some(json) => Some(
                gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile::new_from_str(json.expose())
                    .await
                    .map_err(|e| StorageError::Invalid(format!("service account key: {e}")))?,
            ),
            None => None,
        };
        let signer = credentials
            .as_ref()
            .and_then(|c| Some((c.client_email.clone()?, c.private_key.clone()?.into_bytes())));
        let http = gcs_reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| StorageError::Invalid(format!("http client: {e}")))?;
        let mut config = ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            storage_endpoint: endpoint_text.trim_end_matches('/').to_string(),
            ..Default::default()
        };
        config = match (credentials, settings.anonymous) {
            (Some(credentials), false) => config
                .with_credentials(credentials)
                .await
                .map_err(|e| StorageError::Unauthorized(format!("service account: {e}")))?,
            (None, false) => {
                return Err(StorageError::Invalid(
                    "a service account key is needed unless the profile is anonymous (emulators)".into(),
                ))
            }
            (_, true) => config.anonymous(),
        };
        Ok(Self {
            client: Client::new(config),
            settings,
            endpoint,
            signer,
        })
    }

    fn object_name(&self, key: &str) -> StorageResult<String> {
        validate_key(key)?;
        Ok(prefixed(&self.settings.key_prefix, key))
    }
}

#[derive(Clone, Copy)]
enum Missing {
    Object,
    Bucket,
}

fn map_status(status: u16, detail: String, missing: Missing) -> StorageError {
    match status {
        401 | 403 => StorageError::Unauthorized(detail),
        404 => match missing {
            Missing::Object => StorageError::NotFound(detail),
            Missing::Bucket => StorageError::MissingBucket(detail),
        },
        408 | 429 | 500..=599 => StorageError::Service(detail),
        _ => StorageError::Invalid(detail),
    }
}

fn map_err(err: GcsError, what: &str, missing: Missing) -> StorageError {
    let detail = super::redact_urls(&format!("{what}: {err}"));
    match &err {
        GcsError::Response(response) => map_status(response.code, detail, missing),
        GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => {
            if e.is_timeout() {
                StorageError::Timeout(detail)
            } else if e.is_connect() {
                StorageError::Io(super::redact_urls(&format!("{detail}: {}", error_chain(e))))
            } else if let Some(status) = e.status() {
                map_status(status.as_u16(), detail, missing)
            } else {
                StorageError::Service(super::redact_urls(&format!("{detail}: {}", error_chain(e))))
            }
        }
        GcsError::TokenSource(_) => StorageError::Unauthorized(detail),
        _ => StorageError::Service(detail),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut source = err.source();
    while let Some(inner) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Where an earlier resumable session of a `total`-byte object stands: the number of bytes the
/// service confirmed (`total` when the session already completed), or `None` when the service
/// no longer knows the session (expired, cancelled, or completed and forgotten) and the upload
/// starts afresh. An outage is an error, so the next attempt asks again.
async fn session_position(session: &ResumableUploadClient, total: u64, name: &str) -> StorageResult<Option<u64>> {
    match session.status(Some(total)).await {
        Ok(UploadStatus::Ok(_)) => Ok(Some(total)),
        Ok(UploadStatus::NotStarted) => Ok(Some(0)),
        Ok(UploadStatus::ResumeIncomplete(range)) if range.first_byte == 0 && range.last_byte < total => {
            tracing::info!(object = %name, num_bytes_held = range.last_byte + 1, "resuming resumable upload");
            Ok(Some(range.last_byte + 1))
        }
        Ok(UploadStatus::ResumeIncomplete(range)) => {
            tracing::info!(object = %name, ?range, "resumable session holds an odd range, starting afresh");
            Ok(None)
        }
        Err(err) => match map_err(err, "resumable upload status", Missing::Object) {
            err if err.is_retryable() => Err(err),
            err => {
                tracing::info!(object = %name, error = %err, "resumable session gone, starting afresh");
                Ok(None)
            }
        },
    }
}

fn base64_md5_to_hex(value: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    (bytes.len() == 16).then(|| hex::encode(bytes))
}

impl StorageBackend for GcsBackend {
    fn provider(&self) -> Provider {
        Provider::GoogleCloud
    }

    fn url(&self) -> String {
        super::bucket_url(
            "gs",
            self.settings.endpoint.as_deref(),
            &self.settings.bucket,
            &self.settings.key_prefix,
        )
    }

    fn location(&self, key: &str) -> String {
        format!(
            "gs://{}/{}",
            self.settings.bucket,
            prefixed(&self.settings.key_prefix, key)
        )
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let name = self.object_name(key);
        async move {
            let size = bytes.len() as u64;
            let request = UploadObjectRequest {
                bucket,
                ..Default::default()
            };
            let mut media = Media::new(name?);
            media.content_length = Some(size);
            client
                .upload_object(&request, bytes, &UploadType::Simple(media))
                .await
                .map_err(|e| map_err(e, "upload object", Missing::Bucket))?;
            Ok(size)
        }
        .boxed()
    }

    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        self.download(key, Range::default(), "download object")
    }

    fn get_range(&self, key: &str, start: u64, end: u64) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        self.download(key, Range(Some(start), Some(end)), "download object range")
    }

    fn serves_ranges(&self) -> bool {
        true
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let name = self.object_name(key);
        async move {
            let request = DeleteObjectRequest {
                bucket,
                object: name?,
                ..Default::default()
            };
            match client.delete_object(&request).await {
                Ok(()) => Ok(()),
                Err(err) => match map_err(err, "delete object", Missing::Object) {
                    StorageError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        async move {
            let request = GetBucketRequest {
                bucket: bucket.clone(),
                ..Default::default()
            };
            client
                .get_bucket(&request)
                .await
                .map_err(|e| map_err(e, &format!("bucket {bucket}"), Missing::Bucket))?;
            Ok(())
        }
        .boxed()
    }

    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn put_file(&self, key: &str, path: &Path) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        self.put_file_resumable(key, path, None, std::sync::Arc::new(|_: &MultipartProgress| {}))
    }

    fn put_file_resumable(
        &self,
        key: &str,
        path: &Path,
        resume_opt: Option<MultipartProgress>,
        on_progress: ProgressSink,
    ) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let name = self.object_name(key);
        let path = path.to_path_buf();
        async move {
            let name = name?;
            let mut reader = PartReader::open(&path).await?;
            let total = reader.len();
            let request = UploadObjectRequest {
                bucket,
                ..Default::default()
            };
            let mut media = Media::new(name.clone());
            media.content_length = Some(total);
            if reader.num_parts() == 1 {
                let body = reader.next_part().await?.unwrap_or_default();
                client
                    .upload_object(&request, body.to_vec(), &UploadType::Simple(media))
                    .await
                    .map_err(|e| map_err(e, "upload object", Missing::Bucket))?;
                return Ok(reader.finish());
            }
            let resumed = match resume_opt.filter(|p| p.file_len == total && p.offset > 0 && !p.upload_id.is_empty()) {
                Some(earlier) => {
                    let session = client.get_resumable_upload(earlier.upload_id);
                    session_position(&session, total, &name)
                        .await?
                        .map(|confirmed| (session, confirmed))
                }
                None => None,
            };
            let was_resumed = resumed.as_ref().is_some_and(|(_, confirmed)| *confirmed > 0);
            let (session, confirmed) = match resumed {
                Some(resumed) => resumed,
                None => {
                    let session = client
                        .prepare_resumable_upload(&request, &UploadType::Simple(media))
                        .await
                        .map_err(|e| map_err(e, "start resumable upload", Missing::Bucket))?;
                    (session, 0)
                }
            };
            // The bytes the service holds are read and hashed, not sent: the receipt covers the
            // whole file.
            reader.read_through(confirmed).await?;
            let mut progress = MultipartProgress {
                offset: confirmed,
                ..MultipartProgress::new(session.url(), total)
            };
            on_progress(&progress);
            if confirmed == total {
                return Ok(reader.finish());
            }
            // Each chunk is a multiple of 256 KiB except the last, and the object appears only
            // when the last byte arrived.
            let mut done = false;
            while let Some(body) = reader.next_part().await? {
                let first = progress.offset;
                let last = first + body.len() as u64 - 1;
                let chunk = ChunkSize::new(first, last, Some(total));
                let status = match session.upload_multiple_chunk(body.to_vec(), &chunk).await {
                    Ok(status) => status,
                    Err(e) => match map_err(e, &format!("upload bytes {first}-{last}"), Missing::Bucket) {
                        // The service refused to continue a session resumed from an earlier
                        // process (it holds other bytes than it said): forget the session so the
                        // next attempt opens a new one, instead of parking the job on it.
                        err if was_resumed && !err.is_retryable() => {
                            tracing::info!(object = %name, error = %err, "resumed session refused, the next attempt starts afresh");
                            on_progress(&MultipartProgress::new(String::new(), total));
                            return Err(StorageError::Service(format!(
                                "resumed upload session refused ({err}); starting afresh"
                            )));
                        }
                        err => return Err(err),
                    },
                };
                match status {
                    UploadStatus::Ok(_) => done = true,
                    UploadStatus::ResumeIncomplete(range) if range.first_byte == 0 && range.last_byte == last => {}
                    // The service may keep less than a chunk; the next attempt asks the session
                    // where it stands and continues from there.
                    other => {
                        return Err(StorageError::Service(format!(
                            "resumable upload: bytes {first}-{last} sent, the service holds {other:?}"
                        )))
                    }
                }
                progress.offset = last + 1;
                on_progress(&progress);
            }
            if !done {
                return Err(StorageError::Service(
                    "resumable upload: the service did not confirm the last chunk".into(),
                ));
            }
            Ok(reader.finish())
        }
        .boxed()
    }

    fn head(&self, key: &str) -> BoxFuture<'static, StorageResult<ObjectInfo>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let name = self.object_name(key);
        async move {
            let request = GetObjectRequest {
                bucket,
                object: name?,
                ..Default::default()
            };
            let object = client
                .get_object(&request)
                .await
                .map_err(|e| map_err(e, "object metadata", Missing::Object))?;
            Ok(ObjectInfo {
                size: object.size.max(0) as u64,
                md5_hex: object.md5_hash.as_deref().and_then(base64_md5_to_hex),
            })
        }
        .boxed()
    }

    fn signed_url(&self, key: &str, ttl: Duration) -> BoxFuture<'static, StorageResult<Option<String>>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let name = self.object_name(key);
        let signer = self.signer.clone();
        let host = match self.endpoint.port() {
            Some(port) => format!("{}:{port}", self.endpoint.host_str().unwrap_or_default()),
            None => self.endpoint.host_str().unwrap_or_default().to_string(),
        };
        let insecure = self.endpoint.scheme() == "http";
        async move {
            let name = name?;
            // Without a private key there is nothing to sign with (the SignBlob API would need
            // the metadata server); the caller falls back to the recorder's own URL.
            let Some((email, key)) = signer else {
                return Ok(None);
            };
            let options = SignedURLOptions {
                expires: ttl,
                style: Box::new(EndpointStyle { host }),
                insecure,
                ..Default::default()
            };
            let url = client
                .signed_url(&bucket, &name, Some(email), Some(SignBy::PrivateKey(key)), options)
                .await
                .map_err(|e| StorageError::Invalid(format!("sign URL: {e}")))?;
            Ok(Some(url))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_hashes_convert_from_base64() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            base64_md5_to_hex("1B2M2Y8AsgTpgAmY7PhCfg==").as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(base64_md5_to_hex("not base64!"), None);
    }
}
