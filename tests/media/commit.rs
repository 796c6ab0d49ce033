//! One command, one commit: a crash between any two writes of a command (fault point
//! `command_step`, which makes everything committed before it durable and ends the process)
//! leaves either the whole command or none of it. The end state after a restart is checked
//! through the API and the storage profile, and the restarted node must get there by redoing
//! the command, not by boot's safety net for stores of older builds ("reconciled" in its log).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// Sends a request the process must die during (the armed fault point): it gets no answer.
fn doomed(app: &TestApp, method: &str, path: &str, body: &[u8]) {
    let result = ureq::request(method, &app.api(path))
        .timeout(Duration::from_secs(20))
        .set("Authorization", KEY)
        .set("Content-Type", "application/json")
        .send_bytes(body);
    match result {
        Err(ureq::Error::Transport(_)) => {}
        Ok(r) => panic!(
            "{method} {path} was answered {} : the fault point did not fire",
            r.status()
        ),
        Err(ureq::Error::Status(code, r)) => panic!(
            "{method} {path} was answered {code}: {}",
            r.into_string().unwrap_or_default()
        ),
    }
    assert!(app.wait_stderr("injected crash between two writes"), "{}", app.stderr());
}

fn instance_dir(app: &TestApp, event: &Value) -> PathBuf {
    let part = |name: &str| event[name].as_str().unwrap().to_string();
    app.root
        .join("storage")
        .join("org-a")
        .join("app-a")
        .join(part("conversationId"))
        .join(part("recorderId"))
        .join(part("instanceId"))
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn chat(text: &str) -> Value {
    json!({"timeStamp": "2024-01-01T10:00:00Z", "transcript": text, "userDisplayName": "User u1", "userId": "u1"})
}

fn add_transcript_body(event: &Value, lines: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "chatTranscriptList": lines,
        "conversationId": event["conversationId"],
        "instanceId": event["instanceId"],
        "recorderId": event["recorderId"],
    }))
    .unwrap()
}

/// Waits for a restarted node to be up (the kill happened inside a request).
fn restart_clean(app: &mut TestApp) {
    app.restart_with_env(&[]);
}

fn assert_not_reconciled(app: &TestApp) {
    assert!(
        !app.stderr().contains("reconciled"),
        "the command was repaired by boot's reconciliation, not redone whole:\n{}",
        app.stderr()
    );
}

