//! SFTP through `russh` + `russh-sftp`: a pure-Rust async SSH client, public-key auth, and a pinned
//! host key (a server presenting any other key is refused before credentials are sent). The only
//! module that speaks SSH.
//!
//! Each operation opens its own connection: uploads are minutes apart and an SSH handshake on a
//! LAN costs milliseconds, while a pooled session would need its own liveness and reconnect logic
//! after every server restart. Writes go to a temp file in the target directory and are renamed
//! into place, so a reader never sees half an object.
//!
//! Resume: a track upload records its temp file and, after every part the server acknowledged
//! (the write pipeline drained), the number of bytes written. After a restart the temp file is
//! opened again (not truncated) and the upload continues from the smaller of the recorded offset
//! and the temp file's size: the writes are sequential and the server applies them in order, so
//! the first `offset` bytes are the file's own; anything past them (the tail of a write the crash
//! cut) is written over. A temp file that is gone, or larger than the local file, starts afresh.
//!
//! Why one file (~600 lines of code): the only module that speaks SSH; connection, host-key
//! pinning, resume and rename share one session type.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{OpenFlags, StatusCode};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{
    prefixed, validate_key, MultipartProgress, ObjectInfo, PartReader, ProgressSink, PutReceipt, Secret,
    StorageBackend, StorageError, StorageResult,
};
use crate::domain::Provider;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no traffic for this long is dead (a server that vanished mid-upload).
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SftpSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    /// OpenSSH private key (PEM/OpenSSH format, unencrypted or with `private_key_passphrase`).
    pub private_key: Secret,
    pub private_key_passphrase: Option<Secret>,
    /// The server's public host key, `ssh-ed25519 AAAA...` as in a known_hosts or `.pub` file.
    pub host_key: String,
    /// Absolute directory on the server that holds the objects.
    pub root: String,
    pub key_prefix: String,
}

pub struct SftpBackend {
    settings: Arc<SftpSettings>,
    host_key: PublicKey,
    private_key: Arc<russh::keys::PrivateKey>,
}

impl SftpBackend {
    /// Fails on a host key or private key that does not parse.
    pub fn new(settings: SftpSettings) -> Result<Self, StorageError> {
        let host_key = parse_host_key(&settings.host_key)?;
        let private_key = russh::keys::decode_secret_key(
            settings.private_key.expose(),
            settings.private_key_passphrase.as_ref().map(|p| p.expose()),
        )
        .map_err(|e| StorageError::Invalid(format!("private key: {e}")))?;
        if !settings.root.starts_with('/') {
            return Err(StorageError::Invalid(format!(
                "root {:?} must be an absolute path",
                settings.root
            )));
        }
        Ok(Self {
            settings: Arc::new(settings),
            host_key,
            private_key: Arc::new(private_key),
        })
    }

    fn remote_path(&self, key: &str) -> StorageResult<String> {
        validate_key(key)?;
        Ok(format!(
            "{}/{}",
            self.settings.root.trim_end_matches('/'),
            prefixed(&self.settings.key_prefix, key)
        ))
    }

    fn connector(&self) -> Connector {
        Connector {
            settings: self.settings.clone(),
            host_key: self.host_key.clone(),
            private_key: self.private_key.clone(),
        }
    }
}

/// Accepts `ssh-ed25519 AAAA... comment`, or a known_hosts line with host patterns before it.
fn parse_host_key(text: &str) -> Result<PublicKey, StorageError> {
    let text = text.trim();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let start = fields
        .iter()
        .position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-"))
        .ok_or_else(|| StorageError::Invalid("host_key: expected \"ssh-<type> <base64>\"".into()))?;
    let key_text = fields[start..].iter().take(2).copied().collect::<Vec<_>>().join(" ");
    PublicKey::from_openssh(&key_text).map_err(|e| StorageError::Invalid(format!("host_key: {e}")))
}

/// Everything one operation needs to open its own session, cloneable into a `'static` future.
#[derive(Clone)]
struct Connector {
    settings: Arc<SftpSettings>,
    host_key: PublicKey,
    private_key: Arc<russh::keys::PrivateKey>,
}

