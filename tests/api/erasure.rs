//! Erasure (GDPR): every artefact of an ended instance leaves the storage profile and the node,
//! the instance stays a tombstone (ids, states, times, never media), a live instance is refused,
//! and an erasure cut by a crash finishes after the restart.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// An ended instance with a transcript, a co-browse session and its manifest in storage.
fn recorded(app: &TestApp, conversation: &str) -> Value {
    let ev = app.start(KEY_A, APP_A, conversation);
    app.add_transcript(
        KEY_A,
        &ev,
        json!([chat("2024-05-01T10:00:00Z", "card 4111 1111 1111 1111", "customer")]),
    )
    .ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, "s1", 1, "{\"type\":3}", 1_714_557_600_000)
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    app.wait_transcript_file(KEY_A, &ev, 1);
    app.wait_session_uploaded(KEY_A, conversation, "s1");
    ev
}

fn wait_erased(app: &TestApp, ev: &Value) -> Value {
    poll(Duration::from_secs(30), "the erasure done", || {
        let instance = app.instance(KEY_A, ev);
        instance["erasure"]["erased"].is_string().then_some(instance)
    })
}

#[test]
fn an_erased_conversation_leaves_nothing_but_tombstones() {
    let app = TestApp::spawn();
    let c = conv("erase");
    // A live instance is not erased.
    let live = app.start(KEY_A, APP_A, &c);
    app.request(
        "DELETE",
        &app.api(&format!("/recordings/{c}")),
        &[("Authorization", KEY_A)],
        None,
    )
    .assert_error(409);
    app.stop(KEY_A, &live);
    let ev = recorded(&app, &c);
    let prefix = app.storage_a().join(key_prefix(&ev, ORG_A, APP_A));
    assert!(!files_under(&prefix).is_empty(), "artefacts in storage before");
    // Another organization's key finds nothing to erase.
    app.request(
        "DELETE",
        &app.api(&format!("/recordings/{c}")),
        &[("Authorization", KEY_B)],
        None,
    )
    .assert_error(404);

    let resp = app.request(
        "DELETE",
        &app.api(&format!("/recordings/{c}")),
        &[("Authorization", KEY_A)],
        None,
    );
    assert_eq!(resp.status, 202, "{}", resp.describe());
    let accepted = resp.json();
    assert_eq!(accepted["instances"].as_array().map(Vec::len), Some(2), "{accepted:#}");
    assert!(
        accepted["instances"][0]["erasure"]["requested"].is_string(),
        "{accepted:#}"
    );

    let erased = wait_erased(&app, &ev);
    wait_erased(&app, &live);
    // Nothing of it is left in storage, nor a transcript or session in its record.
    let left = files_under(&prefix);
    assert!(left.is_empty(), "left in storage: {left:?}");
    assert!(erased.get("chatTranscript").is_none(), "{erased:#}");
    assert_eq!(erased["state"], "STOPPED", "a tombstone keeps its state: {erased:#}");
    // The listing shows the tombstones with their erasure, never media.
    let listing = app.get(&format!("/recordings/{c}"), KEY_A).json();
    for recording in listing["recordings"].as_array().unwrap() {
        assert!(recording["erasure"]["erased"].is_string(), "{listing:#}");
    }
    assert!(listing.get("chatTranscript").is_none(), "{listing:#}");
    let sessions = app.get(&format!("/recordings/{c}/cobrowse"), KEY_A).json();
    assert_eq!(
        sessions["cobrowseSessions"].as_array().map(Vec::len).unwrap_or(0),
        0,
        "{sessions:#}"
    );
    let (r, i) = (ev["recorderId"].as_str().unwrap(), ev["instanceId"].as_str().unwrap());
    app.get_with_headers(
        &format!(
            "{}/cobrowse/s1/url/attachment?conversationId={c}&id={r}&instanceId={i}",
            instance_path(&ev)
        ),
        &[
            ("Authorization", KEY_A),
            ("referer", &format!("{ALLOWED_ORIGIN}/agent")),
        ],
    )
    .assert_error(404);
    // Erasing again changes nothing.
    let again = app.request(
        "DELETE",
        &app.api(&format!("/recordings/{c}")),
        &[("Authorization", KEY_A)],
        None,
    );
    assert_eq!(again.status, 202, "{}", again.describe());
    let again = again.json();
    let same = again["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instanceId"] == ev["instanceId"])
        .unwrap_or_else(|| panic!("{again:#}"));
    assert_eq!(same["erasure"]["erased"], erased["erasure"]["erased"], "{again:#}");
}

#[test]
fn one_instance_is_erased_and_the_other_kept() {
    let app = TestApp::spawn();
    let c = conv("erase-one");
    let first = recorded(&app, &c);
    let second = recorded(&app, &c);
    let resp = app.request(
        "DELETE",
        &app.api(&instance_path(&first)),
        &[("Authorization", KEY_A)],
        None,
    );
    assert_eq!(resp.status, 202, "{}", resp.describe());
    wait_erased(&app, &first);
    assert!(files_under(&app.storage_a().join(key_prefix(&first, ORG_A, APP_A))).is_empty());
    let kept = app.instance(KEY_A, &second);
    assert!(kept.get("erasure").is_none(), "{kept:#}");
    assert!(kept["chatTranscript"].is_object(), "{kept:#}");
    assert!(app.transcript_file(&second).is_file());
}

#[test]
fn an_erasure_cut_by_a_crash_finishes_after_the_restart() {
    let mut app = TestApp::spawn();
    let c = conv("erase-crash");
    let ev = recorded(&app, &c);
    let instance_id = ev["instanceId"].as_str().unwrap().to_string();
    app.restart_with_env(&[("RTC_RECORDER_FAULTS", &format!("erase_step@{instance_id}=abort*1"))]);
    // The erasure job may reach the fault (and end the process) before the 202 is written: then
    // there is no answer, and the restart below shows the request had been committed.
    match app.try_request(
        "DELETE",
        &app.api(&format!("/recordings/{c}")),
        &[("Authorization", KEY_A)],
        None,
    ) {
        Ok(resp) => assert_eq!(resp.status, 202, "{}", resp.describe()),
        Err(error) => poll(
            Duration::from_secs(10),
            &format!("the fault that ended the process before it answered ({error})"),
            || app.stderr().contains("point=\"erase_step\"").then_some(()),
        ),
    }
    // The process dies after the first object of the erasure.
    poll(Duration::from_secs(30), "the process ended at the fault", || {
        app.has_exited().then_some(())
    });
    app.restart_with_env(&[]);
    let erased = wait_erased(&app, &ev);
    assert!(files_under(&app.storage_a().join(key_prefix(&ev, ORG_A, APP_A))).is_empty());
    assert!(erased["erasure"]["requested"].is_string(), "{erased:#}");
}
