//! Track `url`s of profiles whose provider has no signed URLs (local filesystem, SFTP): the
//! recorder serves the file itself behind its HMAC-signed URL, with Range, and refuses anything
//! tampered with. SFTP runs against the test sshd of `scripts/test-services.sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// The services' env (see [`services_env`]), with the test sshd checked to be up.
fn services() -> HashMap<String, String> {
    let env = services_env();
    let port: u16 = env["RTC_SFTP_PORT"].parse().expect("RTC_SFTP_PORT is a port");
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        panic!("the test sshd is not running on 127.0.0.1:{port}; run `scripts/test-services.sh start`");
    }
    env
}

/// Records three seconds of VP8 + Opus, stops, and waits until both tracks are uploaded.
fn record_and_upload(app: &TestApp) -> Value {
    record_and_upload_as(app, &unique("call"), &unique("room"), "agent")
}

fn record_and_upload_as(app: &TestApp, conversation: &str, conference: &str, user: &str) -> Value {
    let event = app.start(conversation, conference, true, true);
    let resp = app.publish(
        "rtp",
        conference,
        &format!("userId={user}&type=CAM"),
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ports = answer_ports(&resp.text());
    let mut sender = lavfi_av(3);
    sender.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    sender.extend(rtp_out("0:a", "opus", 111, ports[1]));
    wait_ok(ffmpeg(&sender), "ffmpeg sender");
    assert_eq!(app.stop(&event)["state"], "STOPPED");
    poll(Duration::from_secs(60), "both tracks uploaded", || {
        let instance = app.instance(&event);
        let all = tracks(&instance);
        let done = all.len() == 2
            && all
                .iter()
                .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string());
        done.then_some(instance)
    })
}

/// Downloads a track through its `url` without an API key and checks it against the stored
/// object: whole, by Range, and refused when any part of the URL is changed.
fn check_served_track(app: &TestApp, track: &Value, stored: &Path) {
    let url = track["url"].as_str().unwrap_or_else(|| panic!("no url: {track}"));
    assert!(
        url.starts_with(&format!("{}{BASE_PATH}/recordings/attachment/track/", app.base_url)),
        "{url}"
    );
    let expected = std::fs::read(stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display()));
    assert!(expected.len() > 300, "{} is too small to test ranges", stored.display());
    let len = expected.len();

    let whole = app.request("GET", url, &[], None);
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert!(whole.body == expected, "the download differs from the stored object");
    assert!(
        whole.header("content-disposition").is_some_and(|d| d.contains(".webm")),
        "{:?}",
        whole.headers
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("track.webm");
    std::fs::write(&file, &whole.body).unwrap();
    let p = probe(&file);
    assert!(p.codec == "vp8" || p.codec == "opus", "{p:?}");
    assert!(p.num_frames > 0, "{p:?}");

    let part = app.request("GET", url, &[("Range", "bytes=100-199")], None);
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 100-199/{len}").as_str())
    );
    assert!(
        part.body == expected[100..200],
        "the range differs from the stored bytes"
    );
    let beyond = app.request("GET", url, &[("Range", &format!("bytes={}-", len + 10))], None);
    assert_eq!(beyond.status, 416, "{}", beyond.text());

    // Tampering: the signature, the date, another track's path with this signature.
    let (path, query) = url.split_once('?').unwrap();
    let signature_at = query.find("Signature=").unwrap() + "Signature=".len();
    let mut flipped = query.to_string();
    let c = if &query[signature_at..signature_at + 1] == "0" {
        "1"
    } else {
        "0"
    };
    flipped.replace_range(signature_at..signature_at + 1, c);
    let other_date = {
        let date_at = query.find("Date=").unwrap() + "Date=".len();
        let mut q = query.to_string();
        let year: u32 = query[date_at..date_at + 4].parse().unwrap();
        q.replace_range(date_at..date_at + 4, &(year - 1).to_string());
        q
    };
    let (instance_path, track_id) = path.rsplit_once('/').unwrap();
    for tampered in [
        format!("{path}?{flipped}"),
        format!("{path}?{other_date}"),
        format!("{instance_path}/{}?{query}", "0".repeat(track_id.len())),
    ] {
        let resp = app.request("GET", &tampered, &[], None);
        resp.assert_error(403);
    }
    let unsigned = app.request("GET", path, &[], None);
    assert_eq!(unsigned.status, 400, "{}", unsigned.text());
    // Path segments never reach the file system: a traversal attempt is refused.
    for traversal in ["..%2F..%2F..%2Fetc%2Fpasswd", "..", "%2e%2e"] {
        let resp = app.request("GET", &format!("{instance_path}/{traversal}?{query}"), &[], None);
        assert!(
            matches!(resp.status, 400 | 403 | 404),
            "{traversal}: {} {}",
            resp.status,
            resp.text()
        );
    }
}

