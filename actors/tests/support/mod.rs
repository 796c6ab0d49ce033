//! What the storage tests share: the addresses and credentials of the servers that
//! `scripts/test-services.sh start` runs, and one constructor per backend pointed at them.
//! A missing server fails the test with the command to run; nothing is skipped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};
use recorder_actors::storage::*;

/// KEY=VALUE lines written by `scripts/test-services.sh`.
pub struct Services(HashMap<String, String>);

fn env_file() -> PathBuf {
    if let Ok(path) = std::env::var("RTC_SERVICES_ENV") {
        return path.into();
    }
    let dir = std::env::var("RTC_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/rtc-recorder/services")
        });
    dir.join("env")
}

impl Services {
    pub fn load() -> Services {
        let path = env_file();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the storage test servers are not set up ({}: {e}); run `scripts/test-services.sh start` \
                 (make test does)",
                path.display()
            )
        });
        Services(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> String {
        self.0.get(name).cloned().unwrap_or_else(|| {
            panic!(
                "{name} missing from {}; re-run scripts/test-services.sh start",
                env_file().display()
            )
        })
    }

    fn port_of(&self, url_var: &str) -> u16 {
        let url = self.get(url_var);
        url.rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{url_var}={url} has no port"))
    }

    /// Fails with a clear message when the server behind `url_var` does not accept connections.
    pub fn require(&self, what: &str, port: u16) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            panic!("the {what} test server on 127.0.0.1:{port} is not running; run `scripts/test-services.sh start`");
        }
    }

    pub fn s3_settings(&self, prefix: &str) -> S3Settings {
        self.require("S3 (s3s-fs)", self.port_of("RTC_S3_ENDPOINT"));
        S3Settings {
            bucket: self.get("RTC_S3_BUCKET"),
            region: self.get("RTC_S3_REGION"),
            endpoint: Some(self.get("RTC_S3_ENDPOINT")),
            path_style: true,
            key_prefix: prefix.into(),
            access_key_id: Secret::new(self.get("RTC_S3_ACCESS_KEY")),
            secret_access_key: Secret::new(self.get("RTC_S3_SECRET_KEY")),
            session_token: None,
        }
    }

    pub fn azure_settings(&self, prefix: &str) -> AzureSettings {
        self.require("Azure (azurite)", self.port_of_endpoint("RTC_AZURE_ENDPOINT"));
        AzureSettings {
            container: self.get("RTC_AZURE_CONTAINER"),
            endpoint: Some(self.get("RTC_AZURE_ENDPOINT")),
            key_prefix: prefix.into(),
            credentials: AzureCredentials::SharedKey {
                account: self.get("RTC_AZURE_ACCOUNT"),
                key: Secret::new(self.get("RTC_AZURE_KEY")),
            },
        }
    }

    fn port_of_endpoint(&self, var: &str) -> u16 {
        let url = url::Url::parse(&self.get(var)).expect("endpoint is a URL");
        url.port().expect("endpoint has a port")
    }

    pub fn gcs_settings(&self, prefix: &str) -> GcsSettings {
        self.require("GCS (gcp-storage-emulator)", self.port_of_endpoint("RTC_GCS_ENDPOINT"));
        let key = std::fs::read_to_string(self.get("RTC_GCS_SERVICE_ACCOUNT_FILE")).expect("service account file");
        GcsSettings {
            bucket: self.get("RTC_GCS_BUCKET"),
            endpoint: Some(self.get("RTC_GCS_ENDPOINT")),
            key_prefix: prefix.into(),
            service_account: Some(Secret::new(key)),
            anonymous: true,
        }
    }

    pub fn sftp_settings(&self, prefix: &str) -> SftpSettings {
        let port: u16 = self.get("RTC_SFTP_PORT").parse().expect("RTC_SFTP_PORT is a port");
        self.require("SFTP (sshd)", port);
        SftpSettings {
            host: self.get("RTC_SFTP_HOST"),
            port,
            username: self.get("RTC_SFTP_USER"),
            private_key: Secret::new(std::fs::read_to_string(self.get("RTC_SFTP_KEY_FILE")).expect("user key")),
            private_key_passphrase: None,
            host_key: std::fs::read_to_string(self.get("RTC_SFTP_HOST_KEY_FILE")).expect("host key"),
            root: self.get("RTC_SFTP_ROOT"),
            key_prefix: prefix.into(),
        }
    }
}

