//! The harness: starts the real `rtc-recorder` binary on a fresh data directory and talks HTTP to
//! it over loopback. Every test owns its own [`TestApp`] (own port, own temp dir).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::spec;

pub const BASE_PATH: &str = "/auvious.video/rtc-recorder/api";

/// org-a, every application, scope `global`.
pub const KEY_A: &str = "key-a-global";
/// org-a, scopes `global` + `admin`.
pub const KEY_ADMIN: &str = "key-a-admin";
/// org-a, no scope at all.
pub const KEY_NOSCOPE: &str = "key-a-noscope";
/// org-a, scope `admin` only (ops, but not the Recorder API).
pub const KEY_OPS_ONLY: &str = "key-a-ops-only";
/// org-a, scope `ops` only: the node's operators (the whole debug tree).
pub const KEY_OPS: &str = "key-node-ops";
/// org-a, scope `global`, but only for application `app-a2`.
pub const KEY_LIMITED: &str = "key-a-limited";
/// org-b, every application, scope `global`.
pub const KEY_B: &str = "key-b-global";
/// No `Authorization` header at all.
pub const NO_KEY: &str = "";

pub const APP_A: &str = "app-a";
pub const APP_A2: &str = "app-a2";
pub const APP_B: &str = "app-b";
pub const ORG_A: &str = "org-a";
pub const ORG_B: &str = "org-b";
/// The only origin `app-a` accepts in `referer`.
pub const ALLOWED_ORIGIN: &str = "https://agent.example.com";

const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Characters left alone in a path segment; everything else is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

pub fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One HTTP response, whatever its status.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `METHOD url -> status: body`, for failure messages.
    pub fn describe(&self) -> String {
        let mut text = self.text();
        if text.len() > 2000 {
            let mut cut = 2000;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        format!("{} {} -> {}: {}", self.method, self.url, self.status, text)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.describe()))
    }

    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status: {}", self.describe());
        self
    }

    /// Asserts a 200 whose body is valid against the spec schema `schema`; returns the body.
    pub fn ok_json(&self, schema: &str) -> Value {
        self.assert_status(200);
        let body = self.json();
        spec::assert_valid(schema, &body);
        body
    }

    /// Asserts an error response: `status`, a JSON content type and the spec's `Error` body
    /// (`code`, `message`, `occurred` as RFC 3339, optionally `field`). Returns the body.
    pub fn assert_error(&self, status: u16) -> Value {
        self.assert_status(status);
        let content_type = self.header("content-type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "error without a JSON content type ({content_type:?}): {}",
            self.describe()
        );
        let body = self.json();
        let obj = body
            .as_object()
            .unwrap_or_else(|| panic!("error body is not an object: {}", self.describe()));
        for name in ["code", "message", "occurred"] {
            let value = obj.get(name).and_then(Value::as_str);
            assert!(
                value.is_some_and(|v| !v.is_empty()),
                "error body lacks a non-empty string {name:?}: {}",
                self.describe()
            );
        }
        spec::assert_valid("Error", &body);
        body
    }

    /// Asserts an error whose `message` (and `field`, when present) names `field`.
    pub fn assert_error_naming(&self, status: u16, field: &str) -> Value {
        let body = self.assert_error(status);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "error message does not name {field:?}: {}",
            self.describe()
        );
        if let Some(named) = body.get("field") {
            assert_eq!(
                named.as_str(),
                Some(field),
                "error `field` names something else: {}",
                self.describe()
            );
        }
        body
    }
}

/// Runs `probe` until it returns `Some`, at most until `timeout`; panics with `what` otherwise.
pub use testkit::poll;

/// How long asynchronous uploads get before a test gives up on them.
pub const UPLOAD_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub base_url: String,
    pub port: u16,
    /// The temp dir holding data, config and storage; removed when the app is dropped.
    #[allow(dead_code)]
    pub dir: tempfile::TempDir,
    /// Canonical path of `dir`.
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    running: Option<testkit::Service>,
    agent: ureq::Agent,
}

