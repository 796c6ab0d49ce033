//! A private Azurite (Azure Blob emulator, from npm; `scripts/test-services.sh` installs it) for
//! a test that must stop its object store: one `azurite-blob` process on a free loopback port
//! with its own data folder. [`Azurite::pause`] freezes it (SIGSTOP: connections are still
//! accepted by the kernel, no request is answered, as a store that hangs) and
//! [`Azurite::resume`] lets it go on (SIGCONT). Killed when dropped. [`Container`] is a
//! container of a test's own, on it or on the Azurite `scripts/test-services.sh` runs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Azurite {
    child: Child,
    port: u16,
    log: PathBuf,
    env: std::collections::HashMap<String, String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Azurite {
    /// Starts Azurite with its data under `dir` and waits until it takes connections.
    pub fn start(dir: &Path) -> Azurite {
        let env = crate::services_env();
        let bin = env
            .get("RTC_AZURITE_BIN")
            .unwrap_or_else(|| {
                panic!("RTC_AZURITE_BIN missing from the services env; run scripts/test-services.sh start")
            })
            .clone();
        let data = dir.join("azurite");
        std::fs::create_dir_all(&data).expect("an Azurite data dir");
        let log = dir.join("azurite.log");
        let out = std::fs::File::create(&log).expect("an Azurite log file");
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(&data)
            .args(["--disableTelemetry", "--silent", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let azurite = Azurite { child, port, log, env };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not listen on 127.0.0.1:{port}:\n{}",
                azurite.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        azurite
    }

    /// The blob endpoint, `http://127.0.0.1:PORT/<account>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, self.account())
    }

    /// Azurite's documented development account and its key.
    pub fn account(&self) -> &str {
        &self.env["RTC_AZURE_ACCOUNT"]
    }

    pub fn key(&self) -> &str {
        &self.env["RTC_AZURE_KEY"]
    }

    /// An Azure connection string for this Azurite.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
            self.account(),
            self.key(),
            self.endpoint()
        )
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a plain syscall on our own child's pid.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(
            result,
            0,
            "signal {signal} to Azurite: {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Azure Blob container of one test's own (the nodes of a cluster test share it): its name
/// and a connection string for it.
#[cfg(feature = "azure")]
pub struct Container {
    pub name: String,
    pub connection_string: String,
}

#[cfg(feature = "azure")]
impl Container {
    /// A new container on the Azurite at `endpoint`, made through the engine's own backend.
    pub fn create(account: &str, key: &str, endpoint: &str) -> Container {
        use recorder_actors::storage::{AzureBackend, AzureCredentials, AzureSettings, Secret};
        let name = format!("test{:016x}", rand_u64());
        let backend = AzureBackend::new(AzureSettings {
            container: name.clone(),
            endpoint: Some(endpoint.to_string()),
            key_prefix: String::new(),
            credentials: AzureCredentials::SharedKey {
                account: account.to_string(),
                key: Secret::new(key.to_string()),
            },
        })
        .expect("an Azure backend");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(backend.create_container())
            .unwrap_or_else(|e| panic!("create container {name} on {endpoint}: {e}"));
        Container {
            name,
            connection_string: format!(
                "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={endpoint};"
            ),
        }
    }

    /// A new container on the Azurite `scripts/test-services.sh` runs.
    pub fn on_services() -> Container {
        let env = crate::services_env();
        let get = |name: &str| {
            env.get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing from the services env; run scripts/test-services.sh start"))
        };
        Container::create(
            &get("RTC_AZURE_ACCOUNT"),
            &get("RTC_AZURE_KEY"),
            &get("RTC_AZURE_ENDPOINT"),
        )
    }

    /// A new container on `azurite`.
    pub fn on(azurite: &Azurite) -> Container {
        Container::create(azurite.account(), azurite.key(), &azurite.endpoint())
    }

    /// The lines of a storage profile on this container, its connection string read from the
    /// environment variable `var`.
    pub fn profile(&self, var: &str) -> String {
        format!(
            "provider = \"AZURE_BLOB\"\ncontainer = \"{}\"\nconnection_string = {{ env = \"{var}\" }}",
            self.name
        )
    }
}

/// Unique enough for container names: the clock and the process id, mixed.
#[cfg(feature = "azure")]
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
