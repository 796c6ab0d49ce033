//! Signed download URLs of co-browse sessions: issued with an API key and an allowed `referer`,
//! served without a key while the signature holds, refused when anything was changed or expired,
//! and never a way out of the session's folder.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::*;

pub struct Uploaded {
    pub conversation: String,
    pub ev: Value,
}

/// An org-a instance, stopped, with co-browse sessions `s1` (3 events) and `s2` uploaded.
pub fn uploaded_sessions(app: &TestApp, tag: &str) -> Uploaded {
    let c = conv(tag);
    let ev = app.start(KEY_A, APP_A, &c);
    for seq in [2, 1, 3] {
        app.add_event(
            KEY_A,
            &ev,
            "s1",
            seq,
            &format!("{{\"step\":{seq},\"html\":\"<div>{}</div>\"}}", "x".repeat(40)),
            1000 + seq,
        )
        .ok_json("RecordingDataEvent");
    }
    app.add_event(KEY_A, &ev, "s2", 1, "session two", 5)
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    app.wait_session_uploaded(KEY_A, &c, "s1");
    app.wait_session_uploaded(KEY_A, &c, "s2");
    Uploaded { conversation: c, ev }
}

/// The signed-URL request path of `session` of `ev`.
pub fn url_path(ev: &Value, session: &str) -> String {
    let s = |n: &str| ev[n].as_str().unwrap().to_string();
    format!(
        "{}/cobrowse/{session}/url/attachment?conversationId={}&id={}&instanceId={}",
        instance_path(ev),
        enc(&s("conversationId")),
        enc(&s("recorderId")),
        enc(&s("instanceId"))
    )
}

/// Asks for a signed URL with an allowed referer; checks and returns the `URLResourceMessage`.
pub fn signed_url(app: &TestApp, key: &str, ev: &Value, session: &str) -> Value {
    let resp = app.get_with_headers(
        &url_path(ev, session),
        &[
            ("Authorization", key),
            ("referer", "https://agent.example.com/desk/123"),
        ],
    );
    resp.ok_json("URLResourceMessage")
}

/// Replaces the value of query parameter `name` in `url` (raw text, other parameters untouched).
fn with_param(url: &str, name: &str, change: impl Fn(&str) -> String) -> String {
    let (base, query) = url.split_once('?').expect("signed URL has a query");
    let mut found = false;
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == name => {
                found = true;
                format!("{k}={}", change(v))
            }
            _ => kv.to_string(),
        })
        .collect();
    assert!(found, "{url} has no {name} parameter");
    format!("{base}?{}", parts.join("&"))
}

fn without_param(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap();
    let parts: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split('=').next() != Some(name))
        .collect();
    format!("{base}?{}", parts.join("&"))
}

/// Changes the last decimal digit of a value (keeps it well-formed, changes what it says).
fn bump_last_digit(v: &str) -> String {
    let mut chars: Vec<char> = v.chars().collect();
    let at = chars
        .iter()
        .rposition(|c| c.is_ascii_digit())
        .unwrap_or_else(|| panic!("{v:?} has no digit"));
    chars[at] = if chars[at] == '9' {
        '8'
    } else {
        ((chars[at] as u8) + 1) as char
    };
    chars.into_iter().collect()
}

fn flip_first_char(v: &str) -> String {
    let first = if v.starts_with('0') { '1' } else { '0' };
    format!("{first}{}", &v[1..])
}

