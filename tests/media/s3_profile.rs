//! An end-to-end recording whose application stores on S3, with a real FFmpeg plain-RTP sender, a
//! chat transcript and a co-browse session. What reached the bucket is listed with a standard
//! client (`aws` CLI from PyPI), not with the recorder's own backend.
//!
//! The S3 server is a private `moto_server` (PyPI `moto[server]`) on loopback, not the shared
//! s3s-fs: s3s-fs 0.14.1 stores an object's attributes in a file named after the base64 of the
//! whole key, so any key longer than about 160 bytes fails with `File name too long` (HTTP 500),
//! and a track key (`{org}/{app}/{conversation}/{recorder uuid}/{instance uuid}/streams/{stream}/
//! {track}.webm`) is always longer. moto does not check signatures, so the presigned URL's
//! signature is proven by the conformance suite against s3s-fs; here the URL must serve the track.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// A private `moto_server` on a free loopback port, with one bucket; stopped on drop.
struct S3Server {
    child: std::process::Child,
    env: HashMap<String, String>,
}

impl S3Server {
    fn start(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}); run scripts/test-setup.sh (pip install 'moto[server]')")
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let env = [
            ("RTC_S3_ENDPOINT", format!("http://127.0.0.1:{port}")),
            ("RTC_S3_BUCKET", bucket.to_string()),
            ("RTC_S3_REGION", "us-east-1".to_string()),
            ("RTC_S3_ACCESS_KEY", "e2e-access".to_string()),
            ("RTC_S3_SECRET_KEY", "e2e-secret-0123456789".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let server = S3Server { child, env };
        aws(&server.env, &["s3api", "create-bucket", "--bucket", bucket]);
        server
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Keys and sizes of every object under `prefix`.
fn list(env: &HashMap<String, String>, prefix: &str) -> HashMap<String, u64> {
    let out = aws(
        env,
        &[
            "s3api",
            "list-objects-v2",
            "--bucket",
            &env["RTC_S3_BUCKET"],
            "--prefix",
            prefix,
            "--output",
            "json",
        ],
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

#[test]
fn a_recording_with_an_s3_profile_ends_with_every_artefact_in_the_bucket() {
    let _media = media_lock();
    let s3 = S3Server::start("recordings");
    let env = s3.env.clone();
    // A prefix of its own: the bucket is shared with other tests and runs.
    let key_prefix = unique("e2e");
    let profile = {
        let env = env.clone();
        let key_prefix = key_prefix.clone();
        move |root: &Path| {
            let (access, secret) = (root.join("s3-access-key"), root.join("s3-secret-key"));
            std::fs::write(&access, &env["RTC_S3_ACCESS_KEY"]).unwrap();
            std::fs::write(&secret, &env["RTC_S3_SECRET_KEY"]).unwrap();
            format!(
                "provider = \"AMAZON_S3\"\nbucket = \"{}\"\nregion = \"{}\"\nendpoint = \"{}\"\npath_style = true\n\
                 key_prefix = \"{key_prefix}\"\naccess_key_id = {{ file = \"{}\" }}\n\
                 secret_access_key = {{ file = \"{}\" }}",
                env["RTC_S3_BUCKET"],
                env["RTC_S3_REGION"],
                env["RTC_S3_ENDPOINT"],
                access.display(),
                secret.display()
            )
        }
    };
    let app = TestApp::spawn_with_profile(profile);
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let ids = json!({
        "conversationId": event["conversationId"],
        "recorderId": event["recorderId"],
        "instanceId": event["instanceId"],
    });
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ports = answer_ports(&resp.text());
    let seconds = 3;
    let mut sender = lavfi_av(seconds);
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

    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let instance = loop {
        let instance = app.instance(&event);
        let all = tracks(&instance);
        let done = all.len() == 2
            && all.iter().all(|(_, _, _, t)| {
                t["storage"]["objectStorage"]["uploaded"].is_string()
                    && t["storage"]["localStorage"]["deleted"].is_string()
            });
        if done {
            break instance;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tracks not uploaded and deleted locally in 90 s: {last:#}\nstderr:\n{}",
            app.stderr()
        );
        last = instance;
        std::thread::sleep(Duration::from_millis(100));
    };
    let instance_prefix = format!(
        "{key_prefix}/org-a/app-a/{}/{}/{}",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    );
    // The manifest is written after every other artefact: once it is there, all are.
    let objects = poll(Duration::from_secs(60), "recording.json in the bucket", || {
        let objects = list(&env, &format!("{instance_prefix}/"));
        objects
            .contains_key(&format!("{instance_prefix}/recording.json"))
            .then_some(objects)
    });
    for key in ["chat/transcript.json", "cobrowse/cb-1/events.json"] {
        assert!(
            objects.contains_key(&format!("{instance_prefix}/{key}")),
            "{key} not in the bucket: {objects:#?}"
        );
    }

    let bucket = &env["RTC_S3_BUCKET"];
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let download_dir = tempfile::tempdir().unwrap();
    let secs = f64::from(seconds);
    for (_, _, kind, track) in tracks(&instance) {
        let object = &track["storage"]["objectStorage"];
        assert!(object.get("error").is_none(), "{track}");
        let location = object["location"]
            .as_str()
            .unwrap_or_else(|| panic!("no location: {track}"));
        let key = location
            .strip_prefix(&format!("s3://{bucket}/"))
            .unwrap_or_else(|| panic!("{location} is not in bucket {bucket}"));
        assert!(key.starts_with(&format!("{instance_prefix}/")), "{key}");
        let size: u64 = object["size"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(size > 0, "{track}");
        assert_eq!(objects.get(key), Some(&size), "{key} in the bucket: {objects:#?}");
        // Deleted locally only after the upload was verified.
        assert!(
            !track_file(&track).exists(),
            "the local file stays after a verified upload: {track}"
        );
        assert!(
            millis(&track["storage"]["localStorage"]["deleted"]) >= millis(&object["uploaded"]),
            "deleted before the upload was verified: {track}"
        );

        // The track's `url` is a presigned URL of the store; what it serves plays.
        let url = track["url"].as_str().unwrap_or_else(|| panic!("no url: {track}"));
        assert!(url.starts_with(&env["RTC_S3_ENDPOINT"]), "{url}");
        assert!(url.contains("X-Amz-Signature="), "not presigned: {url}");
        let resp = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        assert_eq!(body.len() as u64, size, "{url}");
        let file = download_dir
            .path()
            .join(format!("{}.{}", kind.to_lowercase(), key.rsplit('.').next().unwrap()));
        std::fs::write(&file, &body).unwrap();
        let p = probe(&file);
        let (codec, expected) = if kind == "VIDEO" {
            ("vp8", secs - 1.0 / 30.0)
        } else {
            ("opus", secs)
        };
        assert_eq!(p.codec, codec, "{track}");
        assert!(
            (p.duration - expected).abs() <= 0.150,
            "duration {} vs {expected}: {track}",
            p.duration
        );
    }

    // The manifest lists every artefact as uploaded.
    let manifest: Value = serde_json::from_slice(&aws(
        &env,
        &[
            "s3",
            "cp",
            &format!("s3://{bucket}/{instance_prefix}/recording.json"),
            "-",
        ],
    ))
    .expect("recording.json is JSON");
    assert_eq!(manifest["instanceId"], event["instanceId"], "{manifest:#}");
    assert_eq!(manifest["state"], "STOPPED", "{manifest:#}");
    assert_eq!(manifest["storageProfile"]["provider"], "AMAZON_S3", "{manifest:#}");
    assert_eq!(
        manifest["chatTranscript"]["location"],
        format!("s3://{bucket}/{instance_prefix}/chat/transcript.json"),
        "{manifest:#}"
    );
    let listed = tracks(&manifest);
    assert_eq!(listed.len(), 2, "{manifest:#}");
    for (_, _, _, t) in listed {
        assert!(t["storage"]["objectStorage"]["uploaded"].is_string(), "{t}");
    }
    let manifest_text = serde_json::to_string(&manifest).unwrap();
    assert!(
        !manifest_text.contains(&env["RTC_S3_SECRET_KEY"]),
        "a credential in the manifest"
    );
}
