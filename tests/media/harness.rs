//! The media tests' harness: the real `rtc-recorder` binary on 127.0.0.1:0 with a fresh data
//! directory and its own UDP port range, HTTP through ureq, real clients (FFmpeg CLI, aiortc, the
//! project's `whip-publish`), and `ffprobe` to check what was written. Adapted from
//! `tests/api/helpers.rs`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};

pub const BASE_PATH: &str = "/auvious.video/rtc-recorder/api";
pub const KEY: &str = "media-test-key-global";
pub const KEY_ADMIN: &str = "media-test-key-admin";
pub const KEY_OTHER_ORG: &str = "media-test-key-org-b";

/// Tests that stream media run one at a time: on a 2-core machine, parallel encoders would
/// starve each other and the frame-count checks would measure the machine, not the recorder.
static MEDIA_LOCK: Mutex<()> = Mutex::new(());

pub fn media_lock() -> MutexGuard<'static, ()> {
    MEDIA_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each app gets its own 200-port UDP range, so apps of parallel tests never collide.
static NEXT_RANGE: AtomicU16 = AtomicU16::new(0);

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Renders app-a's storage table, given the app's folder (see [`TestApp::spawn_with_profile`]).
type StorageToml = Box<dyn FnOnce(&Path) -> String>;

pub struct TestApp {
    pub base_url: String,
    pub root: PathBuf,
    pub rtp_ports: (u16, u16),
    /// Extra environment of the process (fault injection: `RTC_RECORDER_FAULTS`).
    env: Vec<(String, String)>,
    service: testkit::Service,
    agent: ureq::Agent,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The spec's `Error {code, message, occurred}` with this status.
    pub fn assert_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        let body = self.json();
        for field in ["code", "message", "occurred"] {
            assert!(
                body[field].as_str().is_some_and(|s| !s.is_empty()),
                "error without {field}: {body}"
            );
        }
        body
    }
}

impl TestApp {
    pub fn spawn() -> TestApp {
        Self::spawn_with("")
    }

    pub fn spawn_with(extra_toml: &str) -> TestApp {
        // These tests probe the files where the recorder wrote them; after stop the files are
        // uploaded to the storage profile and, by default, deleted here.
        Self::spawn_inner(extra_toml, false, None, &[])
    }

    /// A recorder that deletes each track file once its upload is verified (the default
    /// configuration), to check what reaches the storage profile.
    pub fn spawn_uploading() -> TestApp {
        Self::spawn_inner("", true, None, &[])
    }

    /// Like [`TestApp::spawn_uploading`], with app-a's storage profile replaced: `storage_toml`
    /// gets the app's fresh folder (to write credential files into, referenced as
    /// `{ file = "..." }`) and returns the lines of its `[organizations.org-a.applications.app-a.storage]`
    /// table.
    pub fn spawn_with_profile(storage_toml: impl FnOnce(&Path) -> String + 'static) -> TestApp {
        Self::spawn_inner("", true, Some(Box::new(storage_toml)), &[])
    }

    /// [`TestApp::spawn_with_profile`] with extra configuration (TOML after the `[media]` table)
    /// and environment (`RECORDER_*` settings; kept for restarts).
    pub fn spawn_with_profile_and(
        extra_toml: &str,
        env: &[(&str, &str)],
        storage_toml: impl FnOnce(&Path) -> String + 'static,
    ) -> TestApp {
        Self::spawn_inner(extra_toml, true, Some(Box::new(storage_toml)), env)
    }

    /// [`TestApp::spawn`] with extra environment (`RECORDER_*` settings; kept for restarts).
    pub fn spawn_with_env(env: &[(&str, &str)]) -> TestApp {
        Self::spawn_inner("", false, None, env)
    }

    /// [`TestApp::spawn_uploading`] with extra configuration (TOML after the `[media]` table).
    pub fn spawn_uploading_with(extra_toml: &str) -> TestApp {
        Self::spawn_inner(extra_toml, true, None, &[])
    }