#[test]
fn a_signed_url_serves_the_stored_session_without_an_api_key() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "signed");
    let ev = &up.ev;
    let before = chrono::Utc::now();
    let msg = signed_url(&app, KEY_A, ev, "s1");

    let url_text = msg["url"].as_str().unwrap();
    let url = url::Url::parse(url_text).unwrap_or_else(|e| panic!("url {url_text:?} is not absolute: {e}"));
    assert_eq!(url.scheme(), "http");
    assert_eq!(url.host_str(), Some("127.0.0.1"), "{url}");
    assert_eq!(url.port(), Some(app.port), "{url}");
    let s = |n: &str| ev[n].as_str().unwrap().to_string();
    assert_eq!(
        url.path(),
        format!(
            "{BASE_PATH}/recordings/attachment/cobrowse/{}/{}/{}/s1/events.json",
            s("conversationId"),
            s("recorderId"),
            s("instanceId")
        ),
        "{url}"
    );
    let params: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    for p in ["Date", "Expires", "Signature"] {
        assert!(
            params.get(p).is_some_and(|v| !v.is_empty()),
            "signed URL lacks {p}: {url}"
        );
    }
    let valid_until = assert_rfc3339(&msg["validUntil"], "validUntil");
    let expected = before + chrono::Duration::seconds(3600);
    assert!(
        (valid_until.signed_duration_since(expected)).num_seconds().abs() <= 30,
        "validUntil {valid_until} is not about url_ttl_secs (3600 s) from now ({expected})"
    );

    let stored = std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, ev, "s1")).unwrap();
    let resp = app.request("GET", url_text, &[], None);
    resp.assert_status(200);
    assert_eq!(resp.body, stored, "the download differs from the stored events.json");
    // Twice works too (not single-use), and a key does not change anything.
    let again = app.request("GET", url_text, &[("Authorization", KEY_A)], None);
    again.assert_status(200);
    assert_eq!(again.body, stored);
    // The second session has its own URL and content.
    let msg2 = signed_url(&app, KEY_A, ev, "s2");
    let resp2 = app.request("GET", msg2["url"].as_str().unwrap(), &[], None);
    resp2.assert_status(200);
    assert_eq!(
        resp2.body,
        std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, ev, "s2")).unwrap()
    );
    let _ = up.conversation;
}

#[test]
fn signed_downloads_honour_ranges() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "range");
    let url = signed_url(&app, KEY_A, &up.ev, "s1")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &up.ev, "s1")).unwrap();
    assert!(stored.len() > 20);

    let resp = app.request("GET", &url, &[("Range", "bytes=0-9")], None);
    resp.assert_status(206);
    assert_eq!(resp.body, &stored[..10]);
    let content_range = resp
        .header("content-range")
        .unwrap_or_else(|| panic!("206 without Content-Range: {}", resp.describe()));
    assert_eq!(content_range, format!("bytes 0-9/{}", stored.len()));

    let resp = app.request("GET", &url, &[("Range", "bytes=-5")], None);
    resp.assert_status(206);
    assert_eq!(resp.body, &stored[stored.len() - 5..]);

    let resp = app.request("GET", &url, &[("Range", "bytes=999999-")], None);
    resp.assert_error(416);
}

#[test]
fn tampered_signed_urls_are_403() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "tamper");
    let ev = &up.ev;
    let url = signed_url(&app, KEY_A, ev, "s1")["url"].as_str().unwrap().to_string();
    app.request("GET", &url, &[], None).assert_status(200);

    let s = |n: &str| ev[n].as_str().unwrap().to_string();
    let mut tampered = vec![
        ("Signature changed", with_param(&url, "Signature", flip_first_char)),
        ("Date changed", with_param(&url, "Date", bump_last_digit)),
        ("Expires changed", with_param(&url, "Expires", bump_last_digit)),
        (
            "other session, same signature",
            url.replacen("/s1/events.json", "/s2/events.json", 1),
        ),
    ];
    let other = app.start(KEY_A, APP_A, &conv("tamper-other"));
    tampered.push((
        "other instance, same signature",
        url.replacen(
            &format!("/{}/s1/", s("instanceId")),
            &format!("/{}/s1/", other["instanceId"].as_str().unwrap()),
            1,
        ),
    ));
    for (what, bad) in &tampered {
        assert_ne!(bad, &url, "{what}: the tampering did not change the URL");
        let resp = app.request("GET", bad, &[], None);
        assert_eq!(resp.status, 403, "{what}: {}", resp.describe());
        resp.assert_error(403);
        // An API key does not make a bad signature good.
        let resp = app.request("GET", bad, &[("Authorization", KEY_A)], None);
        assert_eq!(resp.status, 403, "{what} with a key: {}", resp.describe());
    }
    for p in ["Date", "Expires", "Signature"] {
        for (how, bad) in [
            ("without", without_param(&url, p)),
            ("with an empty", with_param(&url, p, |_| String::new())),
        ] {
            let resp = app.request("GET", &bad, &[], None);
            assert!(
                resp.status == 400 || resp.status == 403,
                "{how} {p}: {}",
                resp.describe()
            );
            resp.assert_error(resp.status);
        }
    }
    // The real URL still works.
    app.request("GET", &url, &[], None).assert_status(200);
}

