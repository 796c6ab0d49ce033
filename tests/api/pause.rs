//! Pause and resume through the API, without media: idempotent, 409 once ended, and the chat and
//! co-browse a pause meets follow the application's `pause_capture`.

use serde_json::{json, Value};

use crate::helpers::*;

fn set_paused(app: &TestApp, ev: &Value, verb: &str) -> Value {
    let resp = app.post_empty(&format!("{}/{verb}", instance_path(ev)), KEY_A);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    resp.json()
}

#[test]
fn a_paused_instance_drops_chat_and_cobrowse_when_its_application_says_so() {
    let app = TestApp::spawn_with(
        r#"
[organizations.org-a.applications.app-pci]
allowed_origins = ["*"]
pause_capture = "drop"

[organizations.org-a.applications.app-pci.storage]
provider = "LOCAL"
path = "{tmp}/storage-pci"
"#,
        &[],
    );
    let ev = app.start(KEY_A, "app-pci", &conv("pci"));
    app.add_transcript(KEY_A, &ev, json!([chat("2024-05-01T10:00:00Z", "before", "agent")]))
        .ok_json("RecordingDataEvent");
    let paused = set_paused(&app, &ev, "pause");
    assert_eq!(paused["paused"], true, "{paused:#}");
    // Idempotent.
    assert_eq!(
        set_paused(&app, &ev, "pause")["pauseIntervals"],
        paused["pauseIntervals"]
    );
    app.add_transcript(
        KEY_A,
        &ev,
        json!([chat("2024-05-01T10:00:01Z", "card 4111 1111 1111 1111", "customer")]),
    )
    .ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, "s1", 1, "{\"card\":\"4111\"}", 1)
        .ok_json("RecordingDataEvent");
    let resumed = set_paused(&app, &ev, "resume");
    assert_eq!(resumed["paused"], false, "{resumed:#}");
    assert!(resumed["pauseIntervals"][0]["resumed"].is_string(), "{resumed:#}");
    app.add_transcript(KEY_A, &ev, json!([chat("2024-05-01T10:00:02Z", "after", "agent")]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    // A stopped instance is neither paused nor resumed.
    app.post_empty(&format!("{}/pause", instance_path(&ev)), KEY_A)
        .assert_error(409);
    app.post_empty(&format!("{}/resume", instance_path(&ev)), KEY_A)
        .assert_error(409);

    let file = app
        .root
        .join("storage-pci")
        .join(format!("{}/chat/transcript.json", key_prefix(&ev, ORG_A, "app-pci")));
    let transcript: Value = poll(UPLOAD_TIMEOUT, "the transcript stored", || {
        serde_json::from_slice(&std::fs::read(&file).ok()?).ok()
    });
    let lines: Vec<&str> = transcript["chatTranscriptList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["transcript"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["before", "after"], "{transcript:#}");
    let manifest_path = app
        .root
        .join("storage-pci")
        .join(format!("{}/recording.json", key_prefix(&ev, ORG_A, "app-pci")));
    let manifest: Value = poll(UPLOAD_TIMEOUT, "recording.json", || {
        serde_json::from_slice(&std::fs::read(&manifest_path).ok()?).ok()
    });
    assert_eq!(manifest["numDiscardedWhilePaused"], 2, "{manifest:#}");
    assert_eq!(
        manifest["pauseIntervals"].as_array().map(Vec::len),
        Some(1),
        "{manifest:#}"
    );
    let sessions = app.get(
        &format!("/recordings/{}/cobrowse", ev["conversationId"].as_str().unwrap()),
        KEY_A,
    );
    assert!(
        sessions.json()["cobrowseSessions"]
            .as_array()
            .is_none_or(|s| s.is_empty()),
        "{}",
        sessions.describe()
    );
}

#[test]
fn by_default_chat_sent_while_paused_is_kept() {
    let app = TestApp::spawn();
    let ev = app.start(KEY_A, APP_A, &conv("keep"));
    set_paused(&app, &ev, "pause");
    app.add_transcript(KEY_A, &ev, json!([chat("2024-05-01T10:00:01Z", "kept", "agent")]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, 1);
    assert_eq!(file["chatTranscriptList"][0]["transcript"], "kept");
}
