//! Azure Blob Storage through `azure_storage_blobs`: shared key, SAS token or connection string.
//! The only module that imports the Azure SDK.
//!
//! Large files go up as blocks of [`PART_SIZE`](super::PART_SIZE), each with a transactional
//! `Content-MD5` the service checks, then one `Put Block List` commits them atomically and
//! records the whole file's MD5 as the blob's `Content-MD5`.
//!
//! Resume: a block's id names its index and its content's MD5, so after a restart `Get Block
//! List` (uncommitted) says exactly which parts of this file the service already holds; only the
//! others are sent. The service keeps uncommitted blocks about a week and drops them when any
//! block list is committed, so a completed or expired upload lists nothing and starts afresh.
//! Caveat: Azure wants every block id of a blob to have the same length, so uncommitted blocks
//! left by a build older than these ids (8-character ids) make `Put Block` fail until they expire.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azure_core::error::ErrorKind;
use azure_core::{RetryOptions, StatusCode, TransportOptions};
use azure_storage::shared_access_signature::service_sas::BlobSasPermissions;
use azure_storage::{CloudLocation, ConnectionString, StorageCredentials};
use azure_storage_blobs::prelude::*;

/// Smallest range asked of the service (see `get_range`).
const AZURE_MIN_RANGE: u64 = 4 << 20;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use md5::{Digest, Md5};

use super::{
    prefixed, validate_key, MultipartProgress, ObjectInfo, PartReader, ProgressSink, PutReceipt, Secret,
    StorageBackend, StorageError, StorageResult, UploadedPart,
};
use crate::domain::Provider;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request, a block of up to 8 MiB included, on a slow link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// A pooled connection idle this long is not reused. Below the shortest keep-alive of the
/// servers it talks to (Azurite's and Node's default: 5 s): a connection the server is closing
/// at the moment it is reused fails its request, and SDK retries are off.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub enum AzureCredentials {
    /// Account name and shared key; the only kind that can sign SAS URLs for downloads.
    SharedKey { account: String, key: Secret },
    /// A SAS token (`sv=...&sig=...`) for the account or container.
    Sas { account: String, token: Secret },
    /// A full connection string (`AccountName=...;AccountKey=...;BlobEndpoint=...`).
    ConnectionString(Secret),
}

#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub container: String,
    /// Blob endpoint with the account, e.g. `http://127.0.0.1:10000/devstoreaccount1` for
    /// Azurite; `None` for the public cloud (`https://{account}.blob.core.windows.net`).
    pub endpoint: Option<String>,
    pub key_prefix: String,
    pub credentials: AzureCredentials,
}

pub struct AzureBackend {
    container: ContainerClient,
    settings: AzureSettings,
    /// Base URL shown by `storage/info`, without credentials.
    base_url: String,
}

impl AzureBackend {
    /// Fails on a connection string or SAS token that does not parse.
    pub fn new(settings: AzureSettings) -> Result<Self, StorageError> {
        let invalid = |what: &str, err: azure_core::Error| StorageError::Invalid(format!("{what}: {err}"));
        let (account, credentials, endpoint) = match &settings.credentials {
            AzureCredentials::SharedKey { account, key } => (
                account.clone(),
                StorageCredentials::access_key(account.clone(), key.expose().to_string()),
                settings.endpoint.clone(),
            ),
            AzureCredentials::Sas { account, token } => (
                account.clone(),
                StorageCredentials::sas_token(token.expose().trim_start_matches('?'))
                    .map_err(|e| invalid("SAS token", e))?,
                settings.endpoint.clone(),
            ),
            AzureCredentials::ConnectionString(text) => {
                let parsed = ConnectionString::new(text.expose()).map_err(|e| invalid("connection string", e))?;
                let account = parsed
                    .account_name
                    .ok_or_else(|| StorageError::Invalid("connection string has no AccountName".into()))?
                    .to_string();
                let credentials = parsed
                    .storage_credentials()
                    .map_err(|e| invalid("connection string", e))?;
                let endpoint = settings
                    .endpoint
                    .clone()
                    .or_else(|| parsed.blob_endpoint.map(str::to_string));
                (account, credentials, endpoint)
            }
        };
        let location = match &endpoint {
            Some(uri) => CloudLocation::Custom {
                account: account.clone(),
                uri: uri.trim_end_matches('/').to_string(),
            },
            None => CloudLocation::Public {
                account: account.clone(),
            },
        };
        let base_url = match &endpoint {
            Some(uri) => super::credential_free(uri),
            None => format!("https://{account}.blob.core.windows.net"),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| StorageError::Invalid(format!("http client: {e}")))?;
        let container = ClientBuilder::with_location(location, credentials)
            // The durable upload queue owns retries and their backoff.
            .retry(RetryOptions::none())
            .transport(TransportOptions::new(Arc::new(http)))
            .container_client(settings.container.clone());
        Ok(Self {
            container,
            base_url: format!("{base_url}/{}", settings.container),
            settings,
        })
    }