#[test]
fn expired_signed_urls_are_403() {
    let app = TestApp::spawn_with("[signing]\nurl_ttl_secs = 1\n", &[]);
    let up = uploaded_sessions(&app, "expiry");
    let issued = Instant::now();
    let msg = signed_url(&app, KEY_A, &up.ev, "s1");
    let valid_until = assert_rfc3339(&msg["validUntil"], "validUntil");
    let lifetime = valid_until.signed_duration_since(chrono::Utc::now()).num_milliseconds();
    assert!(
        (-500..=1500).contains(&lifetime),
        "validUntil {valid_until} is not about 1 s away"
    );
    let url = msg["url"].as_str().unwrap().to_string();
    let first = app.request("GET", &url, &[], None);
    if issued.elapsed() < Duration::from_millis(700) {
        assert_eq!(first.status, 200, "fresh URL refused: {}", first.describe());
    }
    std::thread::sleep(Duration::from_millis(2500));
    let resp = app.request("GET", &url, &[], None);
    assert_eq!(resp.status, 403, "expired URL served: {}", resp.describe());
    resp.assert_error(403);
    // A new URL works again.
    let fresh = signed_url(&app, KEY_A, &up.ev, "s1");
    let resp = app.request("GET", fresh["url"].as_str().unwrap(), &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
}

#[test]
fn signed_url_requests_check_the_referer_origin() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "referer");
    let path = url_path(&up.ev, "s1");

    let resp = app.get_with_headers(&path, &[("Authorization", KEY_A)]);
    resp.assert_error_naming(400, "referer");

    for allowed in [
        "https://agent.example.com/",
        "https://agent.example.com/desk?x=1",
        "https://agent.example.com",
        "https://AGENT.example.com/desk",
        "https://agent.example.com:443/desk",
        "https://user@agent.example.com/",
    ] {
        let resp = app.get_with_headers(&path, &[("Authorization", KEY_A), ("referer", allowed)]);
        resp.ok_json("URLResourceMessage");
    }
    for refused in [
        "https://evil.example.com/",
        "https://agent.example.com.evil.com/",
        "https://agent.example.com:8443/",
        "http://agent.example.com/",
        "https://evil.com/https://agent.example.com/",
        "https://sub.agent.example.com/",
        "https://agent.example.com@evil.example.com/",
        "null",
    ] {
        let resp = app.get_with_headers(&path, &[("Authorization", KEY_A), ("referer", refused)]);
        if refused == "null" {
            // Not a URL at all: refused either as bad input or as a foreign origin.
            assert!(
                resp.status == 400 || resp.status == 403,
                "referer {refused}: {}",
                resp.describe()
            );
            continue;
        }
        assert_eq!(resp.status, 403, "referer {refused}: {}", resp.describe());
        resp.assert_error(403);
    }
    let resp = app.get_with_headers(&path, &[("Authorization", KEY_A), ("referer", "not a url")]);
    assert!(resp.status == 400 || resp.status == 403, "{}", resp.describe());
    resp.assert_error(resp.status);

    // app-b allows any origin.
    let c = conv("referer-b");
    let ev_b = app.start(KEY_B, APP_B, &c);
    app.add_event(KEY_B, &ev_b, "sb", 1, "b", 1)
        .ok_json("RecordingDataEvent");
    app.stop(KEY_B, &ev_b);
    app.wait_session_uploaded(KEY_B, &c, "sb");
    let resp = app.get_with_headers(
        &url_path(&ev_b, "sb"),
        &[("Authorization", KEY_B), ("referer", "https://anyone.example.org/page")],
    );
    let msg = resp.ok_json("URLResourceMessage");
    let download = app.request("GET", msg["url"].as_str().unwrap(), &[], None);
    download.assert_status(200);
    assert_eq!(
        download.body,
        std::fs::read(app.cobrowse_file(&app.storage_b(), ORG_B, APP_B, &ev_b, "sb")).unwrap()
    );
}

#[test]
fn signed_url_requests_for_unknown_sessions_are_404_and_need_their_query() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "url404");
    let referer = ("referer", "https://agent.example.com/");
    let auth = ("Authorization", KEY_A);
    app.get_with_headers(&url_path(&up.ev, "no-such-session"), &[auth, referer])
        .assert_error(404);
    let mut missing_instance = up.ev.clone();
    missing_instance["instanceId"] = "no-such-instance".into();
    app.get_with_headers(&url_path(&missing_instance, "s1"), &[auth, referer])
        .assert_error(404);

    let full = url_path(&up.ev, "s1");
    let (path, query) = full.split_once('?').unwrap();
    for param in ["conversationId", "id", "instanceId"] {
        let rest: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.starts_with(&format!("{param}=")))
            .collect();
        let resp = app.get_with_headers(&format!("{path}?{}", rest.join("&")), &[auth, referer]);
        resp.assert_error_naming(400, param);
        // A query that names another instance than the path is refused too.
        let other: Vec<String> = query
            .split('&')
            .map(|kv| {
                if kv.starts_with(&format!("{param}=")) {
                    format!("{param}=someone-else")
                } else {
                    kv.to_string()
                }
            })
            .collect();
        let resp = app.get_with_headers(&format!("{path}?{}", other.join("&")), &[auth, referer]);
        assert!(
            resp.status == 400 || resp.status == 404 || resp.status == 403,
            "{param} mismatch: {}",
            resp.describe()
        );
        resp.assert_error(resp.status);
    }
}

