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

/// A private s3s-fs process a fault test may stop and restart on the same port and data.
pub struct S3sServer {
    pub port: u16,
    pub root: PathBuf,
    pub bucket: String,
    child: Option<std::process::Child>,
    bin: String,
    access_key: String,
    secret_key: String,
}

impl S3sServer {
    /// Starts s3s-fs on a free port serving `root`, with `bucket` created.
    pub fn start(services: &Services, root: &Path, bucket: &str) -> S3sServer {
        std::fs::create_dir_all(root.join(bucket)).unwrap();
        let mut server = S3sServer {
            port: closed_port(),
            root: root.to_path_buf(),
            bucket: bucket.into(),
            child: None,
            bin: services.get("RTC_S3S_FS_BIN"),
            access_key: services.get("RTC_S3_ACCESS_KEY"),
            secret_key: services.get("RTC_S3_SECRET_KEY"),
        };
        server.restart();
        server
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key, "--secret-key", &self.secret_key])
            .arg(&self.root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}); run scripts/test-services.sh start", self.bin));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s3s-fs did not listen on {}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// SIGKILL: the server vanishes mid-request.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn settings(&self, services: &Services) -> S3Settings {
        S3Settings {
            bucket: self.bucket.clone(),
            region: services.get("RTC_S3_REGION"),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
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

impl Drop for S3sServer {
    fn drop(&mut self) {
        self.kill();
    }
}
