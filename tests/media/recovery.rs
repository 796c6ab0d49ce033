//! Crash recovery, black box: the real binary killed with `kill -9`, restarted on its data dir,
//! FFmpeg plain-RTP senders, ffprobe on what reached the storage profile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// The stored copy of an uploaded track (LOCAL profile: a `file://` location).
fn stored_file(app: &TestApp, track: &Value) -> PathBuf {
    let location = track["storage"]["objectStorage"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("track not uploaded: {track}"));
    let stored = PathBuf::from(location.strip_prefix("file://").unwrap_or_else(|| panic!("{location}")));
    assert!(
        stored.starts_with(app.root.join("storage")),
        "{location} outside the profile"
    );
    stored
}

fn manifest_path(app: &TestApp, event: &Value) -> PathBuf {
    app.root.join("storage").join(format!(
        "org-a/app-a/{}/{}/{}/recording.json",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    ))
}

/// No publisher comes back after a crash: once the recovery window has passed the instance is
/// ABORTED with an error, and what it recorded before the crash is still finalized, uploaded
/// (plays from the storage profile) and listed in `recording.json`. The conversation is free
/// for a new instance.
#[test]
fn with_no_publisher_back_within_the_window_the_instance_is_aborted_and_its_media_kept() {
    let _media = media_lock();
    let window_secs = 3;
    let mut app = TestApp::spawn_uploading_with(&format!("[recovery]\nwindow_secs = {window_secs}\n"));
    let conference = unique("room");
    let conversation = unique("call");
    let event = app.start(&conversation, &conference, true, true);
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
    let mut a = lavfi_av(10);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    let mut sender = ffmpeg(&a);
    poll(Duration::from_secs(10), "instance ACTIVE", || {
        (app.instance(&event)["state"] == "ACTIVE").then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    app.kill9();
    let _ = sender.kill();
    let _ = sender.wait();

    app.restart();
    let booted = Instant::now();
    assert_eq!(app.instance(&event)["state"], "PENDING_RECOVERY");
    // A new instance is refused while this one may still recover.
    let resp = app.post_json(
        "/recordings/start",
        KEY,
        &serde_json::json!({"applicationId": "app-a", "conferenceId": conference, "conversationId": conversation, "audio": true, "video": true}),
    );
    assert_eq!(resp.status, 409, "{}", resp.text());

    let aborted = poll(Duration::from_secs(30), "instance ABORTED", || {
        let instance = app.instance(&event);
        (instance["state"] == "ABORTED").then_some(instance)
    });
    assert!(
        booted.elapsed() >= Duration::from_secs(window_secs) - Duration::from_millis(200),
        "aborted after {:?}, before the {window_secs} s window",
        booted.elapsed()
    );
    let error = &aborted["error"];
    for field in ["code", "message", "occurred"] {
        assert!(error[field].as_str().is_some_and(|s| !s.is_empty()), "{aborted:#}");
    }
    assert_eq!(error["code"], "RECOVERY_WINDOW_EXPIRED", "{aborted:#}");
    assert!(aborted["recovered"].is_null(), "{aborted:#}");

    let instance = poll(Duration::from_secs(60), "every track uploaded", || {
        let instance = app.instance(&event);
        let all = tracks(&instance);
        let done = all.len() == 2
            && all
                .iter()
                .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string());
        done.then_some(instance)
    });
    for (_, _, kind, track) in tracks(&instance) {
        let p = probe(&stored_file(&app, &track));
        let codec = if kind == "VIDEO" { "vp8" } else { "opus" };
        assert_eq!(p.codec, codec, "{track}");
        // 3 s were recorded before the kill; a flush each second keeps all but the last one.
        assert!(p.duration >= 1.5 && p.duration < 10.0, "{p:?}: {track}");
        assert!(p.num_frames > 0, "{p:?}");
    }
    let manifest: Value = poll(Duration::from_secs(30), "recording.json written", || {
        std::fs::read(manifest_path(&app, &event))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert_eq!(manifest["state"], "ABORTED", "{manifest:#}");

    // The conversation can record again.
    let next = app.start(&conversation, &conference, true, true);
    assert_eq!(next["state"], "INITIALISED", "{next}");
    assert_ne!(next["instanceId"], event["instanceId"]);
    assert_eq!(app.stop(&next)["state"], "STOPPED");
    // Stopping the aborted one again is idempotent.
    assert_eq!(app.stop(&event)["state"], "ABORTED");
}