struct PinnedHostKey {
    expected: PublicKey,
}

impl russh::client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data() == self.expected.key_data(),
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

/// An open SFTP session; the SSH connection stays up as long as this lives.
struct Connection {
    sftp: SftpSession,
    _ssh: russh::client::Handle<PinnedHostKey>,
}

impl Connector {
    fn host(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    async fn connect(&self) -> StorageResult<Connection> {
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(INACTIVITY_TIMEOUT),
            ..Default::default()
        });
        let handler = PinnedHostKey {
            expected: self.host_key.clone(),
        };
        let address = (self.settings.host.clone(), self.settings.port);
        let mut ssh = tokio::time::timeout(CONNECT_TIMEOUT, russh::client::connect(config, address, handler))
            .await
            .map_err(|_| StorageError::Timeout(format!("connecting to {}: no answer in time", self.host())))?
            .map_err(|e| self.ssh_error(e))?;
        let hash_alg = ssh
            .best_supported_rsa_hash()
            .await
            .map_err(|e| self.ssh_error(e))?
            .flatten();
        let auth = ssh
            .authenticate_publickey(
                self.settings.username.clone(),
                PrivateKeyWithHashAlg::new(self.private_key.clone(), hash_alg),
            )
            .await
            .map_err(|e| self.ssh_error(e))?;
        if !matches!(auth, russh::client::AuthResult::Success) {
            return Err(StorageError::Unauthorized(format!(
                "{} refused the key of user {}",
                self.host(),
                self.settings.username
            )));
        }
        let channel = ssh.channel_open_session().await.map_err(|e| self.ssh_error(e))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.ssh_error(e))?;
        let sftp = SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| sftp_error(e, "start sftp"))?;
        Ok(Connection { sftp, _ssh: ssh })
    }

    fn ssh_error(&self, err: russh::Error) -> StorageError {
        let detail = format!("{}: {err}", self.host());
        match err {
            russh::Error::UnknownKey | russh::Error::WrongServerSig => StorageError::Unauthorized(format!(
                "{}: the server's host key does not match the pinned host_key",
                self.host()
            )),
            russh::Error::NotAuthenticated | russh::Error::NoAuthMethod | russh::Error::UnsupportedAuthMethod => {
                StorageError::Unauthorized(detail)
            }
            russh::Error::ConnectionTimeout
            | russh::Error::KeepaliveTimeout
            | russh::Error::InactivityTimeout
            | russh::Error::Elapsed(_) => StorageError::Timeout(detail),
            russh::Error::IO(_) | russh::Error::Disconnect | russh::Error::HUP | russh::Error::SendError => {
                StorageError::Io(detail)
            }
            _ => StorageError::Service(detail),
        }
    }
}