#[test]
fn local_profile_tracks_are_served_by_the_recorder_behind_a_signed_url() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let instance = record_and_upload(&app);
    for (_, _, _, track) in tracks(&instance) {
        let location = track["storage"]["objectStorage"]["location"].as_str().unwrap();
        let stored = PathBuf::from(location.strip_prefix("file://").unwrap_or_else(|| panic!("{location}")));
        check_served_track(&app, &track, &stored);
    }
}

#[test]
fn sftp_profile_tracks_are_fetched_and_served_by_the_recorder_behind_a_signed_url() {
    let _media = media_lock();
    let env = services();
    let key_prefix = unique("tu");
    let host_key = std::fs::read_to_string(&env["RTC_SFTP_HOST_KEY_FILE"]).unwrap();
    let profile = {
        let env = env.clone();
        let key_prefix = key_prefix.clone();
        move |_: &Path| {
            format!(
                "provider = \"SFTP_STORAGE\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\n\
                 private_key = {{ file = \"{}\" }}\nhost_key = \"{}\"\nroot = \"{}\"\nkey_prefix = \"{key_prefix}\"",
                env["RTC_SFTP_PORT"],
                env["RTC_SFTP_USER"],
                env["RTC_SFTP_KEY_FILE"],
                host_key.trim(),
                env["RTC_SFTP_ROOT"],
            )
        }
    };
    let app = TestApp::spawn_with_profile(profile);
    let instance = record_and_upload(&app);
    for (_, _, _, track) in tracks(&instance) {
        let location = track["storage"]["objectStorage"]["location"].as_str().unwrap();
        assert!(location.starts_with("sftp://"), "{location}");
        // The sshd serves this machine's file system: the object is a file under its root.
        let key = location
            .split_once(&format!("/{key_prefix}/"))
            .unwrap_or_else(|| panic!("{location} without the key prefix"))
            .1;
        let stored = Path::new(&env["RTC_SFTP_ROOT"]).join(&key_prefix).join(key);
        // The local copy goes once it is uploaded and, with composition on (the default), once
        // the conversation is composed; then only the server has the track.
        poll(Duration::from_secs(90), "the local copy deleted", || {
            (!track_file(&track).exists()).then_some(())
        });
        check_served_track(&app, &track, &stored);
    }
}

/// The longest ids the API accepts (255 bytes, `limits.max_id_len`) are path segments of every
/// object key and of the media and composition folders: a recording with them is written,
/// uploaded to the local profile, served, and composed like any other.
#[test]
fn the_longest_ids_accepted_are_recorded_uploaded_served_and_composed() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let tag = unique("long");
    let long = |c: char| format!("{tag}{}", c.to_string().repeat(255 - tag.len()));
    let (conversation, conference, user) = (long('c'), long('f'), long('u'));
    assert_eq!(conversation.len(), 255);
    let instance = record_and_upload_as(&app, &conversation, &conference, &user);
    assert_eq!(instance["conversationId"], conversation.as_str());
    let all = tracks(&instance);
    assert_eq!(all.len(), 2, "{instance:#}");
    for (track_user, _, _, track) in &all {
        assert_eq!(track_user, &user);
        assert!(track["storage"]["objectStorage"]["error"].is_null(), "{track}");
        let location = track["storage"]["objectStorage"]["location"].as_str().unwrap();
        assert!(location.contains(&conversation), "{location}");
        let stored = PathBuf::from(location.strip_prefix("file://").unwrap_or_else(|| panic!("{location}")));
        check_served_track(&app, track, &stored);
    }
    let composed = wait_composed(&app, &conversation, &instance["instanceId"]);
    let url = composed["streams"][0]["tracks"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no composition url: {composed:#}"));
    let resp = app.request("GET", url, &[], None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("composed.mp4");
    std::fs::write(&file, &resp.body).unwrap();
    assert!(probe(&file).num_frames > 0, "the composition plays");
}