    /// Creates the container unless it exists: for first runs against a fresh account and for
    /// test setups (the recorder itself never creates buckets: a missing one is a setup error).
    pub async fn create_container(&self) -> StorageResult<()> {
        match self.container.create().await {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::HttpResponse {
                        status: StatusCode::Conflict,
                        ..
                    }
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(map_err(err, "create container")),
        }
    }

    /// A SAS token for the whole container (read, write, create, delete) valid for `ttl`, signed
    /// with this profile's shared key: what an operator would hand to a SAS-only profile. Tests
    /// use it to run a SAS profile against Azurite.
    pub async fn container_sas_token(&self, ttl: Duration) -> StorageResult<String> {
        use azure_storage::shared_access_signature::SasToken;
        let expiry = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(ttl).map_err(|e| StorageError::Invalid(format!("lifetime: {e}")))?;
        let permissions = BlobSasPermissions {
            read: true,
            write: true,
            create: true,
            delete: true,
            ..Default::default()
        };
        let sas = self
            .container
            .shared_access_signature(permissions, expiry)
            .await
            .map_err(|e| map_err(e, "sign container SAS"))?;
        sas.token().map_err(|e| map_err(e, "sign container SAS"))
    }

    fn blob(&self, key: &str) -> StorageResult<BlobClient> {
        validate_key(key)?;
        Ok(self.container.blob_client(prefixed(&self.settings.key_prefix, key)))
    }
}

fn map_err(err: azure_core::Error, what: &str) -> StorageError {
    let detail = super::redact_urls(&format!("{what}: {err}"));
    match err.kind() {
        ErrorKind::HttpResponse { status, error_code } => {
            let code = error_code.as_deref().unwrap_or("");
            match (*status, code) {
                (_, "ContainerNotFound") => StorageError::MissingBucket(detail),
                (_, "BlobNotFound") | (StatusCode::NotFound, _) => StorageError::NotFound(detail),
                (StatusCode::Unauthorized | StatusCode::Forbidden, _)
                | (_, "AuthenticationFailed" | "AuthorizationFailure") => StorageError::Unauthorized(detail),
                (StatusCode::RequestTimeout | StatusCode::TooManyRequests, _) => StorageError::Service(detail),
                (status, _) if u16::from(status) >= 500 => StorageError::Service(detail),
                _ => StorageError::Invalid(detail),
            }
        }
        ErrorKind::Io => {
            if detail.contains("timed out") || detail.contains("timeout") {
                StorageError::Timeout(detail)
            } else {
                StorageError::Io(detail)
            }
        }
        ErrorKind::Credential => StorageError::Unauthorized(detail),
        _ => StorageError::Service(detail),
    }
}

/// Blocks of one file in flight at once; bounds memory at `BLOCKS_IN_FLIGHT * PART_SIZE`.
const BLOCKS_IN_FLIGHT: usize = 4;

/// Sends one block; answers with what the progress records of it.
async fn put_block(blob: &BlobClient, id: String, part_number: u64, body: bytes::Bytes) -> StorageResult<UploadedPart> {
    let md5: [u8; 16] = Md5::digest(&body).into();
    blob.put_block(BlockId::new(id.clone()), body)
        .hash(md5)
        .await
        .map_err(|e| map_err(e, &format!("put block {part_number}")))?;
    Ok(UploadedPart {
        number: i32::try_from(part_number).expect("a blob has at most 50,000 blocks"),
        etag: id,
    })
}

/// A block's id: its index in the file and its content's MD5, `000003-<32 hex>`. Ids of one blob
/// must all have the same length (fixed-width index), and naming the content lets a resumed
/// upload tell a block of this file from one of another file of the same name and length.
fn block_id(part_number: u64, body: &[u8]) -> String {
    format!("{part_number:06}-{}", hex::encode(Md5::digest(body)))
}

/// The index a block id of [`block_id`]'s form names; `None` for any other id.
fn block_number(id: &str) -> Option<u64> {
    let (number, md5) = id.split_once('-')?;
    let well_formed = number.len() == 6 && md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| number.parse().ok()).flatten()
}