    fn spawn_inner(
        extra_toml: &str,
        delete_local_after_upload: bool,
        storage_toml_opt: Option<StorageToml>,
        env: &[(&str, &str)],
    ) -> TestApp {
        let dir = tempfile::Builder::new()
            .prefix("rtc-recorder-media-")
            .tempdir()
            .expect("temp dir");
        let root = dir.keep().canonicalize().expect("canonical temp dir");
        let n = NEXT_RANGE.fetch_add(1, Ordering::Relaxed);
        // Below Linux's ephemeral range (32768+), away from the default 40000-40999.
        let min = 20_000 + (std::process::id() as u16 % 20) * 400 + (n % 2) * 200;
        let rtp_ports = (min, min + 199);
        let key = |name: &str, key: &str, org: &str, scopes: &str| {
            format!(
                "[api_keys.{name}]\nhash = \"sha256:{}\"\norganization = \"{org}\"\napplications = [\"*\"]\nscopes = {scopes}\n\n",
                sha256_hex(key)
            )
        };
        let app_a_storage = match storage_toml_opt {
            Some(storage_toml) => storage_toml(&root),
            None => format!("provider = \"LOCAL\"\npath = \"{}/storage\"", root.display()),
        };
        let mut toml = format!(
            "[organizations.org-a.applications.app-a.storage]\n{app_a_storage}\n\n\
             [organizations.org-b.applications.app-b.storage]\nprovider = \"LOCAL\"\npath = \"{root}/storage-b\"\n\n\
             [uploads]\ndelete_local_after_upload = {delete_local_after_upload}\n\n\
             [media]\nrtp_port_min = {}\nrtp_port_max = {}\n{extra_toml}\n\n",
            rtp_ports.0,
            rtp_ports.1,
            root = root.display()
        );
        toml.push_str(&key("global", KEY, "org-a", "[\"global\"]"));
        toml.push_str(&key("admin", KEY_ADMIN, "org-a", "[\"global\", \"admin\", \"ops\"]"));
        toml.push_str(&key("other", KEY_OTHER_ORG, "org-b", "[\"global\"]"));
        let config = root.join("test.toml");
        std::fs::write(&config, toml).expect("write config");
        let env: Vec<(String, String)> = env.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        let service = start_process(&root, &env);
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .redirects(0)
            .build();
        TestApp {
            base_url: service.base_url().to_string(),
            root,
            rtp_ports,
            env,
            service,
            agent,
        }
    }

    /// Waits (at most 10 s) until the service's log holds `needle`: its output is read by a
    /// thread of the test, so a line the service wrote just before answering may not be in
    /// [`TestApp::stderr`] yet.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.stderr().contains(needle) {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn stderr(&self) -> String {
        self.service.stderr()
    }

    pub fn kill9(&mut self) {
        self.service.kill9();
    }

    /// SIGTERM without waiting: the node drains (see [`TestApp::wait_exit`]).
    pub fn send_sigterm(&self) {
        self.service.send_sigterm();
    }

    /// Waits up to `timeout` for the process to exit (panics past it).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.service.wait_exit(timeout)
    }

    /// Kills the process (if running) and starts a new one on the same data dir and config.
    pub fn restart(&mut self) {
        self.kill9();
        self.service = start_process(&self.root, &self.env);
        self.base_url = self.service.base_url().to_string();
    }

    /// Restarts the process with this extra environment (kept for later restarts).
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.restart();
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}{BASE_PATH}{path}", self.base_url)
    }

    pub fn request(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let mut req = self.agent.request(method, url);
        for (n, v) in headers {
            req = req.set(n, v);
        }
        let result = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}\nstderr:\n{}", self.stderr()),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|n| response.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        let mut body = Vec::new();
        response.into_reader().read_to_end(&mut body).expect("read body");
        Resp { status, headers, body }
    }

    pub fn post_json(&self, path: &str, key: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request(
            "POST",
            &self.api(path),
            &[("Authorization", key), ("Content-Type", "application/json")],
            Some(&bytes),
        )
    }

    pub fn get(&self, path: &str, key: &str) -> Resp {
        self.request("GET", &self.api(path), &[("Authorization", key)], None)
    }

    /// Starts an instance recording `conference`; returns its RecordingDataEvent.
    pub fn start(&self, conversation: &str, conference: &str, audio: bool, video: bool) -> Value {
        let resp = self.post_json(
            "/recordings/start",
            KEY,
            &json!({"applicationId": "app-a", "conferenceId": conference, "conversationId": conversation, "audio": audio, "video": video}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }

    pub fn stop(&self, event: &Value) -> Value {
        let resp = self.request(
            "POST",
            &self.api(&format!("{}/stop", instance_path(event))),
            &[("Authorization", KEY)],
            Some(b""),
        );
        assert_eq!(resp.status, 200, "stop: {}\nstderr:\n{}", resp.text(), self.stderr());
        resp.json()
    }

    pub fn instance(&self, event: &Value) -> Value {
        let resp = self.get(&instance_path(event), KEY);
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }

    /// POSTs an SDP offer to the plain-RTP or WHIP endpoint.
    pub fn publish(
        &self,
        transport: &str,
        conference: &str,
        query: &str,
        auth: &str,
        content_type: &str,
        sdp: &str,
    ) -> Resp {
        self.request(
            "POST",
            &self.api(&format!("/media/{transport}/{conference}?{query}")),
            &[("Authorization", auth), ("Content-Type", content_type)],
            Some(sdp.as_bytes()),
        )
    }

    /// The live actor tree (admin key).
    pub fn debug_tree(&self) -> Value {
        let resp = self.get("/debug/actors", KEY_ADMIN);
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()
    }
}

/// Starts the binary on `root`'s data dir and config; returns it once it listens.
fn start_process(root: &Path, env: &[(String, String)]) -> testkit::Service {
    testkit::Launch::new(env!("CARGO_BIN_EXE_rtc-recorder"), root)
        .config(root.join("test.toml"))
        .envs(env.iter().cloned())
        .start()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.service.kill9();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub fn instance_path(event: &Value) -> String {
    format!(
        "/recordings/{}/{}/{}",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    )
}

pub fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// An SDP offer for plain RTP with these m-lines (`video VP8`, `audio opus`, `audio PCMU`...).
pub fn rtp_offer(lines: &[(&str, u8, &str)]) -> String {
    let mut sdp = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n");
    for (media, pt, rtpmap) in lines {
        sdp.push_str(&format!("m={media} 9 RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\n"));
        if rtpmap.starts_with("H264") {
            sdp.push_str(&format!("a=fmtp:{pt} packetization-mode=1\r\n"));
        }
    }
    sdp
}

/// Ports of each m-line in an SDP answer (0 = refused).
pub fn answer_ports(answer: &str) -> Vec<u16> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .expect("a port")
        })
        .collect()
}

