//! Amazon S3 and S3-compatible stores, through `aws-sdk-s3` on the SDK's default HTTP stack
//! (hyper 1 + rustls). The only module that imports the AWS SDK.
//!
//! Integrity: every PUT and UploadPart carries `Content-MD5`, so the service refuses a body that
//! was damaged on the way; after the upload the uploader compares `HEAD`'s size (and the ETag when
//! it is a plain MD5) with what was read from the local file.
//!
//! Why one file (~600 lines): the only module that imports the AWS SDK; multipart resume,
//! presigning and error mapping share its client.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use md5::Digest;

use super::{
    md5_base64, prefixed, validate_key, MultipartProgress, ObjectInfo, PartReader, ProgressSink, PutReceipt, Secret,
    StorageBackend, StorageError, StorageResult, UploadedPart,
};
use crate::domain::Provider;

/// How long connecting may take before the attempt counts as a timeout (an unreachable host).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request attempt, a part of up to 8 MiB included, on a slow link.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    pub region: String,
    /// Custom endpoint for S3-compatible stores (MinIO, Ceph, s3s); `None` for AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    pub path_style: bool,
    pub key_prefix: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

pub struct S3Backend {
    client: aws_sdk_s3::Client,
    settings: S3Settings,
}

impl S3Backend {
    /// The object, or the part of it `range` (an HTTP `Range` value) names.
    fn get_object(
        &self,
        key: &str,
        range: Option<String>,
        what: &'static str,
    ) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let key = self.object_key(key);
        async move {
            let key = key?;
            let output = client
                .get_object()
                .bucket(&bucket)
                .key(&key)
                .set_range(range)
                .send()
                .await
                .map_err(|e| map_err(e, what, Missing::Object))?;
            let body = output
                .body
                .collect()
                .await
                .map_err(|e| StorageError::Io(format!("{what}: reading the body: {e}")))?;
            Ok(body.into_bytes().to_vec())
        }
        .boxed()
    }

    pub fn new(settings: S3Settings) -> Self {
        let credentials = Credentials::new(
            settings.access_key_id.expose(),
            settings.secret_access_key.expose(),
            settings.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "rtc-recorder-config",
        );
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            // The durable upload queue retries with its own backoff; one quick SDK retry covers a
            // dropped keep-alive connection without hiding an outage for minutes.
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            // Content-MD5 is the integrity check; the SDK's default CRC trailers are not
            // understood by every S3-compatible store.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            settings,
        }
    }

    fn object_key(&self, key: &str) -> StorageResult<String> {
        validate_key(key)?;
        Ok(prefixed(&self.settings.key_prefix, key))
    }
}

/// What a 404 means for the request that got it.
#[derive(Clone, Copy)]
enum Missing {
    Object,
    Bucket,
}

fn map_err<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>, what: &str, missing: Missing) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::TimeoutError(_) => StorageError::Timeout(format!("{what}: no answer in time")),
        SdkError::DispatchFailure(failure) => {
            let detail = super::redact_urls(&format!("{what}: {}", error_chain(&err)));
            if failure.is_timeout() {
                StorageError::Timeout(detail)
            } else if failure.is_io() {
                StorageError::Io(detail)
            } else {
                StorageError::Service(detail)
            }
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            let message = service.err().message().unwrap_or("");
            let detail = format!("{what}: HTTP {status} {code} {message}").trim_end().to_string();
            match (status, code) {
                (_, "NoSuchBucket") => StorageError::MissingBucket(detail),
                (_, "NoSuchKey") => StorageError::NotFound(detail),
                // HEAD answers carry no body: a bare 404 means what the request was about.
                (404, _) => match missing {
                    Missing::Object => StorageError::NotFound(detail),
                    Missing::Bucket => StorageError::MissingBucket(detail),
                },
                (401 | 403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied") => {
                    StorageError::Unauthorized(detail)
                }
                (408 | 429, _) | (500..=599, _) => StorageError::Service(detail),
                _ => StorageError::Invalid(detail),
            }
        }
        _ => StorageError::Service(super::redact_urls(&format!("{what}: {}", error_chain(&err)))),
    }
}

/// The error and its sources on one line: the SDK's top-level messages alone ("dispatch
/// failure") do not say that the connection was refused.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

impl StorageBackend for S3Backend {
    fn provider(&self) -> Provider {
        Provider::AmazonS3
    }

    fn url(&self) -> String {
        super::bucket_url(
            "s3",
            self.settings.endpoint.as_deref(),
            &self.settings.bucket,
            &self.settings.key_prefix,
        )
    }