/// Id → size of every uncommitted block the service holds for `blob`; empty when it holds none
/// (a blob that does not exist yet has no list: that is empty too).
async fn uncommitted_blocks(blob: &BlobClient) -> StorageResult<std::collections::HashMap<String, u64>> {
    let listed = match blob.get_block_list().block_list_type(BlockListType::Uncommitted).await {
        Ok(listed) => listed,
        Err(err) => {
            return match map_err(err, "get block list") {
                StorageError::NotFound(_) => Ok(Default::default()),
                other => Err(other),
            }
        }
    };
    Ok(listed
        .block_with_size_list
        .blocks
        .into_iter()
        .filter_map(|block| match block.block_list_type {
            BlobBlockType::Uncommitted(id) => Some((String::from_utf8(id.bytes().to_vec()).ok()?, block.size_in_bytes)),
            _ => None,
        })
        .collect())
}

impl StorageBackend for AzureBackend {
    fn provider(&self) -> Provider {
        Provider::AzureBlob
    }

    fn url(&self) -> String {
        match self.settings.key_prefix.trim_matches('/') {
            "" => self.base_url.clone(),
            prefix => format!("{}/{prefix}", self.base_url),
        }
    }

    fn location(&self, key: &str) -> String {
        format!("{}/{}", self.base_url, prefixed(&self.settings.key_prefix, key))
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>> {
        let blob = self.blob(key);
        async move {
            let size = bytes.len() as u64;
            let md5: [u8; 16] = Md5::digest(&bytes).into();
            blob?
                .put_block_blob(bytes)
                .hash(md5)
                .await
                .map_err(|e| map_err(e, "put blob"))?;
            Ok(size)
        }
        .boxed()
    }

    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let blob = self.blob(key);
        async move { blob?.get_content().await.map_err(|e| map_err(e, "get blob")) }.boxed()
    }