/// The standard test configuration on `root`, plus `extra_toml` (see [`TestApp::spawn_with`]).
pub fn base_config(root: &Path, extra_toml: &str) -> String {
    let root = root.display().to_string();
    let key = |name: &str, key: &str, org: &str, apps: &str, scopes: &str| {
        format!(
            "[api_keys.{name}]\nhash = \"sha256:{}\"\norganization = \"{org}\"\napplications = {apps}\nscopes = {scopes}\n\n",
            sha256_hex(key)
        )
    };
    let mut toml = String::new();
    toml.push_str(&format!(
        r#"[organizations.org-a.applications.app-a]
allowed_origins = ["{ALLOWED_ORIGIN}"]
[organizations.org-a.applications.app-a.storage]
provider = "LOCAL"
path = "{root}/storage-a"

[organizations.org-a.applications.app-a2]
allowed_origins = ["*"]
[organizations.org-a.applications.app-a2.storage]
provider = "LOCAL"
path = "{root}/storage-a2"

[organizations.org-b.applications.app-b]
allowed_origins = ["*"]
[organizations.org-b.applications.app-b.storage]
provider = "LOCAL"
path = "{root}/storage-b"

"#
    ));
    toml.push_str(&key("a-global", KEY_A, ORG_A, r#"["*"]"#, r#"["global"]"#));
    toml.push_str(&key("a-admin", KEY_ADMIN, ORG_A, r#"["*"]"#, r#"["global", "admin"]"#));
    toml.push_str(&key("a-noscope", KEY_NOSCOPE, ORG_A, r#"["*"]"#, "[]"));
    toml.push_str(&key("a-ops-only", KEY_OPS_ONLY, ORG_A, r#"["*"]"#, r#"["admin"]"#));
    toml.push_str(&key("node-ops", KEY_OPS, ORG_A, r#"["*"]"#, r#"["ops"]"#));
    toml.push_str(&key("a-limited", KEY_LIMITED, ORG_A, r#"["app-a2"]"#, r#"["global"]"#));
    toml.push_str(&key("b-global", KEY_B, ORG_B, r#"["*"]"#, r#"["global"]"#));
    if !extra_toml.contains("[signing]") {
        toml.push_str("[signing]\nurl_ttl_secs = 3600\n\n");
    }
    toml.push_str(&extra_toml.replace("{tmp}", &root));
    toml.push('\n');
    toml
}

impl TestApp {
    pub fn spawn() -> TestApp {
        Self::spawn_with("", &[])
    }

    /// Starts the binary with the standard test configuration plus `extra_toml` (where `{tmp}`
    /// stands for the temp dir; a `[signing]` table there replaces the default one) and extra
    /// environment variables.
    pub fn spawn_with(extra_toml: &str, env: &[(&str, &str)]) -> TestApp {
        Self::spawn_config(|root| base_config(root, extra_toml), env)
    }

    /// Starts the binary with exactly the configuration `config(temp dir)` returns.
    pub fn spawn_config(config: impl FnOnce(&Path) -> String, env: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::Builder::new()
            .prefix("rtc-recorder-test-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let data_dir = root.join("data");
        let config_path = root.join("test.toml");
        std::fs::write(&config_path, config(&root)).expect("write test config");
        let agent = ureq::AgentBuilder::new().timeout(HTTP_TIMEOUT).redirects(0).build();
        let mut app = TestApp {
            base_url: String::new(),
            port: 0,
            dir,
            root,
            data_dir,
            config_path,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            running: None,
            agent,
        };
        app.start_process();
        app
    }

    fn launch(&self) -> testkit::Launch {
        testkit::Launch::new(env!("CARGO_BIN_EXE_rtc-recorder"), &self.root)
            .data_dir(&self.data_dir)
            .config(&self.config_path)
            .envs(self.env.iter().cloned())
    }

    fn start_process(&mut self) {
        assert!(self.running.is_none(), "the previous process is still attached");
        let service = self.launch().start();
        self.port = service.port();
        self.base_url = service.base_url().to_string();
        self.running = Some(service);
    }

    /// What the process wrote to stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        self.running.as_ref().map(|r| r.stderr()).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        self.running.as_ref().map(|r| r.stdout()).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let mut running = self.running.take().expect("process running");
        running.kill9();
    }

    /// SIGTERM, then waits up to `timeout` for the exit; returns the exit status (panics on
    /// timeout, after killing the process).
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout)
    }

    /// SIGTERM without waiting: the node drains (see [`TestApp::wait_exit`]).
    pub fn send_sigterm(&self) {
        self.running.as_ref().expect("process running").send_sigterm();
    }

    /// Waits up to `timeout` for the process to exit (panics past it).
    /// The ended process stays attached (its output readable) until the next start.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.running.as_mut().expect("process running").wait_exit(timeout)
    }

    /// Whether the process ended by itself.
    pub fn has_exited(&mut self) -> bool {
        self.running.as_mut().is_none_or(|r| r.has_exited())
    }

    /// Restarts the process with this environment (kept for later restarts).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.restart();
    }

    /// Starts a new process on the same data dir and config (a new port). Kills the old one
    /// first if it still runs.
    pub fn restart(&mut self) {
        if self.running.is_some() {
            self.kill9();
        }
        self.start_process();
    }

    /// Runs another process with this app's data dir, config and environment (plus `env`), and
    /// waits up to `timeout` for it to exit. Returns (exit status, stdout, stderr); the status is
    /// `None` if it was still running (it is killed then).
    pub fn run_another(&self, env: &[(&str, &str)], timeout: Duration) -> (Option<ExitStatus>, String, String) {
        self.launch()
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .run_to_exit(timeout)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{}{}", self.base_url, BASE_PATH, path)
    }

    pub fn storage_a(&self) -> PathBuf {
        self.root.join("storage-a")
    }

    pub fn storage_b(&self) -> PathBuf {
        self.root.join("storage-b")
    }

    // ---- HTTP -------------------------------------------------------------------------------

    /// Sends any request through ureq and returns the response whatever its status.
    pub fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        self.try_request(method, url, headers, body).unwrap_or_else(|t| {
            panic!(
                "{method} {url}: transport error: {t}\nservice stdout:\n{}\nservice stderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }

    /// [`Self::request`], with a transport error (no answer at all) returned instead of a panic.
    pub fn try_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        let mut req = self.agent.request(method, url);
        for (name, value) in headers {
            req = req.set(name, value);
        }
        let result = match body {
            Some(bytes) => req.send_bytes(bytes),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .flat_map(|name| {
                response
                    .all(&name)
                    .into_iter()
                    .map(|v| (name.clone(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut bytes = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(Resp {
            method: method.into(),
            url: url.into(),
            status,
            headers,
            body: bytes,
        })
    }

    fn auth(key: &str) -> Vec<(&'static str, String)> {
        if key.is_empty() {
            vec![]
        } else {
            vec![("Authorization", key.to_string())]
        }
    }

    fn with_key(&self, method: &str, url: &str, key: &str, extra: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let auth = Self::auth(key);
        let mut headers: Vec<(&str, &str)> = auth.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.extend_from_slice(extra);
        self.request(method, url, &headers, body)
    }

    /// GET an API path (relative to the base path) with `key` as raw `Authorization` header
    /// (`NO_KEY` sends none).
    pub fn get(&self, path: &str, key: &str) -> Resp {
        self.with_key("GET", &self.api(path), key, &[], None)
    }

    /// GET an API path with exactly these headers.
    pub fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request("GET", &self.api(path), headers, None)
    }

    /// GET a path from the root of the server (ops endpoints).
    pub fn get_root(&self, path: &str, key: &str) -> Resp {
        self.with_key("GET", &self.url(path), key, &[], None)
    }

    pub fn post_json(&self, path: &str, key: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.post_raw(path, key, "application/json", &bytes)
    }

    pub fn post_raw(&self, path: &str, key: &str, content_type: &str, bytes: &[u8]) -> Resp {
        self.with_key(
            "POST",
            &self.api(path),
            key,
            &[("Content-Type", content_type)],
            Some(bytes),
        )
    }

    /// POST without a body (stop, verify).
    pub fn post_empty(&self, path: &str, key: &str) -> Resp {
        self.with_key("POST", &self.api(path), key, &[], Some(&[]))
    }

    /// Sends a request over a plain TCP connection with the request target exactly as given
    /// (no normalisation of `..` or percent-escapes). `target` is the path and query from the
    /// server root.
    pub fn raw_request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        raw_http(self.port, method, target, headers, body)
    }

    // ---- Recorder API shortcuts (each validates its 200 against the spec) ---------------------

    pub fn start(&self, key: &str, application_id: &str, conversation_id: &str) -> Value {
        let resp = self.post_json(
            "/recordings/start",
            key,
            &json!({"applicationId": application_id, "conferenceId": format!("conf-{conversation_id}"), "conversationId": conversation_id}),
        );
        let event = resp.ok_json("RecordingDataEvent");
        assert_eq!(event["state"], "INITIALISED", "{}", resp.describe());
        assert_eq!(event["conversationId"], conversation_id, "{}", resp.describe());
        for id in ["instanceId", "recorderId"] {
            assert!(
                event[id].as_str().is_some_and(|s| !s.is_empty()),
                "start answered no {id}: {}",
                resp.describe()
            );
        }
        event
    }

    pub fn stop(&self, key: &str, event: &Value) -> Value {
        let resp = self.post_empty(&format!("{}/stop", instance_path(event)), key);
        let stopped = resp.ok_json("RecordingDataEvent");
        assert_eq!(stopped["state"], "STOPPED", "{}", resp.describe());
        assert_eq!(stopped["instanceId"], event["instanceId"], "{}", resp.describe());
        stopped
    }

    pub fn instance(&self, key: &str, event: &Value) -> Value {
        self.get(&instance_path(event), key).ok_json("RecordingDataMessage")
    }

    pub fn add_transcript(&self, key: &str, event: &Value, entries: Value) -> Resp {
        self.post_json(
            "/recordings/chat/transcript/add",
            key,
            &json!({
                "chatTranscriptList": entries,
                "conversationId": event["conversationId"],
                "instanceId": event["instanceId"],
                "recorderId": event["recorderId"],
            }),
        )
    }

    pub fn add_event(
        &self,
        key: &str,
        event: &Value,
        session: &str,
        sequence_id: i64,
        payload: &str,
        timestamp: i64,
    ) -> Resp {
        self.post_json(
            "/recordings/cobrowse/event",
            key,
            &cobrowse_cmd(event, session, sequence_id, payload, timestamp),
        )
    }

    /// Waits until an `app-a` instance shows a `chatTranscript` and its transcript file holds
    /// `num_entries` entries; returns (instance, file content).
    pub fn wait_transcript_file(&self, key: &str, event: &Value, num_entries: usize) -> (Value, Value) {
        let path = self.transcript_file(event);
        poll(
            UPLOAD_TIMEOUT,
            &format!("transcript artefact with {num_entries} entries at {}", path.display()),
            || {
                let instance = self.instance(key, event);
                instance["chatTranscript"].get("uploaded")?;
                let file: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
                (file["chatTranscriptList"].as_array()?.len() == num_entries).then_some((instance, file))
            },
        )
    }

    /// Where the transcript of an `app-a` instance is stored.
    pub fn transcript_file(&self, event: &Value) -> PathBuf {
        self.storage_a()
            .join(format!("{}/chat/transcript.json", key_prefix(event, ORG_A, APP_A)))
    }

    pub fn cobrowse_file(&self, storage: &Path, org: &str, app: &str, event: &Value, session: &str) -> PathBuf {
        storage.join(format!(
            "{}/cobrowse/{session}/events.json",
            key_prefix(event, org, app)
        ))
    }

    /// Waits until the co-browse listing of the conversation shows `session` as uploaded.
    pub fn wait_session_uploaded(&self, key: &str, conversation_id: &str, session: &str) -> Value {
        poll(UPLOAD_TIMEOUT, &format!("co-browse session {session} uploaded"), || {
            let list = self
                .get(&format!("/recordings/{}/cobrowse", enc(conversation_id)), key)
                .ok_json("ConversationCobrowseSessionDataMessage");
            let found = list["cobrowseSessions"]
                .as_array()?
                .iter()
                .find(|s| s["cobrowseSessionId"] == session)?
                .clone();
            found.get("uploaded").map(|_| list.clone())
        })
    }
}

/// Writes `config` (where `{tmp}` is a fresh temp dir) and runs the binary on it, expecting it to
/// exit within `timeout`. Returns (exit status or `None` if it kept running, stdout, stderr).
pub fn run_config_to_exit(
    config: &str,
    env: &[(&str, &str)],
    timeout: Duration,
) -> (Option<ExitStatus>, String, String) {
    let dir = tempfile::Builder::new()
        .prefix("rtc-recorder-test-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path().canonicalize().expect("canonical temp dir");
    let config_path = root.join("test.toml");
    std::fs::write(&config_path, config.replace("{tmp}", &root.display().to_string())).unwrap();
    testkit::Launch::new(env!("CARGO_BIN_EXE_rtc-recorder"), &root)
        .config(&config_path)
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .run_to_exit(timeout)
}

/// `/recordings/{conversationId}/{recorderId}/{instanceId}` of a `RecordingDataEvent`.
pub fn instance_path(event: &Value) -> String {
    let part = |name: &str| {
        enc(event[name]
            .as_str()
            .unwrap_or_else(|| panic!("event without {name}: {event}")))
    };
    format!(
        "/recordings/{}/{}/{}",
        part("conversationId"),
        part("recorderId"),
        part("instanceId")
    )
}

/// `{org}/{app}/{conversationId}/{recorderId}/{instanceId}` of an instance.
pub fn key_prefix(event: &Value, org: &str, app: &str) -> String {
    let s = |name: &str| event[name].as_str().unwrap().to_string();
    format!(
        "{org}/{app}/{}/{}/{}",
        s("conversationId"),
        s("recorderId"),
        s("instanceId")
    )
}

pub fn cobrowse_cmd(event: &Value, session: &str, sequence_id: i64, payload: &str, timestamp: i64) -> Value {
    json!({
        "conversationId": event["conversationId"],
        "event": {"payload": payload, "sequenceId": sequence_id, "sessionId": session, "timestamp": timestamp},
        "instanceId": event["instanceId"],
        "recorderId": event["recorderId"],
    })
}

pub fn chat(ts: &str, text: &str, user: &str) -> Value {
    json!({"timeStamp": ts, "transcript": text, "userDisplayName": format!("User {user}"), "userId": user})
}

/// A unique id for one test's conversation.
/// A plain-RTP offer of one Opus m-line from 127.0.0.1.
pub fn opus_offer() -> Vec<u8> {
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"
        .to_vec()
}

/// Publishes [`opus_offer`] as `user`'s MIC over `transport` (`rtp` or `whip`) to the conference
/// `conf-<conversationId>` of `event` (the tests' naming).
pub fn publish_opus(app: &TestApp, key: &str, transport: &str, event: &Value, user: &str) -> Resp {
    let conference = format!("conf-{}", event["conversationId"].as_str().unwrap());
    app.post_raw(
        &format!("/media/{transport}/{}?userId={user}&type=MIC", enc(&conference)),
        key,
        "application/sdp",
        &opus_offer(),
    )
}

pub fn conv(tag: &str) -> String {
    format!("conv-{tag}-{}", uuid::Uuid::new_v4().simple())
}

pub fn assert_rfc3339(value: &Value, what: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{what} = {text:?} is not RFC 3339: {e}"))
}

/// A tiny deterministic PRNG (xorshift64*), so fuzz runs repeat exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---- raw HTTP/1.1 ---------------------------------------------------------------------------

/// Sends `request` (complete, as bytes) and reads the response.
pub fn raw_bytes(port: u16, request: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let first_line = String::from_utf8_lossy(request.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
    parse_raw_response("RAW", &first_line, &raw)
}

fn raw_http(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    if !chunked && (!body.is_empty() || method == "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // The server may answer (and close) before it read everything, e.g. a 413: ignore write
    // errors and read whatever answer came.
    let _ = stream.write_all(&request);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => panic!("{method} {target}: no response: {e}"),
            Err(_) => break,
        }
        if response_complete(&raw) {
            break;
        }
    }
    parse_raw_response(method, target, &raw)
}

/// (offset of the body, headers, status) of a raw response, once its head is complete.
type Head = (usize, Vec<(String, String)>, u16);

fn split_head(raw: &[u8]) -> Option<Head> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Some((end + 4, headers, status))
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn response_complete(raw: &[u8]) -> bool {
    let Some((start, headers, _)) = split_head(raw) else {
        return false;
    };
    if let Some(len) = header_of(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        return raw.len() >= start + len;
    }
    if header_of(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return raw[start..].windows(5).any(|w| w == b"0\r\n\r\n");
    }
    false
}

fn parse_raw_response(method: &str, target: &str, raw: &[u8]) -> Resp {
    let (start, headers, status) = split_head(raw).unwrap_or_else(|| {
        panic!(
            "{method} {target}: malformed response: {:?}",
            String::from_utf8_lossy(raw)
        )
    });
    let mut body = raw[start..].to_vec();
    if let Some(len) = header_of(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(len);
    } else if header_of(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Resp {
        method: method.into(),
        url: format!("raw:{target}"),
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}