#[test]
fn a_crash_between_the_writes_of_a_stop_leaves_no_half_stop() {
    for step in ["terminal_state_written", "composition_queued", "first_job_queued"] {
        let mut app = TestApp::spawn_uploading();
        app.restart_with_env(&[("RTC_RECORDER_FAULTS", &format!("command_step@stop {step}=error*1"))]);
        let event = app.start(&unique("call"), &unique("room"), true, true);
        let resp = app.post_json(
            "/recordings/chat/transcript/add",
            KEY,
            &serde_json::from_slice(&add_transcript_body(&event, vec![chat("hello")])).unwrap(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        doomed(&app, "POST", &format!("{}/stop", instance_path(&event)), b"");
        restart_clean(&mut app);
        // The restarted node finishes the stop: STOPPED, every artefact uploaded, the manifest
        // last, and the composition record there.
        let dir = instance_dir(&app, &event);
        let manifest = poll(
            Duration::from_secs(60),
            &format!("the manifest after a crash at {step}"),
            || read_json(&dir.join("recording.json")).filter(|m| m["state"] == "STOPPED"),
        );
        assert!(
            read_json(&dir.join("chat").join("transcript.json")).is_some(),
            "{step}: the transcript was not uploaded; manifest: {manifest}"
        );
        let instance = app.instance(&event);
        assert_eq!(instance["state"], "STOPPED", "{step}: {instance}");
        let composition = app.get(
            &format!("/compositions/{}", event["conversationId"].as_str().unwrap()),
            KEY,
        );
        assert_eq!(
            composition.status,
            200,
            "{step}: no composition: {}",
            composition.text()
        );
        assert_not_reconciled(&app);
    }
}

#[test]
fn a_crash_inside_a_transcript_add_after_stop_keeps_none_of_its_lines() {
    for step in ["lines_written", "count_written"] {
        let mut app = TestApp::spawn_uploading();
        let event = app.start(&unique("call"), &unique("room"), true, true);
        let before = app.post_json(
            "/recordings/chat/transcript/add",
            KEY,
            &serde_json::from_slice(&add_transcript_body(&event, vec![chat("acknowledged-1")])).unwrap(),
        );
        assert_eq!(before.status, 200, "{}", before.text());
        assert_eq!(app.stop(&event)["state"], "STOPPED");
        let transcript = instance_dir(&app, &event).join("chat").join("transcript.json");
        poll(Duration::from_secs(30), "the first transcript upload", || {
            read_json(&transcript)
        });

        app.restart_with_env(&[(
            "RTC_RECORDER_FAULTS",
            &format!("command_step@transcript_add {step}=error*1"),
        )]);
        doomed(
            &app,
            "POST",
            "/recordings/chat/transcript/add",
            &add_transcript_body(&event, vec![chat("never-acknowledged")]),
        );
        restart_clean(&mut app);
        let after = app.post_json(
            "/recordings/chat/transcript/add",
            KEY,
            &serde_json::from_slice(&add_transcript_body(&event, vec![chat("acknowledged-2")])).unwrap(),
        );
        assert_eq!(after.status, 200, "{}", after.text());
        let uploaded = poll(Duration::from_secs(30), "the transcript with the second line", || {
            read_json(&transcript).filter(|t| t.to_string().contains("acknowledged-2"))
        });
        let text = uploaded.to_string();
        assert!(text.contains("acknowledged-1"), "{step}: {text}");
        assert!(
            !text.contains("never-acknowledged"),
            "{step}: a line of a request that never committed was uploaded: {text}"
        );
        assert_not_reconciled(&app);
    }
}

fn cobrowse_body(event: &Value, sequence_id: i64, payload: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "conversationId": event["conversationId"],
        "instanceId": event["instanceId"],
        "recorderId": event["recorderId"],
        "event": {"sessionId": "s1", "sequenceId": sequence_id, "payload": payload, "timestamp": sequence_id},
    }))
    .unwrap()
}

#[test]
fn a_crash_inside_a_cobrowse_event_after_stop_keeps_none_of_it() {
    for step in ["event_written", "count_written"] {
        let mut app = TestApp::spawn_uploading();
        let event = app.start(&unique("call"), &unique("room"), true, true);
        let add = |app: &TestApp, seq: i64, payload: &str| {
            app.post_json(
                "/recordings/cobrowse/event",
                KEY,
                &serde_json::from_slice(&cobrowse_body(&event, seq, payload)).unwrap(),
            )
        };
        let first = add(&app, 1, "acknowledged-1");
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(app.stop(&event)["state"], "STOPPED");
        let session = instance_dir(&app, &event)
            .join("cobrowse")
            .join("s1")
            .join("events.json");
        poll(Duration::from_secs(30), "the first session upload", || {
            read_json(&session)
        });

        app.restart_with_env(&[(
            "RTC_RECORDER_FAULTS",
            &format!("command_step@cobrowse_event {step}=error*1"),
        )]);
        doomed(
            &app,
            "POST",
            "/recordings/cobrowse/event",
            &cobrowse_body(&event, 2, "never-acknowledged"),
        );
        restart_clean(&mut app);
        let after = add(&app, 3, "acknowledged-2");
        assert_eq!(after.status, 200, "{}", after.text());
        let uploaded = poll(Duration::from_secs(30), "the session with the second event", || {
            read_json(&session).filter(|t| t.to_string().contains("acknowledged-2"))
        });
        let text = uploaded.to_string();
        assert!(text.contains("acknowledged-1"), "{step}: {text}");
        assert!(
            !text.contains("never-acknowledged"),
            "{step}: an event of a request that never committed was uploaded: {text}"
        );
        assert_not_reconciled(&app);
    }
}