pub fn unique_prefix(tag: &str) -> String {
    format!("test-{tag}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn azure_backend(settings: AzureSettings) -> AzureBackend {
    let backend = AzureBackend::new(settings).expect("azure settings");
    backend
        .create_container()
        .await
        .expect("create the test container in azurite");
    backend
}

/// Writes `size` bytes of a seeded pattern to `path` in 1 MiB steps (never the whole file in
/// memory) and returns its hex MD5.
pub fn write_pattern_file(path: &Path, size: u64, seed: u8) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create test file"));
    let mut md5 = Md5::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(chunk.len() as u64) as usize;
        for (i, b) in chunk[..n].iter_mut().enumerate() {
            let at = written + i as u64;
            *b = ((at / 7) as u8).wrapping_add(seed).wrapping_mul(31) ^ (at as u8);
        }
        file.write_all(&chunk[..n]).unwrap();
        md5.update(&chunk[..n]);
        written += n as u64;
    }
    file.flush().unwrap();
    hex::encode(md5.finalize())
}

pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// A port on loopback that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub type Backend = Arc<dyn StorageBackend>;

/// A storage server a fault test runs on its own port and data directory, and may kill and start
/// again on the same port and data.
pub trait PrivateServer {
    /// What the failure messages call it.
    fn name(&self) -> &'static str;
    fn port(&self) -> u16;
    /// SIGKILL of the server and of every process it forked (sshd serves each connection from
    /// its own process): the server vanishes mid-request.
    fn kill(&mut self);
    /// Starts the server again on the same port and data.
    fn restart(&mut self);
    /// A backend for this server reached at `127.0.0.1:{port}`: its own port, or a proxy's.
    fn backend(&self, port: u16) -> Backend;
    /// Whether everything the server acknowledged of the object `name` is on its disk by now,
    /// so that a kill keeps it. Servers that write before they answer hold it at once.
    fn persisted(&self, _name: &str) -> bool {
        true
    }
    /// Whether an upload the server acknowledged parts of survives its restart, so the upload
    /// resumes rather than starting afresh.
    fn keeps_uploads(&self) -> bool {
        true
    }
}

/// A server process started from a fixed command line; restarted with the same one.
pub struct ServerProcess {
    what: &'static str,
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    pub port: u16,
    child: Option<std::process::Child>,
}

