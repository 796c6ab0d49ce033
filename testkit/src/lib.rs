//! The one way the black-box tests and the benchmarks run the real `rtc-recorder` binary: on
//! 127.0.0.1 port 0, on a data dir and configuration of their own, with what it prints captured
//! for failure messages. [`Launch`] says how to start it; [`Service`] is a running process
//! (killed when dropped). The suites keep only what is theirs: their configuration and their
//! HTTP helpers.
//!
//! The binary's path comes from the caller (`env!("CARGO_BIN_EXE_rtc-recorder")`, which Cargo
//! sets for the root package's tests and benchmarks only).

pub mod azurite;
#[cfg(feature = "engine")]
pub mod engine;
pub mod nats;
pub mod probe;
pub mod relay;
pub mod rtp;
pub mod webhook;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a started process gets to print `listening on http://127.0.0.1:PORT`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the service: binary, working directory, data dir, configuration file and
/// environment. Variables named `RECORDER_*` and `RTC_RECORDER_FAULTS` of the test process are
/// never inherited: a test runs on exactly the settings it gives.
#[derive(Debug, Clone)]
pub struct Launch {
    binary: PathBuf,
    cwd: PathBuf,
    data_dir: PathBuf,
    config: Option<PathBuf>,
    log: String,
    env: Vec<(String, String)>,
}

impl Launch {
    /// `binary` run in `root`, its data under `root/data`, no configuration file (the compiled
    /// defaults), log level `warn`.
    pub fn new(binary: impl Into<PathBuf>, root: &Path) -> Self {
        Self {
            binary: binary.into(),
            cwd: root.to_path_buf(),
            data_dir: root.join("data"),
            config: None,
            log: "warn".into(),
            env: Vec::new(),
        }
    }

    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_dir = path.into();
        self
    }

    /// `RECORDER_LOG` of the process.
    pub fn log(mut self, level: &str) -> Self {
        self.log = level.into();
        self
    }

    /// One more environment variable (a later one of the same name wins).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn envs<N: Into<String>, V: Into<String>>(mut self, vars: impl IntoIterator<Item = (N, V)>) -> Self {
        self.env.extend(vars.into_iter().map(|(n, v)| (n.into(), v.into())));
        self
    }

    pub fn data_path(&self) -> &Path {
        &self.data_dir
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        for (name, _) in std::env::vars() {
            if name.starts_with("RECORDER_") || name == "RTC_RECORDER_FAULTS" {
                cmd.env_remove(name);
            }
        }
        cmd.env("RECORDER_BIND", "127.0.0.1:0")
            .env("RECORDER_DATA_DIR", &self.data_dir)
            .env("RECORDER_LOG", &self.log)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(config) = &self.config {
            cmd.env("RECORDER_CONFIG", config);
        }
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        cmd
    }

    /// Starts the process and waits until it listens; panics with what it printed if it does
    /// not within [`STARTUP_TIMEOUT`], or listens anywhere but on loopback.
    pub fn start(&self) -> Service {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().expect("piped stdout");
        let err_pipe = child.stderr.take().expect("piped stderr");
        let out_buf = stdout.clone();
        let reads_stdout = std::thread::spawn(move || {
            let mut reader = BufReader::new(out_pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).into_owned();
                        lock(&out_buf).push_str(&text);
                        // Nobody listens after start-up: the lines are kept in the buffer only.
                        let _ = lines_tx.send(text);
                    }
                }
            }
        });
        let err_buf = stderr.clone();
        let reads_stderr = std::thread::spawn(move || {
            let mut reader = BufReader::new(err_pipe);
            let mut chunk = [0u8; 4096];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => lock(&err_buf).push_str(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let port = loop {
            match lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    if let Some(port) = listening_port(&line) {
                        break port;
                    }
                }
                Err(err) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let _ = reads_stdout.join();
                    let _ = reads_stderr.join();
                    panic!(
                        "rtc-recorder did not print `listening on http://127.0.0.1:PORT` ({err:?}; exit {status:?})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                        lock(&stdout),
                        lock(&stderr)
                    );
                }
            }
        };
        drop(lines_rx);
        Service {
            child,
            port,
            base_url: format!("http://127.0.0.1:{port}"),
            stdout,
            stderr,
            readers: vec![reads_stdout, reads_stderr],
        }
    }

    /// Runs the process expecting it to exit by itself within `timeout` (a configuration it
    /// refuses, a one-shot command). Returns (exit status, or `None` if it was still running and
    /// was killed; stdout; stderr).
    pub fn run_to_exit(&self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        let mut child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let read_all = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                String::from_utf8_lossy(&bytes).into_owned()
            })
        };
        let out = read_all(Box::new(child.stdout.take().expect("piped stdout")));
        let err = read_all(Box::new(child.stderr.take().expect("piped stderr")));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, out.join().unwrap_or_default(), err.join().unwrap_or_default())
    }
}

