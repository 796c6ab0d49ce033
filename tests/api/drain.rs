//! SIGTERM drains the node before it stops: it reports itself not ready, refuses new starts and
//! publishes with 503 (`field` "draining", `Retry-After`), goes on serving everything else (the
//! stops of its live instances, reads), and exits 0 as soon as nothing is live any more, or when
//! `ops.drain_timeout_secs` has passed, with what was live kept for the next start.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

fn assert_draining(resp: &Resp) {
    let body = resp.assert_error(503);
    assert_eq!(body["code"], "AT_CAPACITY", "{}", resp.describe());
    assert_eq!(body["field"], "draining", "{}", resp.describe());
    assert!(resp.header("retry-after").is_some(), "{}", resp.describe());
}

#[test]
fn a_draining_node_refuses_new_work_serves_stops_and_exits_once_nothing_is_live() {
    // A drain long enough that only the last stop can end it within the test's wait.
    let mut app = TestApp::spawn_with("", &[("RECORDER_OPS__DRAIN_TIMEOUT_SECS", "120")]);
    let first = app.start(KEY_A, APP_A, &conv("drain-1"));
    let second = app.start(KEY_A, APP_A, &conv("drain-2"));
    assert_eq!(app.get_root("/ready", KEY_A).status, 200);

    app.send_sigterm();
    let signalled = Instant::now();
    let ready = poll(Duration::from_secs(10), "/ready says draining", || {
        let resp = app.get_root("/ready", KEY_A);
        (resp.status == 503).then_some(resp)
    });
    assert!(ready.text().contains("draining"), "{}", ready.describe());
    // New work goes elsewhere.
    let late = conv("drain-late");
    assert_draining(&app.post_json(
        "/recordings/start",
        KEY_A,
        &json!({"applicationId": APP_A, "conferenceId": format!("conf-{late}"), "conversationId": late}),
    ));
    assert_draining(&publish_opus(&app, KEY_A, "rtp", &first, "late-publisher"));
    app.get(&format!("/recordings/{late}"), KEY_A).assert_error(404);
    let metrics = app.get_root("/metrics", KEY_ADMIN).text();
    assert!(metrics.contains("recorder_draining 1"), "{metrics}");
    // What is live is still served, and its stops end the drain.
    assert_eq!(app.instance(KEY_A, &first)["state"], "INITIALISED");
    app.stop(KEY_A, &first);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!app.has_exited(), "one instance is still live: the node drains on");
    app.stop(KEY_A, &second);
    let status = app.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit after the drain: {status:?}\n{}", app.stderr());
    assert!(
        signalled.elapsed() < Duration::from_secs(60),
        "the drain ended with the last stop, not at its timeout"
    );

    // Nothing acknowledged is lost; the node takes work again.
    app.restart();
    for event in [&first, &second] {
        assert_eq!(app.instance(KEY_A, event)["state"], "STOPPED");
    }
    assert_eq!(app.get_root("/ready", KEY_A).status, 200);
    app.start(KEY_A, APP_A, &late);
}

#[test]
fn at_the_drain_timeout_what_is_live_is_kept_for_the_next_start() {
    let mut app = TestApp::spawn_with("", &[("RECORDER_OPS__DRAIN_TIMEOUT_SECS", "1")]);
    let live = app.start(KEY_A, APP_A, &conv("drain-timeout"));
    let line = chat("2024-06-01T10:00:00Z", "before the drain", "u1");
    app.add_transcript(KEY_A, &live, json!([line]))
        .ok_json("RecordingDataEvent");
    let status = app.sigterm(Duration::from_secs(20));
    assert!(
        status.success(),
        "exit at the drain timeout: {status:?}\n{}",
        app.stderr()
    );
    assert!(app.stderr().contains("drain timeout"), "{}", app.stderr());
    app.restart();
    let instance = app.instance(KEY_A, &live);
    assert_eq!(instance["state"], "INITIALISED", "{instance:#}");
    app.stop(KEY_A, &live);
    let (_, file) = app.wait_transcript_file(KEY_A, &live, 1);
    assert!(file.to_string().contains("before the drain"), "{file}");
}