    fn get_range(&self, key: &str, start: u64, end: u64) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let blob = self.blob(key);
        async move {
            let blob = blob?;
            let len = end.saturating_sub(start).saturating_add(1);
            // The SDK asks for a CRC64 of any range under 4 MiB, which Azurite answers with a
            // 500 at a blob's tail: ask for at least 4 MiB (the service stops at the blob's end)
            // and keep what was wanted.
            let asked = len.max(AZURE_MIN_RANGE);
            let mut pages = blob
                .get()
                .range(start..start.saturating_add(asked))
                .chunk_size(asked)
                .into_stream();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| map_err(e, "get blob range"))?;
                let bytes = page.data.collect().await.map_err(|e| map_err(e, "get blob range"))?;
                out.extend_from_slice(&bytes);
                if out.len() as u64 >= len {
                    break;
                }
            }
            out.truncate(usize::try_from(len).unwrap_or(usize::MAX));
            Ok(out)
        }
        .boxed()
    }

    fn serves_ranges(&self) -> bool {
        true
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>> {
        let blob = self.blob(key);
        async move {
            match blob?.delete().await {
                Ok(_) => Ok(()),
                Err(err) => match map_err(err, "delete blob") {
                    // Deleting what is not there is done.
                    StorageError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>> {
        let container = self.container.clone();
        let name = self.settings.container.clone();
        async move {
            match container.get_properties().await {
                Ok(_) => Ok(()),
                Err(err) => Err(match map_err(err, &format!("container {name}")) {
                    StorageError::NotFound(m) => StorageError::MissingBucket(m),
                    other => other,
                }),
            }
        }
        .boxed()
    }

    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn put_file(&self, key: &str, path: &Path) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        self.put_file_resumable(key, path, None, Arc::new(|_: &MultipartProgress| {}))
    }

    fn put_file_resumable(
        &self,
        key: &str,
        path: &Path,
        resume_opt: Option<MultipartProgress>,
        on_progress: ProgressSink,
    ) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        let blob = self.blob(key);
        let path = path.to_path_buf();
        async move {
            let blob = blob?;
            let mut reader = PartReader::open(&path).await?;
            if reader.num_parts() == 1 {
                let body = reader.next_part().await?.unwrap_or_default();
                let md5: [u8; 16] = Md5::digest(&body).into();
                blob.put_block_blob(body)
                    .hash(md5)
                    .await
                    .map_err(|e| map_err(e, "put blob"))?;
                return Ok(reader.finish());
            }
            // Blocks the service holds from an interrupted upload of a file of this length; a
            // listed block is reused only if its id (index and MD5) and size match the local part.
            let held = match resume_opt.filter(|p| p.file_len == reader.len()) {
                Some(_) => match uncommitted_blocks(&blob).await {
                    Ok(held) => held,
                    // An outage: the next attempt asks again.
                    Err(err) if err.is_retryable() => return Err(err),
                    Err(err) => {
                        tracing::info!(error = %err, "block list unreadable, sending every block");
                        Default::default()
                    }
                },
                None => Default::default(),
            };
            let mut progress = MultipartProgress::new("", reader.len());
            progress.parts = held
                .keys()
                .filter_map(|id| {
                    Some(UploadedPart {
                        number: i32::try_from(block_number(id)?).ok()?,
                        etag: id.clone(),
                    })
                })
                .collect();
            progress.parts.sort_by_key(|part| part.number);
            if !progress.parts.is_empty() {
                tracing::info!(num_blocks_held = progress.parts.len(), "resuming block upload");
            }
            on_progress(&progress);
            // The block list is in file order whatever order the blocks finish in.
            let mut blocks = Vec::new();
            let mut in_flight = FuturesUnordered::new();
            let mut part_number = 0u64;
            let mut read_all = false;
            loop {
                while !read_all && in_flight.len() < BLOCKS_IN_FLIGHT {
                    match reader.next_part().await? {
                        Some(body) => {
                            let id = block_id(part_number, &body);
                            blocks.push(BlobBlockType::new_uncommitted(BlockId::new(id.clone())));
                            if held.get(&id) != Some(&(body.len() as u64)) {
                                in_flight.push(put_block(&blob, id, part_number, body));
                            }
                            part_number += 1;
                        }
                        None => read_all = true,
                    }
                }
                match in_flight.next().await {
                    Some(result) => {
                        let part = result?;
                        progress.parts.retain(|p| p.number != part.number);
                        progress.parts.push(part);
                        on_progress(&progress);
                    }
                    None => break,
                }
            }
            let receipt = reader.finish();
            let whole_md5 = hex::decode(&receipt.md5_hex).expect("hex we encoded decodes");
            let whole_md5 =
                BlobContentMD5::from(<[u8; 16]>::try_from(whole_md5.as_slice()).expect("an MD5 has 16 bytes"));
            blob.put_block_list(BlockList { blocks })
                .content_md5(whole_md5)
                .await
                .map_err(|e| map_err(e, "put block list"))?;
            Ok(receipt)
        }
        .boxed()
    }

    fn head(&self, key: &str) -> BoxFuture<'static, StorageResult<ObjectInfo>> {
        let blob = self.blob(key);
        async move {
            let properties = blob?
                .get_properties()
                .await
                .map_err(|e| map_err(e, "blob properties"))?;
            let properties = properties.blob.properties;
            Ok(ObjectInfo {
                size: properties.content_length,
                md5_hex: properties.content_md5.map(|md5| hex::encode(md5.as_slice())),
            })
        }
        .boxed()
    }

    fn signed_url(&self, key: &str, ttl: Duration) -> BoxFuture<'static, StorageResult<Option<String>>> {
        let blob = self.blob(key);
        let can_sign = matches!(
            self.settings.credentials,
            AzureCredentials::SharedKey { .. } | AzureCredentials::ConnectionString(_)
        );
        async move {
            let blob = blob?;
            if !can_sign {
                // A SAS token cannot mint another SAS, and handing out the configured one would
                // leak a credential: no provider URL.
                return Ok(None);
            }
            let expiry = time::OffsetDateTime::now_utc()
                + time::Duration::try_from(ttl).map_err(|e| StorageError::Invalid(format!("lifetime: {e}")))?;
            let permissions = BlobSasPermissions {
                read: true,
                ..Default::default()
            };
            let sas = match blob.shared_access_signature(permissions, expiry).await {
                Ok(sas) => sas,
                // A connection string with a SAS instead of a key cannot sign either.
                Err(err) if matches!(err.kind(), ErrorKind::Credential) => return Ok(None),
                Err(err) => return Err(map_err(err, "sign blob URL")),
            };
            let url = blob
                .generate_signed_blob_url(&sas)
                .map_err(|e| map_err(e, "sign blob URL"))?;
            Ok(Some(url.to_string()))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ids_name_the_index_and_the_content() {
        let id = block_id(3, b"abc");
        assert_eq!(id, "000003-900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            id.len(),
            block_id(49_999, b"other content").len(),
            "ids of one blob have one length"
        );
        assert_eq!(block_number(&id), Some(3));
        // Ids of the builds before resume, and anything else, are not taken for ours.
        assert_eq!(block_number("00000003"), None);
        assert_eq!(block_number("000003-xyz"), None);
    }
}