#[test]
fn signed_urls_use_the_configured_public_url() {
    let app = TestApp::spawn_with("", &[("RECORDER_PUBLIC_URL", "https://recorder.example.com")]);
    let up = uploaded_sessions(&app, "public-url");
    let msg = signed_url(&app, KEY_A, &up.ev, "s1");
    let url = url::Url::parse(msg["url"].as_str().unwrap()).unwrap();
    assert_eq!(
        url.origin().ascii_serialization(),
        "https://recorder.example.com",
        "{url}"
    );
    assert!(
        url.path()
            .starts_with(&format!("{BASE_PATH}/recordings/attachment/cobrowse/")),
        "{url}"
    );
    // A proxy in front forwards the same path and query to this node.
    let resp = app.request(
        "GET",
        &app.url(&format!("{}?{}", url.path(), url.query().unwrap())),
        &[],
        None,
    );
    resp.assert_status(200);
    assert_eq!(
        resp.body,
        std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &up.ev, "s1")).unwrap()
    );
}

#[test]
fn file_names_cannot_leave_the_session_folder() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "traversal");
    let ev = &up.ev;
    let url = signed_url(&app, KEY_A, ev, "s1")["url"].as_str().unwrap().to_string();
    let parsed = url::Url::parse(&url).unwrap();
    let query = parsed.query().unwrap().to_string();
    let session_dir = app
        .cobrowse_file(&app.storage_a(), ORG_A, APP_A, ev, "s1")
        .parent()
        .unwrap()
        .to_path_buf();
    // Files a traversal would reach: next to the session folder, in the instance folder, and
    // at the storage root.
    let sentinel = "SENTINEL-must-never-be-served";
    std::fs::write(session_dir.parent().unwrap().join("secret.json"), sentinel).unwrap();
    std::fs::write(
        session_dir.parent().unwrap().parent().unwrap().join("events.json"),
        sentinel,
    )
    .unwrap();
    std::fs::write(app.storage_a().join("secret.json"), sentinel).unwrap();

    let prefix = parsed.path().strip_suffix("/events.json").unwrap().to_string();
    let bad_names = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "..%2Fsecret.json",
        "%2e%2e%2fsecret.json",
        "%2F",
        "%2Fetc%2Fpasswd",
        "..%2F..%2Fetc%2Fpasswd",
        "..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "..%5Csecret.json",
        "a%5Cb",
        "events.json%00",
        ".",
    ];
    for name in bad_names {
        let target = format!("{prefix}/{name}?{query}");
        let resp = app.raw_request("GET", &target, &[], b"");
        assert!(
            !resp.text().contains(sentinel) && !resp.text().contains("root:"),
            "{name}: served a file outside: {}",
            resp.describe()
        );
        assert_eq!(resp.status, 400, "fileName {name}: {}", resp.describe());
        resp.assert_error(400);
    }
    // Raw backslashes: the HTTP parser may refuse them first; either way a 400.
    for name in ["a\\b", "..\\secret.json", "..\\..\\..\\etc\\passwd"] {
        let resp = app.raw_request("GET", &format!("{prefix}/{name}?{query}"), &[], b"");
        assert!(!resp.text().contains(sentinel), "{name}: {}", resp.describe());
        assert_eq!(resp.status, 400, "fileName {name}: {}", resp.describe());
    }
    // Traversal through the other segments is refused too (any 4xx but never the file).
    let s = |n: &str| ev[n].as_str().unwrap().to_string();
    let base = format!("{BASE_PATH}/recordings/attachment/cobrowse");
    for target in [
        format!(
            "{base}/{}/{}/{}/..%2F..%2F/events.json?{query}",
            s("conversationId"),
            s("recorderId"),
            s("instanceId")
        ),
        format!(
            "{base}/{}/{}/{}/%2e%2e/events.json?{query}",
            s("conversationId"),
            s("recorderId"),
            s("instanceId")
        ),
        format!(
            "{base}/{}/{}/{}/../events.json?{query}",
            s("conversationId"),
            s("recorderId"),
            s("instanceId")
        ),
        format!(
            "{base}/..%2F..%2F..%2F/{}/{}/s1/events.json?{query}",
            s("recorderId"),
            s("instanceId")
        ),
    ] {
        let resp = app.raw_request("GET", &target, &[], b"");
        assert!(!resp.text().contains(sentinel), "{target}: {}", resp.describe());
        assert!((400..500).contains(&resp.status), "{target}: {}", resp.describe());
    }
    // The genuine file is still served over the raw client, so the refusals above are real.
    let resp = app.raw_request("GET", &format!("{}?{query}", parsed.path()), &[], b"");
    resp.assert_status(200);
}