fn sftp_error(err: russh_sftp::client::error::Error, what: &str) -> StorageError {
    use russh_sftp::client::error::Error;
    let detail = format!("{what}: {err}");
    match &err {
        Error::Status(status) => match status.status_code {
            StatusCode::NoSuchFile => StorageError::NotFound(detail),
            StatusCode::PermissionDenied => StorageError::Unauthorized(detail),
            _ => StorageError::Service(detail),
        },
        Error::Timeout => StorageError::Timeout(detail),
        Error::IO(_) => StorageError::Io(detail),
        _ => StorageError::Service(detail),
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")
}

/// A fresh temp file name beside `path`: hidden, unique, and recognisable by [`is_temp_of`].
fn temp_path(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or("object");
    format!("{}/.{name}.{}.tmp", parent(path), uuid::Uuid::new_v4().simple())
}

/// Whether `tmp` is a temp file [`temp_path`] made for `path`: recorded progress names the file
/// to continue, and nothing else in the directory is ever opened for writing from it.
fn is_temp_of(tmp: &str, path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("object");
    let prefix = format!("{}/.{name}.", parent(path));
    tmp.strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Connection {
    /// Creates the directories between the root (which must exist) and `dir`.
    async fn create_dirs(&self, root: &str, dir: &str) -> StorageResult<()> {
        let rest = dir.strip_prefix(root).unwrap_or("").trim_start_matches('/');
        let mut current = root.trim_end_matches('/').to_string();
        for segment in rest.split('/').filter(|s| !s.is_empty()) {
            current = format!("{current}/{segment}");
            match self.sftp.metadata(current.clone()).await {
                Ok(meta) if meta.is_dir() => continue,
                Ok(_) => {
                    return Err(StorageError::Invalid(format!(
                        "{current} exists and is not a directory"
                    )))
                }
                Err(_) => {
                    if let Err(err) = self.sftp.create_dir(current.clone()).await {
                        // Another upload may have created it meanwhile.
                        if !matches!(self.sftp.metadata(current.clone()).await, Ok(meta) if meta.is_dir()) {
                            return Err(sftp_error(err, &format!("create directory {current}")));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Renames `tmp` over `path`. Plain SFTP rename refuses an existing target, so an overwrite
    /// removes the old object first: for that instant a reader sees no object, never a partial one.
    async fn replace(&self, tmp: &str, path: &str) -> StorageResult<()> {
        if self.sftp.rename(tmp, path).await.is_ok() {
            return Ok(());
        }
        let _ = self.sftp.remove_file(path).await;
        if let Err(err) = self.sftp.rename(tmp, path).await {
            let _ = self.sftp.remove_file(tmp).await;
            return Err(sftp_error(err, &format!("rename into {path}")));
        }
        Ok(())
    }

    /// Opens the temp file an interrupted upload of a `file_len`-byte file left, positioned at
    /// the byte to continue from: the recorded acknowledged `offset`, or less if the file is
    /// shorter. `None` when there is nothing to continue (gone, or not this file's).
    async fn reopen_temp(
        &self,
        tmp: &str,
        offset: u64,
        file_len: u64,
    ) -> StorageResult<Option<(russh_sftp::client::fs::File, u64)>> {
        let size = match self.sftp.metadata(tmp.to_string()).await {
            Ok(meta) if meta.is_regular() && meta.len() <= file_len => meta.len(),
            Ok(_) => {
                let _ = self.sftp.remove_file(tmp.to_string()).await;
                return Ok(None);
            }
            Err(err) => {
                return match sftp_error(err, &format!("stat {tmp}")) {
                    StorageError::NotFound(_) => Ok(None),
                    other => Err(other),
                }
            }
        };
        let mut file = self
            .sftp
            .open_with_flags(tmp.to_string(), OpenFlags::WRITE)
            .await
            .map_err(|e| sftp_error(e, &format!("open {tmp}")))?;
        let start = size.min(offset);
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|err| StorageError::Io(format!("seek {tmp}: {err}")))?;
        Ok(Some((file, start)))
    }

    /// Writes to a temp file beside `path` with `write`, then renames it into place.
    async fn write_atomically<F, Fut, T>(&self, root: &str, path: &str, write: F) -> StorageResult<T>
    where
        F: FnOnce(russh_sftp::client::fs::File) -> Fut,
        Fut: std::future::Future<Output = StorageResult<T>>,
    {
        self.create_dirs(root, parent(path)).await?;
        let tmp = temp_path(path);
        let file = self
            .sftp
            .create(tmp.clone())
            .await
            .map_err(|e| sftp_error(e, &format!("create {tmp}")))?;
        match write(file).await {
            Ok(value) => {
                self.replace(&tmp, path).await?;
                Ok(value)
            }
            Err(err) => {
                let _ = self.sftp.remove_file(tmp).await;
                Err(err)
            }
        }
    }
}

fn write_error(err: std::io::Error) -> StorageError {
    if err.kind() == std::io::ErrorKind::TimedOut {
        StorageError::Timeout(format!("write: {err}"))
    } else {
        StorageError::Io(format!("write: {err}"))
    }
}

impl StorageBackend for SftpBackend {
    fn provider(&self) -> Provider {
        Provider::SftpStorage
    }

    fn url(&self) -> String {
        let base = format!(
            "sftp://{}:{}{}",
            self.settings.host,
            self.settings.port,
            self.settings.root.trim_end_matches('/')
        );
        match self.settings.key_prefix.trim_matches('/') {
            "" => base,
            prefix => format!("{base}/{prefix}"),
        }
    }

    fn location(&self, key: &str) -> String {
        format!(
            "sftp://{}:{}{}/{}",
            self.settings.host,
            self.settings.port,
            self.settings.root.trim_end_matches('/'),
            prefixed(&self.settings.key_prefix, key)
        )
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> BoxFuture<'static, StorageResult<u64>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        async move {
            let path = path?;
            let connection = connector.connect().await?;
            let size = bytes.len() as u64;
            connection
                .write_atomically(&connector.settings.root, &path, |mut file| async move {
                    file.write_all(&bytes).await.map_err(write_error)?;
                    file.shutdown().await.map_err(write_error)?;
                    Ok(())
                })
                .await?;
            Ok(size)
        }
        .boxed()
    }

    fn get(&self, key: &str) -> BoxFuture<'static, StorageResult<Vec<u8>>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        async move {
            let path = path?;
            let connection = connector.connect().await?;
            connection
                .sftp
                .read(path.clone())
                .await
                .map_err(|e| sftp_error(e, &format!("read {path}")))
        }
        .boxed()
    }

    fn get_to_file(&self, key: &str, dest: &Path) -> BoxFuture<'static, StorageResult<u64>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        let dest = dest.to_path_buf();
        async move {
            let path = path?;
            let connection = connector.connect().await?;
            let mut remote = connection
                .sftp
                .open(path.clone())
                .await
                .map_err(|e| sftp_error(e, &format!("open {path}")))?;
            // tokio's file writes on the blocking pool; the copy holds one buffer at a time.
            let mut local = tokio::fs::File::create(&dest)
                .await
                .map_err(|err| StorageError::Io(format!("{}: {err}", dest.display())))?;
            let num_bytes = tokio::io::copy(&mut remote, &mut local)
                .await
                .map_err(|err| StorageError::Io(format!("read {path}: {err}")))?;
            local
                .flush()
                .await
                .map_err(|err| StorageError::Io(format!("{}: {err}", dest.display())))?;
            Ok(num_bytes)
        }
        .boxed()
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, StorageResult<()>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        async move {
            let path = path?;
            let connection = connector.connect().await?;
            match connection.sftp.remove_file(path.clone()).await {
                Ok(()) => Ok(()),
                Err(err) => match sftp_error(err, &format!("remove {path}")) {
                    StorageError::NotFound(_) => Ok(()),
                    other => Err(other),
                },
            }
        }
        .boxed()
    }

    fn check_bucket(&self) -> BoxFuture<'static, StorageResult<()>> {
        let connector = self.connector();
        async move {
            let connection = connector.connect().await?;
            let root = connector.settings.root.clone();
            match connection.sftp.metadata(root.clone()).await {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(StorageError::MissingBucket(format!("{root} is not a directory"))),
                Err(err) => Err(match sftp_error(err, &format!("directory {root}")) {
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

    fn put_file(&self, key: &str, local: &Path) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        let local = local.to_path_buf();
        async move {
            let path = path?;
            let mut reader = PartReader::open(&local).await?;
            let connection = connector.connect().await?;
            connection
                .write_atomically(&connector.settings.root, &path, |mut file| async move {
                    while let Some(part) = reader.next_part().await? {
                        file.write_all(&part).await.map_err(write_error)?;
                    }
                    file.shutdown().await.map_err(write_error)?;
                    Ok(reader.finish())
                })
                .await
        }
        .boxed()
    }

    fn put_file_resumable(
        &self,
        key: &str,
        local: &Path,
        resume_opt: Option<MultipartProgress>,
        on_progress: ProgressSink,
    ) -> BoxFuture<'static, StorageResult<PutReceipt>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        let local = local.to_path_buf();
        async move {
            let path = path?;
            let mut reader = PartReader::open(&local).await?;
            let connection = connector.connect().await?;
            connection.create_dirs(&connector.settings.root, parent(&path)).await?;
            let earlier = resume_opt.filter(|p| is_temp_of(&p.upload_id, &path));
            let earlier = match earlier {
                Some(earlier) if earlier.file_len != reader.len() => {
                    // Another file's partial copy (the local file was replaced): of no use.
                    let _ = connection.sftp.remove_file(earlier.upload_id).await;
                    None
                }
                other => other,
            };
            let reopened = match &earlier {
                Some(earlier) => connection
                    .reopen_temp(&earlier.upload_id, earlier.offset, earlier.file_len)
                    .await?
                    .map(|(file, start)| (earlier.upload_id.clone(), file, start)),
                None => None,
            };
            let (tmp, mut file, start) = match reopened {
                Some(reopened) => {
                    tracing::info!(path = %path, offset = reopened.2, "resuming sftp upload");
                    reopened
                }
                None => {
                    let tmp = temp_path(&path);
                    let file = connection
                        .sftp
                        .create(tmp.clone())
                        .await
                        .map_err(|e| sftp_error(e, &format!("create {tmp}")))?;
                    (tmp, file, 0)
                }
            };
            reader.read_through(start).await?;
            let mut progress = MultipartProgress {
                offset: start,
                ..MultipartProgress::new(tmp.clone(), reader.len())
            };
            on_progress(&progress);
            let written: StorageResult<()> = async {
                while let Some(part) = reader.next_part().await? {
                    file.write_all(&part).await.map_err(write_error)?;
                    // Waits for the server to acknowledge every write of the part: only then
                    // does the recorded offset promise those bytes are in the file.
                    file.flush().await.map_err(write_error)?;
                    progress.offset = reader.position();
                    on_progress(&progress);
                }
                file.shutdown().await.map_err(write_error)
            }
            .await;
            if let Err(err) = written {
                // A retryable failure keeps the temp file for the next attempt to continue.
                if !err.is_retryable() {
                    let _ = connection.sftp.remove_file(tmp).await;
                }
                return Err(err);
            }
            connection.replace(&tmp, &path).await?;
            Ok(reader.finish())
        }
        .boxed()
    }

    fn head(&self, key: &str) -> BoxFuture<'static, StorageResult<ObjectInfo>> {
        let connector = self.connector();
        let path = self.remote_path(key);
        async move {
            let path = path?;
            let connection = connector.connect().await?;
            let meta = connection
                .sftp
                .metadata(path.clone())
                .await
                .map_err(|e| sftp_error(e, &format!("stat {path}")))?;
            Ok(ObjectInfo {
                size: meta.len(),
                md5_hex: None,
            })
        }
        .boxed()
    }

    fn signed_url(&self, _key: &str, _ttl: Duration) -> BoxFuture<'static, StorageResult<Option<String>>> {
        // SFTP has no signed URLs: the recorder serves such objects behind its own.
        async { Ok(None) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_parse_from_pub_files_and_known_hosts_lines() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        assert!(parse_host_key(key).is_ok());
        assert!(parse_host_key(&format!("{key} host@example")).is_ok());
        assert!(parse_host_key(&format!("[127.0.0.1]:2222 {key}")).is_ok());
        assert!(parse_host_key("nonsense").is_err());
        assert!(parse_host_key("ssh-ed25519 !!!").is_err());
    }

    #[test]
    fn only_our_temp_files_are_continued() {
        let path = "/srv/rec/a/t1.webm";
        let tmp = temp_path(path);
        assert!(is_temp_of(&tmp, path), "{tmp}");
        assert!(!is_temp_of(&tmp, "/srv/rec/a/t2.webm"));
        assert!(!is_temp_of("/srv/rec/a/t1.webm", path));
        assert!(!is_temp_of("/srv/rec/a/.t1.webm.../../x.tmp", path));
        assert!(!is_temp_of(
            "/srv/rec/b/.t1.webm.0123456789abcdef0123456789abcdef.tmp",
            path
        ));
        assert!(is_temp_of(
            "/srv/rec/a/.t1.webm.0123456789abcdef0123456789abcdef.tmp",
            path
        ));
    }

    #[test]
    fn parents_of_remote_paths() {
        assert_eq!(parent("/srv/a/b.json"), "/srv/a");
        assert_eq!(parent("b.json"), "");
    }
}
