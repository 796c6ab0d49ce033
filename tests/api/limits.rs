//! Tenant bounds: each configurable limit refuses the request beyond it with 429, code
//! LIMIT_EXCEEDED and `field` naming the limit, loses nothing already accepted, and frees up
//! when what it counts ends. Other organizations are not affected.

use serde_json::json;

use crate::helpers::*;

/// Asserts a 429 naming `limit` (`limits.<name>`).
fn assert_limit(resp: &Resp, limit: &str) {
    let body = resp.assert_error(429);
    assert_eq!(body["code"], "LIMIT_EXCEEDED", "{}", resp.describe());
    assert_eq!(body["field"], limit, "{}", resp.describe());
    assert!(body["message"].as_str().unwrap().contains(limit), "{}", resp.describe());
}

fn start_with(app: &TestApp, key: &str, application: &str, c: &str) -> Resp {
    app.post_json(
        "/recordings/start",
        key,
        &json!({"applicationId": application, "conferenceId": format!("conf-{c}"), "conversationId": c}),
    )
}

fn publish(app: &TestApp, key: &str, event: &serde_json::Value, user: &str) -> Resp {
    publish_opus(app, key, "rtp", event, user)
}

#[test]
fn live_instances_per_organization_are_bounded() {
    let app = TestApp::spawn_with("[limits]\nmax_live_instances_per_organization = 2\n", &[]);
    let first = app.start(KEY_A, APP_A, &conv("live-1"));
    app.start(KEY_LIMITED, APP_A2, &conv("live-2"));
    let third = conv("live-3");
    assert_limit(
        &start_with(&app, KEY_A, APP_A, &third),
        "limits.max_live_instances_per_organization",
    );
    // Nothing was created for the refused start.
    app.get(&format!("/recordings/{third}"), KEY_A).assert_error(404);
    // Another organization has its own budget.
    app.start(KEY_B, APP_B, &conv("live-b"));
    // A stopped instance frees its place.
    app.stop(KEY_A, &first);
    start_with(&app, KEY_A, APP_A, &third).ok_json("RecordingDataEvent");
}