#[test]
fn ids_with_every_allowed_punctuation_work_end_to_end() {
    let app = TestApp::spawn();
    // Letters, digits and . _ - : @ + = ~ are valid in ids.
    let c = format!("c.1_2-3:4@5+6=7~8-{}", uuid::Uuid::new_v4().simple());
    let session = "s.1_2-3:4@5+6=7~8";
    let ev = app.start(KEY_A, APP_A, &c);
    assert_eq!(app.instance(KEY_A, &ev)["conversationId"], c.as_str());
    app.get(&format!("/recordings/{}/active", enc(&c)), KEY_A)
        .ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, session, 1, "special", 1)
        .ok_json("RecordingDataEvent");
    app.add_transcript(
        KEY_A,
        &ev,
        serde_json::json!([chat("2024-01-01T10:00:00Z", "special", "u:1@x")]),
    )
    .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    app.wait_session_uploaded(KEY_A, &c, session);
    app.wait_transcript_file(KEY_A, &ev, 1);
    let msg = signed_url(&app, KEY_A, &ev, session);
    let resp = app.request("GET", msg["url"].as_str().unwrap(), &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        resp.body,
        std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, session)).unwrap()
    );
}

#[test]
fn a_session_is_served_from_the_state_store_until_it_is_stored_then_from_storage() {
    let app = TestApp::spawn();
    let c = conv("not-yet");
    let ev = app.start(KEY_A, APP_A, &c);
    app.add_event(KEY_A, &ev, "s1", 1, "early", 1)
        .ok_json("RecordingDataEvent");
    let url = signed_url(&app, KEY_A, &ev, "s1")["url"].as_str().unwrap().to_string();
    // While live: the events so far, rendered as they will be stored.
    let early = app.request("GET", &url, &[], None);
    early.assert_status(200);
    let file: Value = serde_json::from_slice(&early.body).unwrap();
    assert_eq!(file["events"].as_array().map(Vec::len), Some(1), "{file}");
    app.add_event(KEY_A, &ev, "s1", 2, "later", 2)
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    app.wait_session_uploaded(KEY_A, &c, "s1");
    // The same URL now serves the stored file.
    let stored = std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s1")).unwrap();
    let late = app.request("GET", &url, &[], None);
    late.assert_status(200);
    assert_eq!(late.body, stored);
    let file: Value = serde_json::from_slice(&late.body).unwrap();
    assert_eq!(file["events"].as_array().map(Vec::len), Some(2), "{file}");
}