/// The port of a `listening on http://127.0.0.1:PORT` line; panics if the address is not
/// loopback (the tests never listen elsewhere).
fn listening_port(line: &str) -> Option<u16> {
    let at = line.find("listening on http://")?;
    let addr: String = line[at + "listening on http://".len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let addr = addr.trim_end_matches('/');
    assert!(
        addr.starts_with("127.0.0.1:"),
        "service listens on {addr}, not loopback"
    );
    Some(
        addr.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the port from {line:?}")),
    )
}

fn lock(buf: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    buf.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running service; killed (SIGKILL) when dropped.
pub struct Service {
    child: Child,
    port: u16,
    base_url: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Service {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        lock(&self.stdout).clone()
    }

    /// What the process wrote to stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Whether the process has ended (by itself: a crash, an injected abort).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL: no chance to flush or clean up. Returns once the process is reaped and its
    /// output read to the end.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns the exit status (panics on
    /// timeout, after killing the process).
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// SIGTERM, without waiting (the process drains; see [`Service::wait_exit`]).
    pub fn send_sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits up to `timeout` for the process to exit; returns the exit status (panics on
    /// timeout, after killing the process).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!("process did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// KEY=VALUE lines written by `scripts/test-services.sh start` (server binaries, ports,
/// credentials); a missing file fails the test with the command that fixes it.
pub fn services_env() -> std::collections::HashMap<String, String> {
    let path = std::env::var("RTC_SERVICES_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let dir = std::env::var("RTC_SERVICES_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/rtc-recorder/services"));
            dir.join("env")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "test servers not set up ({}: {e}); run `scripts/test-services.sh start`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Polls `probe` until it answers `Some` (every 50 ms), up to `timeout`; panics naming `what`.
/// For waiting on an observable condition instead of sleeping.
pub fn poll<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_port() {
        assert_eq!(listening_port("listening on http://127.0.0.1:4567\n"), Some(4567));
        assert_eq!(
            listening_port("x listening on http://127.0.0.1:80/ (api key: k)"),
            Some(80)
        );
        assert_eq!(listening_port("starting"), None);
    }

    #[test]
    #[should_panic(expected = "not loopback")]
    fn a_service_listening_beyond_loopback_is_refused() {
        listening_port("listening on http://0.0.0.0:8080");
    }

    #[test]
    fn a_process_that_exits_is_reported_with_its_output() {
        let dir = std::env::temp_dir();
        let (status, _out, _err) = Launch::new("/bin/true", &dir).run_to_exit(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()));
        let (status, _, _) = Launch::new("/bin/sleep", &dir)
            .env("UNUSED", "1")
            .run_to_exit(Duration::from_millis(10));
        // `sleep` without an argument exits at once with an error; either way it ended.
        assert!(status.is_some_and(|s| !s.success()));
    }

    #[test]
    #[should_panic(expected = "did not print")]
    fn a_process_that_never_listens_fails_the_test_with_its_output() {
        Launch::new("/bin/true", &std::env::temp_dir()).start();
    }

    #[test]
    fn poll_returns_what_the_probe_found() {
        let mut n = 0;
        assert_eq!(
            poll(Duration::from_secs(5), "the third look", || {
                n += 1;
                (n == 3).then_some(n)
            }),
            3
        );
    }
}