    fn location(&self, key: &str) -> String {
        format!(
            "s3://{}/{}",
            self.settings.bucket,
            prefixed(&self.settings.key_prefix, key)
        )
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let key = self.object_key(key);
        async move {
            let key = key?;
            let size = bytes.len() as u64;
            client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .content_md5(md5_base64(&bytes))
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| map_err(e, "put object", Missing::Bucket))?;
            Ok(size)
        }
        .boxed()
    }

    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        self.get_object(key, None, "get object")
    }

    fn get_range(&self, key: &str, start: u64, end: u64) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        self.get_object(key, Some(format!("bytes={start}-{end}")), "get object range")
    }

    fn serves_ranges(&self) -> bool {
        true
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let key = self.object_key(key);
        async move {
            client
                .delete_object()
                .bucket(&bucket)
                .key(key?)
                .send()
                .await
                .map_err(|e| map_err(e, "delete object", Missing::Bucket))?;
            Ok(())
        }
        .boxed()
    }

    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        async move {
            client
                .head_bucket()
                .bucket(&bucket)
                .send()
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
        let key = self.object_key(key);
        let path = path.to_path_buf();
        async move {
            let key = key?;
            let mut reader = PartReader::open(&path).await?;
            if reader.num_parts() == 1 {
                let body = reader.next_part().await?.unwrap_or_default();
                client
                    .put_object()
                    .bucket(&bucket)
                    .key(&key)
                    .content_md5(md5_base64(&body))
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .map_err(|e| map_err(e, "put object", Missing::Bucket))?;
                return Ok(reader.finish());
            }
            // The recorded upload, when this attempt does not continue it, is aborted below: its
            // parts would otherwise stay in the bucket (and be billed) until a lifecycle rule.
            let earlier_upload_id_opt = resume_opt.as_ref().map(|p| p.upload_id.clone());
            let resumed = match resume_opt.filter(|p| p.file_len == reader.len()) {
                Some(earlier) => match listed_parts(&client, &bucket, &key, &earlier.upload_id).await? {
                    // Only parts the store still lists with the recorded ETag count as done.
                    Some(listed) => Some(MultipartProgress {
                        parts: earlier
                            .parts
                            .into_iter()
                            .filter(|part| match listed.get(&part.number) {
                                Some(Some(etag)) => same_etag(etag, &part.etag),
                                // Listed without an ETag (s3s-fs does that): the store holds
                                // the part, and its recorded ETag is still compared with the
                                // local part's MD5 before it is reused.
                                Some(None) => true,
                                None => false,
                            })
                            .collect(),
                        ..earlier
                    }),
                    None => {
                        tracing::info!(key = %key, "multipart upload no longer known to the store, starting afresh");
                        None
                    }
                },
                None => None,
            };
            // Nothing reusable: a fresh upload costs the same and does not depend on the old id
            // (s3s-fs lists no parts, rather than NoSuchUpload, for an upload it forgot).
            let resumed = resumed.filter(|p| !p.parts.is_empty());
            let was_resumed = resumed.is_some();
            let progress = match resumed {
                Some(progress) => {
                    tracing::info!(key = %key, num_parts_done = progress.parts.len(), "resuming multipart upload");
                    progress
                }
                None => {
                    if let Some(stale) = earlier_upload_id_opt {
                        abort_upload(&client, &bucket, &key, &stale).await;
                    }
                    start_upload(&client, &bucket, &key, reader.len()).await?
                }
            };
            on_progress(&progress);
            let mut upload_id = progress.upload_id.clone();
            let mut result = upload_parts(&client, &bucket, &key, progress, &on_progress, &mut reader).await;
            if was_resumed && result.as_ref().is_err_and(|err| !err.is_retryable()) {
                // The store refused a part of the resumed upload (it completed or was aborted
                // meanwhile): send the whole file in a new upload.
                tracing::info!(key = %key, "resumed multipart upload refused, starting afresh");
                reader = PartReader::open(&path).await?;
                let progress = start_upload(&client, &bucket, &key, reader.len()).await?;
                on_progress(&progress);
                upload_id = progress.upload_id.clone();
                result = upload_parts(&client, &bucket, &key, progress, &on_progress, &mut reader).await;
            }
            if let Err(err) = &result {
                // A retryable failure keeps the upload open so the next attempt (or the next
                // process) continues it. Otherwise its parts are billed until aborted; best
                // effort, the error that matters is the one in hand.
                if !err.is_retryable() {
                    abort_upload(&client, &bucket, &key, &upload_id).await;
                }
            }
            result?;
            Ok(reader.finish())
        }
        .boxed()
    }

    fn head(&self, key: &str) -> BoxFuture<'static, StorageResult<ObjectInfo>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let key = self.object_key(key);
        async move {
            let output = client
                .head_object()
                .bucket(&bucket)
                .key(key?)
                .send()
                .await
                .map_err(|e| map_err(e, "head object", Missing::Object))?;
            // The ETag is the content's MD5 only for single-part objects not encrypted with KMS.
            let kms = matches!(
                output.server_side_encryption(),
                Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
            );
            let md5_hex = output
                .e_tag()
                .map(|etag| etag.trim_matches('"').to_ascii_lowercase())
                .filter(|etag| !kms && etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()));
            Ok(ObjectInfo {
                size: output.content_length().unwrap_or(0).max(0) as u64,
                md5_hex,
            })
        }
        .boxed()
    }

    fn signed_url(&self, key: &str, ttl: Duration) -> BoxFuture<'static, StorageResult<Option<String>>> {
        let client = self.client.clone();
        let bucket = self.settings.bucket.clone();
        let key = self.object_key(key);
        async move {
            let config = PresigningConfig::expires_in(ttl)
                .map_err(|e| StorageError::Invalid(format!("signed URL lifetime {ttl:?}: {e}")))?;
            let request = client
                .get_object()
                .bucket(&bucket)
                .key(key?)
                .presigned(config)
                .await
                .map_err(|e| map_err(e, "presign", Missing::Object))?;
            Ok(Some(request.uri().to_string()))
        }
        .boxed()
    }
}

