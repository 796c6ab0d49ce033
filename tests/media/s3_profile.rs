//! Recordings whose application stores on S3, end to end against s3s-fs 0.14.1 (an S3 server that
//! checks SigV4 signatures, presigned URLs included), each test on a private s3s-fs of its own
//! (it may be slowed down, and its data directory is inspected for open multipart uploads). Real
//! FFmpeg plain-RTP senders, chat, co-browse; what reached the bucket is listed and fetched with
//! a standard client (`aws` CLI), not with the recorder's own backend.
//!
//! - a recording ends with every artefact in the bucket (tracks, transcript, co-browse session,
//!   composition, `recording.json` listing them), the presigned URLs serve them (with `Range`);
//! - `kill -9` right after the stop, with every upload still queued: all of them finish after the
//!   restart;
//! - `kill -9` in the middle of a multipart upload of a large track: after the restart it
//!   continues (the parts the store holds are not sent again), completes once, and no multipart
//!   upload is left open.
//!
//! Key length: s3s-fs 0.14.1 keeps each object's attributes in one file in its root named
//! `.bucket-{base64(bucket)}.object-{base64(key)}[.upload-{uuid}].metadata.json`. A file name may
//! have 255 bytes, so a key longer than about 160 bytes (fewer while a multipart upload is open,
//! which adds the upload id) is answered with HTTP 500 (`File name too long`). Real stores allow
//! 1024-byte keys with segments of any length, the segments the recorder makes up are at most 36
//! bytes (ids, `streams`, file names), so the key layout stays; these tests keep their keys short
//! instead: bucket `bkt`, conversation `c`, recorder
//! id `r`, no key prefix (see [`assert_key_fits_s3s_fs`]).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// The bucket of every test here; as short as S3 allows, 3 bytes (see the module's note on key
/// length).
const BUCKET: &str = "bkt";
/// The conversation of every test here; each test has its own server and data dir.
const CONVERSATION: &str = "c";
/// The recorder's S3 part size (`storage::PART_SIZE`).
const PART_SIZE: u64 = 8 << 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, what: &str) {
    poll(Duration::from_secs(30), &format!("{what} listening on {port}"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
}

/// A private s3s-fs on a free loopback port with bucket [`BUCKET`], serving a temp dir; stopped
/// on drop.
struct S3sFs {
    port: u16,
    root: tempfile::TempDir,
    child: Child,
    /// Endpoint, bucket, region and credentials, as the `aws` CLI and the profile need them.
    env: HashMap<String, String>,
}

impl S3sFs {
    fn start() -> S3sFs {
        let services = services_env();
        let get = |name: &str| {
            services
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing from the services env; run scripts/test-services.sh start"))
        };
        let root = tempfile::Builder::new().prefix("rtc-s3s-").tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let port = free_port();
        let bin = get("RTC_S3S_FS_BIN");
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                &get("RTC_S3_ACCESS_KEY"),
                "--secret-key",
                &get("RTC_S3_SECRET_KEY"),
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} ({e}); run scripts/test-services.sh start"));
        wait_listening(port, "s3s-fs");
        let env = HashMap::from([
            ("RTC_S3_ENDPOINT".to_string(), format!("http://127.0.0.1:{port}")),
            ("RTC_S3_BUCKET".to_string(), BUCKET.to_string()),
            ("RTC_S3_REGION".to_string(), get("RTC_S3_REGION")),
            ("RTC_S3_ACCESS_KEY".to_string(), get("RTC_S3_ACCESS_KEY")),
            ("RTC_S3_SECRET_KEY".to_string(), get("RTC_S3_SECRET_KEY")),
        ]);
        S3sFs { port, root, child, env }
    }

    /// Files of multipart uploads still open: `.upload-{id}.json` (the upload) and
    /// `.upload_id-{id}.part-{n}` (its parts). s3s-fs 0.14.1 answers `ListMultipartUploads` with
    /// NotImplemented; this is the same question asked of its data directory.
    fn open_upload_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload-") || n.starts_with(".upload_id-"))
            .collect();
        names.sort();
        names
    }

    /// Parts the store has received in full (s3s-fs renames a part into place once complete).
    fn num_parts_stored(&self) -> usize {
        self.open_upload_files()
            .iter()
            .filter(|n| n.starts_with(".upload_id-") && n.contains(".part-"))
            .count()
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards loopback TCP connections to the store; client-to-store bytes at most `rate` bytes per
/// second per connection (`u64::MAX`: no limit), counted. A slow link,
/// so that an upload is still in flight when the service is killed. While `down`, connections
/// are closed as soon as they are accepted: the store is unreachable.
struct SlowLink {
    port: u16,
    down: Arc<std::sync::atomic::AtomicBool>,
    num_bytes_up: Arc<Mutex<Arc<AtomicU64>>>,
}

impl SlowLink {
    fn start(target: u16, rate: u64) -> SlowLink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let num_bytes_up = Arc::new(Mutex::new(Arc::new(AtomicU64::new(0))));
        let (down_of_link, counter_of_link) = (down.clone(), num_bytes_up.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if down_of_link.load(Ordering::Relaxed) {
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (mut client_r, mut server_w) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut server_r, mut client_w) = (server, client);
                // Bytes count into the counter current when the connection was accepted: a
                // killed client's bytes still draining do not count for the next process.
                let counter = counter_of_link.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = client_r.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Held back before it is passed on: a small request is slow too.
                        if rate != u64::MAX {
                            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                        }
                        if server_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = server_w.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_r, &mut client_w);
                    let _ = client_w.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowLink {
            port,
            down,
            num_bytes_up,
        }
    }

    /// Makes the store unreachable (`true`) or reachable again.
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// A fresh counter of the bytes sent to the store on connections accepted from now on.
    fn count_new_connections(&self) -> Arc<AtomicU64> {
        let fresh = Arc::new(AtomicU64::new(0));
        *self.num_bytes_up.lock().unwrap() = fresh.clone();
        fresh
    }
}

/// The service with app-a on an S3 profile at `endpoint` (the server's, or a [`SlowLink`]'s),
/// credentials from files, recorder id `r`; the S3 backend's info lines (a resumed upload) logged.
fn spawn_s3(s3: &S3sFs, endpoint: &str, extra_toml: &str) -> TestApp {
    let env = s3.env.clone();
    let endpoint = endpoint.to_string();
    TestApp::spawn_with_profile_and(
        extra_toml,
        &[
            ("RECORDER_RECORDER_ID", "r"),
            ("RECORDER_LOG", "warn,recorder_actors::storage=info"),
        ],
        move |root: &Path| {
            let (access, secret) = (root.join("s3-access-key"), root.join("s3-secret-key"));
            std::fs::write(&access, &env["RTC_S3_ACCESS_KEY"]).unwrap();
            std::fs::write(&secret, &env["RTC_S3_SECRET_KEY"]).unwrap();
            format!(
                "provider = \"AMAZON_S3\"\nbucket = \"{BUCKET}\"\nregion = \"{}\"\nendpoint = \"{endpoint}\"\n\
             path_style = true\naccess_key_id = {{ file = \"{}\" }}\nsecret_access_key = {{ file = \"{}\" }}",
                env["RTC_S3_REGION"],
                access.display(),
                secret.display()
            )
        },
    )
}

/// Fails with an explanation, rather than with s3s-fs's HTTP 500, when a key is too long for the
/// attribute file s3s-fs 0.14.1 names after it (see the module's note), multipart included.
fn assert_key_fits_s3s_fs(key: &str) {
    let b64 = |n: usize| (4 * n).div_ceil(3);
    let name = ".bucket-".len()
        + b64(BUCKET.len())
        + ".object-".len()
        + b64(key.len())
        + ".upload-".len()
        + 36
        + ".metadata.json".len();
    assert!(
        name <= 255,
        "key {key:?} ({} bytes) makes s3s-fs 0.14.1 name a {name}-byte file (limit 255): shorten the test's ids",
        key.len()
    );
}

/// Runs the `aws` CLI against the test server; returns stdout.
fn aws(env: &HashMap<String, String>, args: &[&str]) -> Vec<u8> {
    let out = Command::new("aws")
        .arg("--endpoint-url")
        .arg(&env["RTC_S3_ENDPOINT"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &env["RTC_S3_ACCESS_KEY"])
        .env("AWS_SECRET_ACCESS_KEY", &env["RTC_S3_SECRET_KEY"])
        .env("AWS_DEFAULT_REGION", &env["RTC_S3_REGION"])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("the aws CLI runs (scripts/setup.sh installs awscli)");
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Keys and sizes of every object in the bucket.
fn list(env: &HashMap<String, String>) -> HashMap<String, u64> {
    let out = aws(
        env,
        &["s3api", "list-objects-v2", "--bucket", BUCKET, "--output", "json"],
    );
    if out.iter().all(u8::is_ascii_whitespace) {
        return HashMap::new();
    }
    let listing: Value = serde_json::from_slice(&out).expect("list-objects-v2 prints JSON");
    listing["Contents"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| (o["Key"].as_str().unwrap().to_string(), o["Size"].as_u64().unwrap()))
        .collect()
}

/// An object's bytes, fetched with the `aws` CLI.
fn fetch(env: &HashMap<String, String>, key: &str) -> Vec<u8> {
    aws(env, &["s3", "cp", &format!("s3://{BUCKET}/{key}"), "-"])
}

/// `{org}/{app}/{conversation}/{recorder}/{instance}`: where an instance's artefacts go.
fn instance_prefix(event: &Value) -> String {
    format!(
        "org-a/app-a/{}/{}/{}",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    )
}

/// The object key of an uploaded track, from its `objectStorage.location` (`s3://bkt/{key}`).
fn object_key(track: &Value) -> String {
    let location = track["storage"]["objectStorage"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("not uploaded: {track}"));
    location
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .unwrap_or_else(|| panic!("{location} is not in bucket {BUCKET}"))
        .to_string()
}

/// Polls the instance until its `num_tracks` tracks are uploaded and deleted locally.
fn wait_tracks_uploaded(app: &TestApp, event: &Value, num_tracks: usize) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let instance = app.instance(event);
        let all = tracks(&instance);
        let done = all.len() == num_tracks
            && all.iter().all(|(_, _, _, t)| {
                t["storage"]["objectStorage"]["uploaded"].is_string()
                    && t["storage"]["localStorage"]["deleted"].is_string()
            });
        if done {
            return instance;
        }
        assert!(
            !app.stderr().contains("will not be retried until restart"),
            "an upload was refused for good: {instance:#}\nstderr:\n{}",
            app.stderr()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "tracks not uploaded and deleted locally in 120 s: {last:#}\nstderr:\n{}",
            app.stderr()
        );
        last = instance;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Records 3 s of VP8 + Opus from one FFmpeg sender, with a chat line and a co-browse event, and
/// stops. Returns the start event.
fn record_call(app: &TestApp) -> Value {
    let conference = unique("room");
    let event = app.start(CONVERSATION, &conference, true, true);
    let ids = json!({
        "conversationId": event["conversationId"],
        "recorderId": event["recorderId"],
        "instanceId": event["instanceId"],
    });
    let ports = publish_av_rtp(app, &conference, "agent");
    let mut sender = lavfi_av(3);
    sender.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    sender.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let sender = ffmpeg(&sender);

    let mut transcript = ids.clone();
    transcript["chatTranscriptList"] =
        json!([{"timeStamp": "2026-11-27T10:00:00Z", "transcript": "hello", "userId": "agent"}]);
    let resp = app.post_json("/recordings/chat/transcript/add", KEY, &transcript);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut cobrowse = ids.clone();
    cobrowse["event"] = json!({"sessionId": "cb-1", "sequenceId": 1, "timestamp": 1, "payload": "{}"});
    let resp = app.post_json("/recordings/cobrowse/event", KEY, &cobrowse);
    assert_eq!(resp.status, 200, "{}", resp.text());
    wait_ok(sender, "ffmpeg sender");
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    event
}

/// What [`record_call`] leaves in the bucket once everything is uploaded: exactly its two tracks,
/// the transcript, the co-browse session, the conversation's composition and `recording.json`
/// listing them (composition included); the presigned URLs of the tracks and of the composition
/// serve them, with `Range`; the local track files are deleted, only after the verified upload.
/// `endpoint` is the profile's: the presigned URLs name it.
fn assert_every_artefact_in_the_bucket(app: &TestApp, s3: &S3sFs, endpoint: &str, event: &Value) {
    let env = &s3.env;
    let prefix = instance_prefix(event);
    let instance = wait_tracks_uploaded(app, event, 2);
    let composition = poll(Duration::from_secs(120), "the composition done and uploaded", || {
        let resp = app.get(&format!("/compositions/{CONVERSATION}"), KEY);
        if resp.status != 200 {
            return None;
        }
        let message = resp.json();
        assert_ne!(message["state"], "FAILED", "{message:#}\n{}", app.stderr());
        let done = message["state"] == "STOPPED"
            && message["streams"][0]["tracks"][0]["storage"]["objectStorage"]["uploaded"].is_string();
        done.then_some(message)
    });
    // The manifest is rewritten once the composition is uploaded; that version lists it.
    let manifest_key = format!("{prefix}/recording.json");
    let manifest: Value = poll(
        Duration::from_secs(60),
        "recording.json listing the composition",
        || {
            list(env).contains_key(&manifest_key).then_some(())?;
            let manifest: Value = serde_json::from_slice(&fetch(env, &manifest_key)).expect("recording.json is JSON");
            manifest["composition"].is_object().then_some(manifest)
        },
    );

    let objects = list(env);
    let mut expected: BTreeSet<String> = [
        manifest_key.clone(),
        format!("{prefix}/chat/transcript.json"),
        format!("{prefix}/cobrowse/cb-1/events.json"),
        format!("org-a/app-a/{CONVERSATION}/composition.mp4"),
        // The call has audio: the stereo agent/customer file goes beside the composition.
        format!("org-a/app-a/{CONVERSATION}/stereo.opus"),
    ]
    .into();
    let all = tracks(&instance);
    for (_, _, _, track) in &all {
        expected.insert(object_key(track));
    }
    assert_eq!(
        objects.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every artefact once, nothing else"
    );
    assert_eq!(
        s3.open_upload_files(),
        Vec::<String>::new(),
        "multipart uploads left open"
    );

    // The manifest: the API's RecordingDataMessage, every artefact uploaded, sizes as stored.
    assert_eq!(manifest["instanceId"], event["instanceId"], "{manifest:#}");
    assert_eq!(manifest["state"], "STOPPED", "{manifest:#}");
    assert_eq!(manifest["storageProfile"]["provider"], "AMAZON_S3", "{manifest:#}");
    assert_eq!(
        manifest["chatTranscript"]["location"],
        format!("s3://{BUCKET}/{prefix}/chat/transcript.json"),
        "{manifest:#}"
    );
    let listed = tracks(&manifest);
    assert_eq!(listed.len(), 2, "{manifest:#}");
    for (_, _, _, t) in &listed {
        let object = &t["storage"]["objectStorage"];
        assert!(object["uploaded"].is_string(), "{t}");
        let size: u64 = object["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert_eq!(objects.get(&object_key(t)), Some(&size), "{t}");
    }
    let composition_key = format!("org-a/app-a/{CONVERSATION}/composition.mp4");
    assert_eq!(
        manifest["composition"]["location"],
        format!("s3://{BUCKET}/{composition_key}"),
        "{manifest:#}"
    );
    assert_eq!(
        manifest["composition"]["size"].as_u64(),
        objects.get(&composition_key).copied(),
        "{manifest:#}"
    );
    let stereo_key = format!("org-a/app-a/{CONVERSATION}/stereo.opus");
    assert_eq!(
        manifest["stereo"]["location"],
        format!("s3://{BUCKET}/{stereo_key}"),
        "{manifest:#}"
    );
    assert_eq!(
        manifest["stereo"]["size"].as_u64(),
        objects.get(&stereo_key).copied(),
        "{manifest:#}"
    );
    let manifest_text = serde_json::to_string(&manifest).unwrap();
    assert!(
        !manifest_text.contains(&env["RTC_S3_SECRET_KEY"]),
        "a credential in the manifest"
    );

    // Each presigned URL is checked by s3s-fs's SigV4 verification; what it serves plays.
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let download_dir = tempfile::tempdir().unwrap();
    let mut downloads = Vec::new();
    for (_, _, kind, track) in &all {
        let object = &track["storage"]["objectStorage"];
        assert!(object.get("error").is_none(), "{track}");
        assert!(
            !track_file(track).exists(),
            "the local file stays after a verified upload: {track}"
        );
        assert!(
            millis(&track["storage"]["localStorage"]["deleted"]) >= millis(&object["uploaded"]),
            "deleted before the upload was verified: {track}"
        );
        let key = object_key(track);
        let name = format!("{}.{}", kind.to_lowercase(), key.rsplit('.').next().unwrap());
        downloads.push((track["url"].clone(), key, name, kind.clone()));
    }
    let composition_url = composition["streams"][0]["tracks"][0]["url"].clone();
    downloads.push((
        composition_url,
        composition_key,
        "composition.mp4".to_string(),
        "COMPOSITION".to_string(),
    ));
    for (url, key, name, kind) in downloads {
        let url = url.as_str().unwrap_or_else(|| panic!("no url for {key}"));
        assert!(url.starts_with(endpoint), "{url}");
        assert!(url.contains("X-Amz-Signature="), "not presigned: {url}");
        let resp = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        assert_eq!(Some(&(body.len() as u64)), objects.get(&key), "{url}");
        let ranged = agent
            .get(url)
            .set("Range", "bytes=100-1099")
            .call()
            .unwrap_or_else(|e| panic!("GET {url} with Range: {e}"));
        assert_eq!(ranged.status(), 206, "{url}");
        let mut part = Vec::new();
        ranged.into_reader().read_to_end(&mut part).unwrap();
        assert!(part == body[100..1100], "the range differs from the object: {url}");
        // The same URL with its signature altered is refused: s3s-fs checks it.
        let at = url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
        let flipped = if &url[at..at + 1] == "0" { "1" } else { "0" };
        let tampered = format!("{}{flipped}{}", &url[..at], &url[at + 1..]);
        match agent.get(&tampered).call() {
            Err(ureq::Error::Status(403, _)) => {}
            other => panic!("a tampered presigned URL answered {other:?}"),
        }
        let file = download_dir.path().join(&name);
        std::fs::write(&file, &body).unwrap();
        let p = probe(&file);
        // The tracks hold the sender's 3 s; the composition spans the instance, start to stop
        // (which includes the sender's start-up and the stop request: 3.17 s on a loaded machine).
        let (codec, expected) = match kind.as_str() {
            "VIDEO" => ("vp8", 3.0 - 1.0 / 30.0),
            "AUDIO" => ("opus", 3.0),
            _ => ("h264", offset(&instance, &instance["stopped"])),
        };
        assert_eq!(p.codec, codec, "{key}");
        assert!(
            (p.duration - expected).abs() <= 0.150,
            "{key}: duration {} vs {expected}",
            p.duration
        );
    }
}

#[test]
fn a_recording_with_an_s3_profile_ends_with_every_artefact_in_the_bucket_and_a_manifest_listing_them() {
    let _media = media_lock();
    let s3 = S3sFs::start();
    let endpoint = s3.env["RTC_S3_ENDPOINT"].clone();
    let app = spawn_s3(&s3, &endpoint, "");
    let event = record_call(&app);
    let instance = app.instance(&event);
    for stream in instance["streams"].as_array().unwrap() {
        for track in stream["tracks"].as_array().unwrap() {
            let ext = track_file(track).extension().unwrap().to_string_lossy().into_owned();
            assert_key_fits_s3s_fs(&format!(
                "{}/streams/{}/{}.{ext}",
                instance_prefix(&event),
                stream["id"].as_str().unwrap(),
                track["id"].as_str().unwrap()
            ));
        }
    }
    assert_every_artefact_in_the_bucket(&app, &s3, &endpoint, &event);
}

/// `kill -9` right after the stop answered, while every upload job is still queued (the store is
/// unreachable until then, so none can have finished, and they are retrying): after the restart on
/// the same data dir, with the store back, all of them finish — tracks, transcript, co-browse
/// session, composition, and `recording.json` listing them.
#[test]
fn upload_jobs_queued_at_a_kill_9_right_after_stop_all_finish_after_restart() {
    let _media = media_lock();
    let s3 = S3sFs::start();
    let link = SlowLink::start(s3.port, u64::MAX);
    link.set_down(true);
    let endpoint = format!("http://127.0.0.1:{}", link.port);
    let mut app = spawn_s3(&s3, &endpoint, "");
    let event = record_call(&app);
    app.kill9();
    let objects = list(&s3.env);
    assert!(
        objects.is_empty(),
        "uploads finished before the kill; the test did not kill with jobs queued: {objects:#?}"
    );

    link.set_down(false);
    app.restart();
    assert_every_artefact_in_the_bucket(&app, &s3, &endpoint, &event);
}

/// `kill -9` in the middle of a multipart upload. A large H.264 track (noise at ~50 Mbit/s: 45 to
/// 66 MB in 10 s measured, less when a loaded machine drops packets; the test wants at least 6
/// parts of 8 MiB and sends 12 s) goes to S3 through a link of 4 MiB/s per connection; once the store
/// holds four complete parts and the uploader shows UPLOADING in the debug tree, the service is
/// killed. After the restart on the same data dir the upload continues — the parts the store
/// holds are not sent again — and completes once: one object of the file's size that plays,
/// no multipart upload left open, the instance's `objectStorage.{location,size,uploaded}` set and
/// the local file deleted only after.
#[test]
fn a_kill_9_during_a_multipart_upload_is_completed_after_restart_and_uploaded_once() {
    let _media = media_lock();
    let s3 = S3sFs::start();
    let link = SlowLink::start(s3.port, 4 << 20);
    // No composition: its CPU and its upload would blur what is measured here.
    let mut app = spawn_s3(
        &s3,
        &format!("http://127.0.0.1:{}", link.port),
        "\n[composition]\nenabled = false\n",
    );
    let conference = unique("room");
    let event = app.start(CONVERSATION, &conference, false, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "H264/90000")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    let seconds = 12;
    // Noise does not compress: ~6 MB/s from a small picture; 60 frames a second rather than 30
    // larger ones keeps each burst of packets at the receiver's socket shorter.
    let sender = ffmpeg(&args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=320x240:rate=60:duration={seconds},noise=alls=30:allf=t"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-qp",
        "6",
        // A keyframe every half second: a frame lost on a loaded machine costs little.
        "-g",
        "30",
        "-payload_type",
        "96",
        "-f",
        "rtp",
        &format!("rtp://127.0.0.1:{port}"),
    ]));
    wait_ok(sender, "ffmpeg sender");
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    let stopped = app.instance(&event);
    let track = find_track(&tracks(&stopped), "agent", "CAM", "VIDEO").clone();
    let local = track_file(&track);
    let size = std::fs::metadata(&local)
        .unwrap_or_else(|e| panic!("{}: {e}", local.display()))
        .len();
    let num_parts = size.div_ceil(PART_SIZE);
    assert!(
        num_parts >= 6,
        "the track has {size} bytes, {num_parts} parts: too few to be killed between parts"
    );
    let key = format!(
        "{}/streams/{}/{}.mkv",
        instance_prefix(&event),
        stopped["streams"][0]["id"].as_str().unwrap(),
        track["id"].as_str().unwrap()
    );
    assert_key_fits_s3s_fs(&key);

    // Four parts are in flight at once: they complete together after ~2 s, then the next ones
    // start. Kill once the first four are stored and their acknowledgements are in the job row
    // (the state store writes to disk every 500 ms).
    poll(Duration::from_secs(60), "four parts stored", || {
        (s3.num_parts_stored() >= 4).then_some(())
    });
    let uploader = |tree: &Value| -> Value {
        tree["children"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["kind"] == "Uploader" && c["id"] == "org-a/app-a")
            .cloned()
            .unwrap_or_else(|| panic!("no uploader of org-a/app-a: {tree:#}"))
    };
    std::thread::sleep(Duration::from_millis(800));
    let before = uploader(&app.debug_tree());
    assert_eq!(before["state"], "UPLOADING", "{before:#}");
    app.kill9();
    let at_kill = list(&s3.env);
    assert!(at_kill.is_empty(), "the upload finished before the kill: {at_kill:#?}");
    assert!(local.exists(), "the local file is kept until the upload is verified");
    let num_parts_at_kill = s3.num_parts_stored();
    let open = s3.open_upload_files();
    assert!(
        open.iter().filter(|n| n.ends_with(".json")).count() == 1,
        "one multipart upload open at the kill: {open:#?}"
    );

    let num_bytes_up = link.count_new_connections();
    app.restart();
    let instance = wait_tracks_uploaded(&app, &event, 1);
    let track = find_track(&tracks(&instance), "agent", "CAM", "VIDEO").clone();
    let object = &track["storage"]["objectStorage"];
    assert_eq!(object["location"], format!("s3://{BUCKET}/{key}"), "{track}");
    assert_eq!(object["size"], size.to_string(), "{track}");
    assert!(object.get("error").is_none(), "{track}");
    assert!(!local.exists(), "the local file is deleted after the verified upload");
    assert!(
        millis(&track["storage"]["localStorage"]["deleted"]) >= millis(&object["uploaded"]),
        "deleted before the upload was verified: {track}"
    );
    let manifest_key = format!("{}/recording.json", instance_prefix(&event));
    poll(Duration::from_secs(60), "recording.json in the bucket", || {
        list(&s3.env).contains_key(&manifest_key).then_some(())
    });
    let objects = list(&s3.env);
    assert_eq!(
        objects,
        HashMap::from([(key.clone(), size), (manifest_key.clone(), objects[&manifest_key])]),
        "the track once, and the manifest"
    );
    assert_eq!(
        s3.open_upload_files(),
        Vec::<String>::new(),
        "multipart uploads left open"
    );
    // The restarted service continued the upload: the parts the store held went up only once.
    let num_bytes_up = num_bytes_up.load(Ordering::Relaxed);
    eprintln!(
        "multipart: {size} bytes, {num_parts} parts, {num_parts_at_kill} stored at the kill, \
         {num_bytes_up} bytes sent after the restart"
    );
    assert!(
        app.wait_stderr("resuming multipart upload"),
        "the upload was not resumed:\n{}",
        app.stderr()
    );
    assert!(
        num_bytes_up < size - PART_SIZE,
        "{num_bytes_up} bytes sent after the restart for a {size}-byte file: the upload started over"
    );
    let manifest: Value = serde_json::from_slice(&fetch(&s3.env, &manifest_key)).unwrap();
    let listed = tracks(&manifest);
    assert_eq!(listed.len(), 1, "{manifest:#}");
    assert_eq!(
        listed[0].3["storage"]["objectStorage"]["size"],
        size.to_string(),
        "{manifest:#}"
    );

    let download = tempfile::tempdir().unwrap();
    let file = download.path().join("video.mkv");
    std::fs::write(&file, fetch(&s3.env, &key)).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    let p = probe(&file);
    assert_eq!(p.codec, "h264", "{p:?}");
    assert!(p.first_is_keyframe, "{p:?}");
    assert!(
        p.duration > f64::from(seconds) - 1.0 && p.duration < f64::from(seconds) + 0.5,
        "{p:?}"
    );
}