/// Right after a stop, before the settle time has let the session be rendered and uploaded,
/// what the API hands out must already exist: the co-browse URL serves the session's file (whole
/// and by Range, without a key) and the instance shows its `chatTranscript`. Fifty times, so a
/// window of a few milliseconds would be seen.
#[test]
fn right_after_stop_the_cobrowse_url_serves_the_file_and_the_instance_shows_its_transcript() {
    let app = TestApp::spawn();
    let mut served = Vec::new();
    for round in 0..50 {
        let c = conv(&format!("at-once-{round}"));
        let ev = app.start(KEY_A, APP_A, &c);
        for seq in [2, 1, 3] {
            app.add_event(
                KEY_A,
                &ev,
                "s1",
                seq,
                &format!("{{\"round\":{round},\"step\":{seq}}}"),
                1000 + seq,
            )
            .ok_json("RecordingDataEvent");
        }
        app.add_transcript(
            KEY_A,
            &ev,
            serde_json::json!([chat("2024-03-01T10:00:00Z", "hello", "agent-1")]),
        )
        .ok_json("RecordingDataEvent");
        app.stop(KEY_A, &ev);

        let instance = app.instance(KEY_A, &ev);
        assert_eq!(instance["state"], "STOPPED", "{instance}");
        let transcript = &instance["chatTranscript"];
        assert!(
            transcript["id"].as_str().is_some_and(|s| !s.is_empty()),
            "round {round}: a stopped instance with chat lines shows no chatTranscript id: {instance}"
        );
        assert_rfc3339(&transcript["created"], "chatTranscript.created");

        let url = signed_url(&app, KEY_A, &ev, "s1")["url"].as_str().unwrap().to_string();
        let whole = app.request("GET", &url, &[], None);
        assert_eq!(
            whole.status,
            200,
            "round {round}: a dead link right after stop: {}",
            whole.describe()
        );
        let file: Value = serde_json::from_slice(&whole.body)
            .unwrap_or_else(|e| panic!("round {round}: the served file is not JSON ({e}): {}", whole.text()));
        let seqs: Vec<i64> = file["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sequenceId"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2, 3], "round {round}: {file}");
        let part = app.request("GET", &url, &[("Range", "bytes=0-9")], None);
        assert_eq!(
            part.status,
            206,
            "round {round}: Range right after stop: {}",
            part.describe()
        );
        assert_eq!(
            part.body,
            &whole.body[..10],
            "round {round}: the range is not the file's first bytes"
        );
        served.push((c, ev, whole.body, transcript["id"].clone()));
    }
    // What was served at once is what the uploader stored (same bytes, same transcript id).
    for (c, ev, body, transcript_id) in served {
        app.wait_session_uploaded(KEY_A, &c, "s1");
        let stored = std::fs::read(app.cobrowse_file(&app.storage_a(), ORG_A, APP_A, &ev, "s1")).unwrap();
        assert_eq!(
            body, stored,
            "{c}: the file served before the upload differs from the stored one"
        );
        let (instance, _) = app.wait_transcript_file(KEY_A, &ev, 1);
        assert!(
            instance["chatTranscript"]["location"]
                .as_str()
                .is_some_and(|l| l.contains("chat/transcript.json")),
            "{instance}"
        );
        assert_eq!(
            instance["chatTranscript"]["id"], transcript_id,
            "the transcript's id changed when it was stored"
        );
    }
}

/// An application that encrypts: its co-browse session is served as the ciphertext it stores
/// (`events.json.age`), never rendered in the clear; asked for right after the stop, the URL
/// request waits for that upload and its URL works at once, whole and by Range, and the `age`
/// CLI with the customer's key gives back the events.
#[test]
fn an_encrypting_applications_session_url_serves_the_stored_ciphertext_right_after_stop() {
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("customer.key");
    let keygen = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen runs (scripts/test-setup.sh installs age)");
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    let public = std::fs::read_to_string(&identity)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("the key file names its public key");
    let app = TestApp::spawn_with(
        &format!("[organizations.org-a.applications.app-a.encryption]\npublic_key = \"{public}\"\n"),
        &[],
    );
    let c = conv("sealed-cobrowse");
    let ev = app.start(KEY_A, APP_A, &c);
    app.add_event(KEY_A, &ev, "s1", 1, "{\"card\":\"4111\"}", 1)
        .ok_json("RecordingDataEvent");
    // Live: nothing is stored yet and nothing is rendered in the clear.
    let live = app.get_with_headers(
        &url_path(&ev, "s1"),
        &[("Authorization", KEY_A), ("referer", "https://agent.example.com/")],
    );
    live.assert_error(404);
    app.stop(KEY_A, &ev);
    let url = signed_url(&app, KEY_A, &ev, "s1")["url"].as_str().unwrap().to_string();
    let whole = app.request("GET", &url, &[], None);
    assert_eq!(whole.status, 200, "{}", whole.describe());
    assert!(whole.body.starts_with(b"age-encryption.org/v1"), "served in the clear");
    let part = app.request("GET", &url, &[("Range", "bytes=0-9")], None);
    assert_eq!(part.status, 206, "{}", part.describe());
    assert_eq!(part.body, &whole.body[..10]);
    let sealed = keys.path().join("events.json.age");
    std::fs::write(&sealed, &whole.body).unwrap();
    let plain = keys.path().join("events.json");
    let status = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg(&plain)
        .arg(&sealed)
        .status()
        .expect("age runs");
    assert!(status.success(), "age could not decrypt the served file");
    let file: Value = serde_json::from_slice(&std::fs::read(&plain).unwrap()).unwrap();
    assert_eq!(file["events"][0]["payload"], "{\"card\":\"4111\"}", "{file}");
}