/// Parts of one file in flight at once: the link stays busy while the next part is read and
/// hashed. Bounds memory at `PARTS_IN_FLIGHT * PART_SIZE` per upload.
const PARTS_IN_FLIGHT: usize = 4;

async fn start_upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    file_len: u64,
) -> StorageResult<MultipartProgress> {
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| map_err(e, "start multipart upload", Missing::Bucket))?;
    let upload_id = upload
        .upload_id()
        .ok_or_else(|| StorageError::Service("start multipart upload: no upload id in the answer".into()))?
        .to_string();
    Ok(MultipartProgress::new(upload_id, file_len))
}

/// Aborts a multipart upload, best effort: an upload the store no longer knows (completed,
/// aborted, expired) is what an abort wants anyway, and any other failure is left to the bucket's
/// `AbortIncompleteMultipartUpload` lifecycle rule.
async fn abort_upload(client: &aws_sdk_s3::Client, bucket: &str, key: &str, upload_id: &str) {
    let aborted = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    if let Err(err) = aborted {
        let err = map_err(err, "abort multipart upload", Missing::Object);
        tracing::debug!(key = %key, upload_id = %upload_id, error = %err, "multipart upload not aborted");
    }
}

/// Part number → ETag (where the store lists one) of every part the store holds for
/// `upload_id`; `None` when the store no longer knows the upload (completed, aborted or expired).
async fn listed_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> StorageResult<Option<std::collections::HashMap<i32, Option<String>>>> {
    let mut parts = std::collections::HashMap::new();
    let mut marker: Option<String> = None;
    loop {
        let listed = client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .set_part_number_marker(marker.clone())
            .send()
            .await;
        let page = match listed {
            Ok(page) => page,
            Err(err) => {
                return match map_err(err, "list parts", Missing::Object) {
                    StorageError::NotFound(_) => Ok(None),
                    StorageError::Invalid(detail) if detail.contains("NoSuchUpload") => Ok(None),
                    other => Err(other),
                }
            }
        };
        for part in page.parts() {
            if let Some(number) = part.part_number() {
                parts.insert(number, part.e_tag().map(str::to_string));
            }
        }
        match page.next_part_number_marker() {
            Some(next) if page.is_truncated() == Some(true) => marker = Some(next.to_string()),
            _ => return Ok(Some(parts)),
        }
    }
}

/// ETags compare without their quotes and case: stores differ in both.
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"').eq_ignore_ascii_case(b.trim_matches('"'))
}

async fn upload_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    mut progress: MultipartProgress,
    on_progress: &ProgressSink,
    reader: &mut PartReader,
) -> StorageResult<()> {
    let upload_id = progress.upload_id.clone();
    let done: std::collections::HashMap<i32, String> =
        progress.parts.iter().map(|p| (p.number, p.etag.clone())).collect();
    let mut in_flight = FuturesUnordered::new();
    let mut parts = Vec::new();
    let mut part_number = 1;
    let mut read_all = false;
    loop {
        while !read_all && in_flight.len() < PARTS_IN_FLIGHT {
            match reader.next_part().await? {
                Some(body) => {
                    // Every part is read (the receipt's MD5 covers the whole file); one the
                    // store holds with this content's ETag is not sent again.
                    let etag_opt = done
                        .get(&part_number)
                        .filter(|etag| same_etag(etag, &hex::encode(md5::Md5::digest(&body))));
                    match etag_opt {
                        Some(etag) => parts.push(
                            CompletedPart::builder()
                                .part_number(part_number)
                                .e_tag(etag.clone())
                                .build(),
                        ),
                        None => in_flight.push(upload_part(client, bucket, key, &upload_id, part_number, body)),
                    }
                    part_number += 1;
                }
                None => read_all = true,
            }
        }
        match in_flight.next().await {
            Some(part) => {
                let part = part?;
                progress.parts.retain(|p| Some(p.number) != part.part_number());
                progress.parts.push(UploadedPart {
                    number: part.part_number().unwrap_or_default(),
                    etag: part.e_tag().unwrap_or_default().to_string(),
                });
                on_progress(&progress);
                parts.push(part);
            }
            None => break,
        }
    }
    parts.sort_by_key(|p: &CompletedPart| p.part_number());
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .map_err(|e| map_err(e, "complete multipart upload", Missing::Bucket))?;
    Ok(())
}

async fn upload_part(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part_number: i32,
    body: bytes::Bytes,
) -> StorageResult<CompletedPart> {
    let output = client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(part_number)
        .content_md5(md5_base64(&body))
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| map_err(e, &format!("upload part {part_number}"), Missing::Bucket))?;
    Ok(CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(output.e_tag().map(str::to_string))
        .build())
}