#[test]
fn streams_per_instance_are_bounded_and_a_returning_publisher_keeps_its_stream() {
    let app = TestApp::spawn_with("[limits]\nmax_streams_per_instance = 2\n", &[]);
    let ev = app.start(KEY_A, APP_A, &conv("streams"));
    publish(&app, KEY_A, &ev, "u1").assert_status(201);
    publish(&app, KEY_A, &ev, "u2").assert_status(201);
    assert_limit(&publish(&app, KEY_A, &ev, "u3"), "limits.max_streams_per_instance");
    // u1 publishing again continues its own stream: no new one, so no limit.
    publish(&app, KEY_A, &ev, "u1").assert_status(201);
    let msg = app.instance(KEY_A, &ev);
    let users: Vec<_> = msg["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["userId"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(users.len(), 2, "{msg}");
}

#[test]
fn plain_rtp_sessions_per_organization_are_bounded_and_freed_by_delete() {
    let app = TestApp::spawn_with("[limits]\nmax_rtp_sessions_per_organization = 2\n", &[]);
    let (one, two) = (
        app.start(KEY_A, APP_A, &conv("rtp-1")),
        app.start(KEY_A, APP_A, &conv("rtp-2")),
    );
    let first = publish(&app, KEY_A, &one, "u1");
    first.assert_status(201);
    publish(&app, KEY_A, &two, "u1").assert_status(201);
    assert_limit(
        &publish(&app, KEY_A, &two, "u2"),
        "limits.max_rtp_sessions_per_organization",
    );
    // Another organization is not affected.
    let b = app.start(KEY_B, APP_B, &conv("rtp-b"));
    publish(&app, KEY_B, &b, "u1").assert_status(201);
    // Ending a session gives its place back once its receive threads have ended.
    let location = first.header("location").unwrap().to_string();
    app.request("DELETE", &app.url(&location), &[("Authorization", KEY_A)], None)
        .assert_status(200);
    let published = |event: &serde_json::Value, user: &str| {
        poll(std::time::Duration::from_secs(10), "a freed session place", || {
            let resp = publish(&app, KEY_A, event, user);
            if resp.status == 429 {
                return None;
            }
            resp.assert_status(201);
            Some(())
        })
    };
    published(&two, "u2");
    assert_limit(
        &publish(&app, KEY_A, &one, "u9"),
        "limits.max_rtp_sessions_per_organization",
    );
    // So does stopping an instance with live sessions.
    app.stop(KEY_A, &two);
    published(&one, "u3");
}

#[test]
fn transcript_lines_per_instance_are_bounded_before_and_after_stop_and_nothing_is_half_added() {
    let app = TestApp::spawn_with("[limits]\nmax_transcript_entries_per_instance = 3\n", &[]);
    let ev = app.start(KEY_A, APP_A, &conv("chat-cap"));
    let line = |text: &str| chat("2024-01-01T10:00:00Z", text, "u1");
    app.add_transcript(KEY_A, &ev, json!([line("1"), line("2")]))
        .ok_json("RecordingDataEvent");
    assert_limit(
        &app.add_transcript(KEY_A, &ev, json!([line("3"), line("4")])),
        "limits.max_transcript_entries_per_instance",
    );
    app.add_transcript(KEY_A, &ev, json!([line("3")]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    assert_limit(
        &app.add_transcript(KEY_A, &ev, json!([line("5")])),
        "limits.max_transcript_entries_per_instance",
    );
    let (_, file) = app.wait_transcript_file(KEY_A, &ev, 3);
    let texts: Vec<_> = file
        .as_array()
        .or_else(|| file["chatTranscriptList"].as_array())
        .or_else(|| file["entries"].as_array())
        .unwrap_or_else(|| panic!("no lines in {file}"))
        .iter()
        .map(|l| l.to_string())
        .collect();
    assert_eq!(texts.len(), 3, "{file}");
    assert!(
        !file.to_string().contains("\"5\"") && !file.to_string().contains("\"4\""),
        "{file}"
    );
}

#[test]
fn cobrowse_events_and_sessions_per_instance_are_bounded() {
    let app = TestApp::spawn_with(
        "[limits]\nmax_cobrowse_events_per_instance = 3\nmax_cobrowse_sessions_per_instance = 2\n",
        &[],
    );
    let ev = app.start(KEY_A, APP_A, &conv("cobrowse-cap"));
    app.add_event(KEY_A, &ev, "s1", 1, "{}", 1)
        .ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, "s2", 1, "{}", 1)
        .ok_json("RecordingDataEvent");
    assert_limit(
        &app.add_event(KEY_A, &ev, "s3", 1, "{}", 1),
        "limits.max_cobrowse_sessions_per_instance",
    );
    app.add_event(KEY_A, &ev, "s1", 2, "{}", 2)
        .ok_json("RecordingDataEvent");
    assert_limit(
        &app.add_event(KEY_A, &ev, "s1", 3, "{}", 3),
        "limits.max_cobrowse_events_per_instance",
    );
    app.stop(KEY_A, &ev);
    assert_limit(
        &app.add_event(KEY_A, &ev, "s2", 2, "{}", 2),
        "limits.max_cobrowse_events_per_instance",
    );
}

#[test]
fn storage_verifications_are_rate_limited_per_organization_with_retry_after() {
    let app = TestApp::spawn_with("[limits]\nmax_verify_per_minute = 2\n", &[]);
    for _ in 0..2 {
        app.post_empty("/storageproviders/app-a/verify", KEY_A)
            .ok_json("StorageVerificationStatusMessage");
    }
    let refused = app.post_empty("/storageproviders/app-a2/verify", KEY_A);
    assert_limit(&refused, "limits.max_verify_per_minute");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {}", refused.describe()));
    assert!((1..=60).contains(&retry), "{}", refused.describe());
    // Another organization has its own budget.
    app.post_empty("/storageproviders/app-b/verify", KEY_B)
        .ok_json("StorageVerificationStatusMessage");
}

#[test]
fn a_limit_of_zero_is_refused_at_start_up_naming_it() {
    let (status, _out, err) = run_config_to_exit(
        "[limits]\nmax_streams_per_instance = 0\n",
        &[],
        std::time::Duration::from_secs(30),
    );
    assert!(status.is_some_and(|s| !s.success()), "{err}");
    assert!(err.contains("limits.max_streams_per_instance"), "{err}");
}

/// Sends only the head of a POST that announces `content_length` bytes, and reads the answer.
fn post_head_only(app: &TestApp, path: &str, authorization: Option<&str>, content_length: usize) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    // Bounds the test if the server waited for the body (the behaviour this test rules out).
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let auth = authorization
        .map(|k| format!("Authorization: {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {BASE_PATH}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(b"{\"applicationId\":").unwrap();
    let mut answer = [0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[test]
fn bodies_are_read_only_after_authentication_and_only_up_to_the_limit() {
    let app = TestApp::spawn();
    // No key: refused from the head alone, without waiting for (or buffering) the body.
    for path in [
        "/recordings/start",
        "/recordings/chat/transcript/add",
        "/recordings/cobrowse/event",
    ] {
        let answer = post_head_only(&app, path, None, 900_000);
        assert!(answer.starts_with("HTTP/1.1 401"), "{path}: {answer:?}");
    }
    let answer = post_head_only(
        &app,
        "/media/rtp/some-conference?userId=u1",
        Some("Bearer nope"),
        900_000,
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer:?}");
    // A key, but a body announced beyond limits.max_body_bytes: 413 before it is read.
    let answer = post_head_only(&app, "/recordings/start", Some(KEY_A), 5 << 20);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("\"field\":\"body\""), "{answer:?}");
    // The service goes on serving.
    app.start(KEY_A, APP_A, &conv("after-heads"));
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408_and_the_connection_is_not_held() {
    use std::io::{Read, Write};
    let app = TestApp::spawn_with("[limits]\nbody_timeout_secs = 1\n", &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    // Bounds the test if the server kept waiting (the behaviour this test rules out).
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST {BASE_PATH}/recordings/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: {KEY_A}\r\nContent-Length: 200\r\n\r\n{{\"applicationId\":"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = [0u8; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        answer.contains("REQUEST_TIMEOUT") && answer.contains("limits.body_timeout_secs"),
        "{answer:?}"
    );
    // Nothing was created, and the service goes on.
    app.start(KEY_A, APP_A, &conv("after-slow-body"));
}