impl ServerProcess {
    /// Runs `program args` and waits until it listens on `127.0.0.1:{port}`. A missing program
    /// fails the test with the command that installs it.
    pub fn start(
        what: &'static str,
        program: impl Into<PathBuf>,
        args: Vec<std::ffi::OsString>,
        port: u16,
    ) -> ServerProcess {
        let program = program.into();
        assert!(
            program.is_file(),
            "{what}: {} is not installed; run `scripts/test-services.sh start`",
            program.display()
        );
        let mut server = ServerProcess {
            what,
            program,
            args,
            port,
            child: None,
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.what);
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e})", self.program.display()));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "{} exited at start: {exited:?}", self.what);
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not listen on 127.0.0.1:{} within 60 s",
                self.what,
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL of the process and all its descendants.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id());
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops `pid` and every descendant (each stopped before its children are listed, so none forks
/// one we miss), then kills them all. Descendants that started their own session (sshd's
/// per-connection processes) are found by parent, not by process group.
fn kill_tree(pid: u32) {
    let mut doomed = vec![pid];
    let mut next = 0;
    while next < doomed.len() {
        // SAFETY: kill(2) with a pid we found and a valid signal has no memory effects.
        unsafe { libc::kill(doomed[next] as libc::pid_t, libc::SIGSTOP) };
        let parent = doomed[next];
        doomed.extend(children_of(parent));
        next += 1;
    }
    for pid in doomed {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Processes whose parent is `pid`, from `/proc/*/stat` (the parent is the second field after the
/// command name, which is in parentheses and may hold spaces).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let parent: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// A private s3s-fs process a fault test may stop and restart on the same port and data.
pub struct S3sServer {
    pub port: u16,
    pub root: PathBuf,
    pub bucket: String,
    process: ServerProcess,
    access_key: String,
    secret_key: String,
    region: String,
}

impl S3sServer {
    /// Starts s3s-fs on a free port serving `root`, with `bucket` created.
    pub fn start(services: &Services, root: &Path, bucket: &str) -> S3sServer {
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let port = closed_port();
        let (access_key, secret_key) = (services.get("RTC_S3_ACCESS_KEY"), services.get("RTC_S3_SECRET_KEY"));
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string().into(),
            "--access-key".into(),
            access_key.clone().into(),
            "--secret-key".into(),
            secret_key.clone().into(),
            root.into(),
        ];
        S3sServer {
            port,
            root: root.to_path_buf(),
            bucket: bucket.into(),
            process: ServerProcess::start("s3s-fs", services.get("RTC_S3S_FS_BIN"), args, port),
            access_key,
            secret_key,
            region: services.get("RTC_S3_REGION"),
        }
    }

    pub fn restart(&mut self) {
        self.process.restart();
    }

    /// SIGKILL: the server vanishes mid-request.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn settings(&self, _services: &Services) -> S3Settings {
        self.settings_at(self.port)
    }

    fn settings_at(&self, port: u16) -> S3Settings {
        S3Settings {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            path_style: true,
            key_prefix: String::new(),
            access_key_id: Secret::new(self.access_key.clone()),
            secret_access_key: Secret::new(self.secret_key.clone()),
            session_token: None,
        }
    }

    /// Bytes in files under the server's data directory.
    pub fn bytes_on_disk(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.root)
    }
}

impl PrivateServer for S3sServer {
    fn name(&self) -> &'static str {
        "s3s-fs"
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn kill(&mut self) {
        S3sServer::kill(self);
    }

    fn restart(&mut self) {
        S3sServer::restart(self);
    }

    fn backend(&self, port: u16) -> Backend {
        Arc::new(S3Backend::new(self.settings_at(port)))
    }
}

impl Services {
    /// A server program installed by `scripts/test-services.sh` under its tools directory: the
    /// path `var` names, or `relative` under the directory that holds s3s-fs's install (env files
    /// written before `var` existed).
    fn tool(&self, var: &str, relative: &str) -> PathBuf {
        if let Some(path) = self.0.get(var) {
            return path.into();
        }
        let s3s = PathBuf::from(self.get("RTC_S3S_FS_BIN"));
        let tools = s3s
            .ancestors()
            .nth(3)
            .expect("RTC_S3S_FS_BIN is <tools>/s3s/bin/s3s-fs");
        tools.join(relative)
    }
}

/// A private Azurite blob service with its own `--location`: a restart on the same location keeps
/// blobs and uncommitted blocks, as far as Azurite wrote its metadata (every 5 s) before the kill.
pub struct AzuriteServer {
    location: PathBuf,
    process: ServerProcess,
    account: String,
    key: String,
    container: String,
}

impl AzuriteServer {
    /// Starts Azurite on a free port over `location`, with `container` created.
    pub async fn start(services: &Services, location: &Path, container: &str) -> AzuriteServer {
        std::fs::create_dir_all(location).unwrap();
        let port = closed_port();
        let args = vec![
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string().into(),
            "--location".into(),
            location.into(),
            "--disableTelemetry".into(),
            "--silent".into(),
            "--skipApiVersionCheck".into(),
        ];
        let program = services.tool("RTC_AZURITE_BIN", "azurite/node_modules/.bin/azurite-blob");
        let server = AzuriteServer {
            location: location.to_path_buf(),
            process: ServerProcess::start("azurite", program, args, port),
            account: services.get("RTC_AZURE_ACCOUNT"),
            key: services.get("RTC_AZURE_KEY"),
            container: container.into(),
        };
        azure_backend(server.settings_at(port)).await;
        server
    }

    fn settings_at(&self, port: u16) -> AzureSettings {
        AzureSettings {
            container: self.container.clone(),
            endpoint: Some(format!("http://127.0.0.1:{port}/{}", self.account)),
            key_prefix: String::new(),
            credentials: AzureCredentials::SharedKey {
                account: self.account.clone(),
                key: Secret::new(self.key.clone()),
            },
        }
    }

    /// Azurite's metadata, as last written to disk (LokiJS JSON documents).
    fn saved_collection(&self, file: &str, collection: &str) -> Vec<serde_json::Value> {
        let Ok(text) = std::fs::read_to_string(self.location.join(file)) else {
            return Vec::new();
        };
        let Ok(db) = serde_json::from_str::<serde_json::Value>(&text) else {
            // Caught mid-write.
            return Vec::new();
        };
        db["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == collection)
            .flat_map(|c| c["data"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl PrivateServer for AzuriteServer {
    fn name(&self) -> &'static str {
        "azurite"
    }

    fn port(&self) -> u16 {
        self.process.port
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn restart(&mut self) {
        self.process.restart();
    }

    fn backend(&self, port: u16) -> Backend {
        Arc::new(AzureBackend::new(self.settings_at(port)).expect("azure settings"))
    }

    /// Azurite keeps block data in extent files as it receives it, but the block list and the
    /// extents' index only in memory, saved every 5 s: persisted means both saved files name a
    /// block of `name` and every extent that block lives in.
    fn persisted(&self, name: &str) -> bool {
        let blocks = self.saved_collection("__azurite_db_blob__.json", "$BLOCKS_COLLECTION$");
        let extents: Vec<String> = blocks
            .iter()
            .filter(|b| b["blobName"] == name)
            .filter_map(|b| b["persistency"]["id"].as_str().map(String::from))
            .collect();
        if extents.is_empty() {
            return false;
        }
        let saved = self.saved_collection("__azurite_db_blob_extent__.json", "$EXTENTS_COLLECTION$");
        extents.iter().all(|id| saved.iter().any(|e| e["id"] == id.as_str()))
    }
}

/// A private gcp-storage-emulator. With a data directory it writes every resumable session and
/// every chunk to disk before it answers, so sessions survive a restart; in memory
/// (`data_dir_opt` `None`) a restart forgets them, and recreates only the default bucket.
pub struct GcsEmulator {
    process: ServerProcess,
    bucket: String,
    in_memory: bool,
}

impl GcsEmulator {
    pub fn start(services: &Services, data_dir_opt: Option<&Path>, bucket: &str) -> GcsEmulator {
        let port = closed_port();
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(data_dir) = data_dir_opt {
            std::fs::create_dir_all(data_dir).unwrap();
            args.extend(["--data-dir".into(), data_dir.into()]);
        }
        args.extend(
            [
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--default-bucket",
                bucket,
                "--quiet",
            ]
            .map(std::ffi::OsString::from),
        );
        if data_dir_opt.is_none() {
            args.push("--in-memory".into());
        }
        let program = services.tool("RTC_GCS_EMULATOR_BIN", "gcs-venv/bin/gcp-storage-emulator");
        GcsEmulator {
            process: ServerProcess::start("gcp-storage-emulator", program, args, port),
            bucket: bucket.into(),
            in_memory: data_dir_opt.is_none(),
        }
    }
}

impl PrivateServer for GcsEmulator {
    fn name(&self) -> &'static str {
        "gcp-storage-emulator"
    }

    fn port(&self) -> u16 {
        self.process.port
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn restart(&mut self) {
        self.process.restart();
    }

    fn backend(&self, port: u16) -> Backend {
        let settings = GcsSettings {
            bucket: self.bucket.clone(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            key_prefix: String::new(),
            service_account: None,
            anonymous: true,
        };
        let backend = futures_util::FutureExt::now_or_never(GcsBackend::new(settings));
        Arc::new(
            backend
                .expect("an anonymous client is built without IO")
                .expect("gcs settings"),
        )
    }

    fn keeps_uploads(&self) -> bool {
        !self.in_memory
    }
}

/// A private OpenSSH sshd on its own loopback port and config, with the host key and user key
/// `scripts/test-services.sh` generated for the shared one, serving SFTP over a private root.
/// sshd serves each connection from a process of its own, which a kill takes down too; what the
/// server wrote is in ordinary files, so a restart keeps the temp file of an upload.
pub struct SshdServer {
    process: ServerProcess,
    root: PathBuf,
    user: String,
    private_key: String,
    host_key: String,
}

impl SshdServer {
    pub fn start(services: &Services, dir: &Path) -> SshdServer {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let user_key = PathBuf::from(services.get("RTC_SFTP_KEY_FILE"));
        let public_host_key = PathBuf::from(services.get("RTC_SFTP_HOST_KEY_FILE"));
        let host_key_file = public_host_key.with_extension("");
        let authorized_keys = dir.join("authorized_keys");
        std::fs::copy(user_key.with_extension("pub"), &authorized_keys).expect("the user's public key");
        let user = services.get("RTC_SFTP_USER");
        let port = closed_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 AllowUsers {user}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\nStrictModes no\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\n",
                host_key_file.display(),
                dir.join("sshd.pid").display(),
                authorized_keys.display(),
            ),
        )
        .unwrap();
        // -D: in the foreground, so the child is the daemon; -e: errors to stderr, not syslog.
        let args = vec!["-D".into(), "-e".into(), "-f".into(), config.into()];
        SshdServer {
            process: ServerProcess::start("sshd", "/usr/sbin/sshd", args, port),
            root,
            user,
            private_key: std::fs::read_to_string(&user_key).expect("user key"),
            host_key: std::fs::read_to_string(&public_host_key).expect("host key"),
        }
    }
}

impl PrivateServer for SshdServer {
    fn name(&self) -> &'static str {
        "sshd"
    }

    fn port(&self) -> u16 {
        self.process.port
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn restart(&mut self) {
        self.process.restart();
    }

    fn backend(&self, port: u16) -> Backend {
        let settings = SftpSettings {
            host: "127.0.0.1".into(),
            port,
            username: self.user.clone(),
            private_key: Secret::new(self.private_key.clone()),
            private_key_passphrase: None,
            host_key: self.host_key.clone(),
            root: self.root.display().to_string(),
            key_prefix: String::new(),
        };
        Arc::new(SftpBackend::new(settings).expect("sftp settings"))
    }
}