/// Every track of an instance as (userId, stream type, track type, track JSON).
pub fn tracks(instance: &Value) -> Vec<(String, String, String, Value)> {
    let mut out = Vec::new();
    for s in instance["streams"].as_array().expect("streams") {
        for t in s["tracks"].as_array().expect("tracks") {
            out.push((
                s["userId"].as_str().unwrap().to_string(),
                s["type"].as_str().unwrap().to_string(),
                t["type"].as_str().unwrap().to_string(),
                t.clone(),
            ));
        }
    }
    out
}

pub fn find_track<'a>(all: &'a [(String, String, String, Value)], user: &str, stream: &str, kind: &str) -> &'a Value {
    &all.iter()
        .find(|(u, s, k, _)| u == user && s == stream && k == kind)
        .unwrap_or_else(|| panic!("no {kind} track in {user}'s {stream} stream: {all:#?}"))
        .3
}

pub fn millis(value: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a date: {value}")))
        .unwrap_or_else(|e| panic!("{value}: {e}"))
        .timestamp_millis()
}

/// Seconds from the instance's `started` to `at`.
pub fn offset(instance: &Value, at: &Value) -> f64 {
    (millis(at) - millis(&instance["started"])) as f64 / 1000.0
}

pub use testkit::probe::{container_duration, probe, Probe};

/// The local file of a track record.
pub fn track_file(track: &Value) -> PathBuf {
    PathBuf::from(
        track["storage"]["localStorage"]["location"]
            .as_str()
            .unwrap_or_else(|| panic!("track without a local file: {track}")),
    )
}

/// Checks one track file against what was sent.
pub fn assert_track(track: &Value, codec: &str, frames_sent: u64, seconds_sent: f64) -> Probe {
    let p = probe(&track_file(track));
    assert_eq!(p.codec, codec, "{track}");
    // The promises on a lossless path: at least 99.9 % of the frames sent, never more; the
    // duration within 40 ms of what was sent.
    let least = (frames_sent * 999).div_ceil(1000);
    assert!(
        p.num_frames >= least && p.num_frames <= frames_sent,
        "{} frames of {frames_sent} sent (at least {least}): {track}",
        p.num_frames
    );
    assert!(
        (p.duration - seconds_sent).abs() <= 0.040,
        "duration {} vs {seconds_sent} sent: {track}",
        p.duration
    );
    if codec != "opus" {
        assert!(p.first_is_keyframe, "first video frame is not a keyframe: {track}");
    }
    assert!(track["started"].is_string() && track["stopped"].is_string(), "{track}");
    assert!(track["storage"]["localStorage"]["created"].is_string(), "{track}");
    p
}

/// Opus frames the FFmpeg CLI sends for `seconds` of audio: libopus adds its 312-sample
/// look-ahead (6.5 ms at 48 kHz) to the stream, which takes one 20 ms frame more.
pub fn ffmpeg_opus_frames(seconds: u32) -> u64 {
    (u64::from(seconds) * 48_000 + 312).div_ceil(960)
}

/// Runs `ffmpeg` (quiet) with these arguments in the background.
pub fn ffmpeg(args: &[String]) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs (scripts/setup.sh installs it)")
}

pub fn wait_ok(mut child: Child, what: &str) -> String {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    assert!(status.success(), "{what} failed ({status}): {err}");
    out
}

/// FFmpeg inputs: a moving test picture and a tone, `seconds` long.
pub fn lavfi_video(seconds: u32) -> Vec<String> {
    args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=320x240:rate=30:duration={seconds}"),
    ])
}

/// One FFmpeg input with a test picture (stream 0:v) and a tone (0:a) on one clock, as a
/// capture device gives them: FFmpeg's sender reports then put both on one timeline.
pub fn lavfi_av(seconds: u32) -> Vec<String> {
    args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=320x240:rate=30:duration={seconds}[out0];sine=frequency=440:sample_rate=48000:duration={seconds}[out1]"),
    ])
}

/// One FFmpeg RTP output of input stream `input` (`0`, `0:v`, `0:a`).
pub fn rtp_out(input: &str, codec: &str, pt: u8, port: u16) -> Vec<String> {
    let mut out = args(&["-map", input]);
    match codec {
        "vp8" => out.extend(args(&[
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-b:v",
            "300k",
        ])),
        "vp9" => out.extend(args(&[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "30",
            "-b:v",
            "300k",
            "-strict",
            "experimental",
        ])),
        "h264" => out.extend(args(&[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "30",
            "-b:v",
            "300k",
        ])),
        "opus" => out.extend(args(&["-c:a", "libopus", "-b:a", "32k"])),
        other => panic!("no codec {other}"),
    }
    out.extend(args(&[
        "-payload_type",
        &pt.to_string(),
        "-f",
        "rtp",
        &format!("rtp://127.0.0.1:{port}"),
    ]));
    out
}

pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Polls until `probe` returns Some, at most `timeout`.
pub use testkit::poll;

/// The Stream snapshots in the debug tree.
pub fn stream_snapshots(tree: &Value) -> Vec<Value> {
    snapshots_of(tree, "Stream")
}

/// Waits until every track of every live stream in the tree has written at least `frames` frames (an observable amount of media recorded, instead of a sleep);
/// returns the tracks' snapshots.
pub fn wait_written(app: &TestApp, frames: u64) -> Vec<Value> {
    poll(
        Duration::from_secs(30),
        &format!("every track {frames} frames written"),
        || {
            let tracks = snapshots_of(&app.debug_tree(), "Track");
            (!tracks.is_empty()
                && tracks
                    .iter()
                    .all(|t| t["counters"]["num_frames_written"].as_u64() >= Some(frames)))
            .then_some(tracks)
        },
    )
}

/// The snapshots of the actors of `kind` (`Stream`, `Recorder`, `Uploader`, ...) in the debug tree.
pub fn snapshots_of(tree: &Value, kind: &str) -> Vec<Value> {
    let mut out = Vec::new();
    fn walk(node: &Value, kind: &str, out: &mut Vec<Value>) {
        if node["kind"] == kind {
            out.push(node.clone());
        }
        for child in node["children"].as_array().into_iter().flatten() {
            walk(child, kind, out);
        }
    }
    walk(tree, kind, &mut out);
    out
}

/// Polls the composition until it is STOPPED (done) and uploaded; fails on FAILED.
pub fn wait_composed(app: &TestApp, conversation: &str, instance_id: &Value) -> Value {
    poll(Duration::from_secs(120), "composition done and uploaded", || {
        let resp = app.get(&format!("/compositions/{conversation}"), KEY);
        if resp.status != 200 {
            return None;
        }
        let message = resp.json();
        assert_ne!(message["state"], "FAILED", "{message:#}\n{}", app.stderr());
        let track = &message["streams"][0]["tracks"][0];
        let done = message["state"] == "STOPPED"
            && message["instanceId"] == *instance_id
            && track["storage"]["objectStorage"]["uploaded"].is_string();
        done.then_some(message)
    })
}

pub use testkit::services_env;

/// Every file under `dir`, at any depth (none if it is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `user`'s CAM published over plain RTP to `conference` through `app`, VP8 and Opus: the ports
/// of the answer (video, audio).
pub fn publish_av_rtp(app: &TestApp, conference: &str, user: &str) -> Vec<u16> {
    let resp = app.publish(
        "rtp",
        conference,
        &format!("userId={user}&type=CAM"),
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    answer_ports(&resp.text())
}

/// The whole file decodes with FFmpeg without a single error message.
pub fn assert_decodes(path: &Path) {
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&decoded.stderr)
    );
}
