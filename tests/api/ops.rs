//! Ops endpoints (health, readiness, metrics, actor tree), storage verification, compositions
//! and unknown routes.

use serde_json::Value;

use crate::helpers::*;

#[test]
fn health_and_ready_answer_200_without_a_key() {
    let app = TestApp::spawn();
    app.get_root("/health", NO_KEY).assert_status(200);
    // Ready once the background check has seen every storage profile (a probe polls).
    let ready = poll(std::time::Duration::from_secs(10), "/ready to answer 200", || {
        let resp = app.get_root("/ready", NO_KEY);
        (resp.status == 200).then_some(resp)
    });
    let body = ready.json();
    assert_eq!(body["status"], "READY", "{body}");
    // org-a's two applications, org-b's and the embedded default's.
    assert_eq!(body["storageProfiles"]["total"], 4, "{body}");
    assert_eq!(body["storageProfiles"]["reachable"], 4, "{body}");
}

/// The value of the sample `name{labels}` in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>().ok())
    })?
}

#[test]
fn metrics_need_the_admin_scope_and_count_instances_by_state() {
    let app = TestApp::spawn();
    app.get_root("/metrics", NO_KEY).assert_error(401);
    app.get_root("/metrics", "not-a-key").assert_error(401);
    app.get_root("/metrics", KEY_A).assert_error(403);
    app.get_root("/metrics", KEY_NOSCOPE).assert_error(403);

    let initialised = r#"recorder_instances{state="INITIALISED"}"#;
    let stopped = r#"recorder_instances{state="STOPPED"}"#;
    let read = |key: &str| {
        let resp = app.get_root("/metrics", key);
        resp.assert_status(200);
        let text = resp.text();
        let i = sample(&text, initialised).unwrap_or_else(|| panic!("no {initialised} sample in:\n{text}"));
        let s = sample(&text, stopped).unwrap_or_else(|| panic!("no {stopped} sample in:\n{text}"));
        (i, s)
    };
    let (i0, s0) = read(KEY_ADMIN);
    let ev = app.start(KEY_A, APP_A, &conv("metrics"));
    app.start(KEY_B, APP_B, &conv("metrics-b"));
    let (i1, s1) = read(KEY_ADMIN);
    assert_eq!((i1, s1), (i0 + 2.0, s0), "two starts");
    app.stop(KEY_A, &ev);
    let (i2, s2) = read(&format!("Bearer {KEY_ADMIN}"));
    assert_eq!((i2, s2), (i0 + 1.0, s0 + 1.0), "one stop");
    // The admin-only key is enough for metrics.
    read(KEY_OPS_ONLY);
}

#[test]
fn metrics_can_be_made_public() {
    let app = TestApp::spawn_with("[ops]\npublic_metrics = true\n", &[]);
    let resp = app.get_root("/metrics", NO_KEY);
    resp.assert_status(200);
    assert!(
        resp.text().contains("recorder_instances{state=\"INITIALISED\"}"),
        "{}",
        resp.describe()
    );
}

fn check_node(node: &Value, path: &str) {
    for field in ["kind", "id", "state"] {
        assert!(node[field].is_string(), "{path}: {field} is not a string: {node}");
    }
    for field in ["mailboxDepth", "restarts"] {
        assert!(node[field].is_u64(), "{path}: {field} is not a count: {node}");
    }
    assert!(node["counters"].is_object(), "{path}: counters: {node}");
    let children = node["children"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: children is not an array: {node}"));
    for (i, child) in children.iter().enumerate() {
        check_node(child, &format!("{path}.children[{i}]"));
    }
}

#[test]
fn debug_actors_shows_the_live_tree_to_admins_only() {
    let app = TestApp::spawn();
    let ev = app.start(KEY_A, APP_A, &conv("tree"));
    app.get("/debug/actors", NO_KEY).assert_error(401);
    app.get("/debug/actors", KEY_A).assert_error(403);
    app.get("/debug/actors", KEY_B).assert_error(403);

    let resp = app.get("/debug/actors", KEY_ADMIN);
    resp.assert_status(200);
    let tree = resp.json();
    check_node(&tree, "$");
    assert_eq!(tree["kind"], "Registry", "{tree:#}");
    let children = tree["children"].as_array().unwrap();
    let conversations: Vec<&Value> = children.iter().filter(|c| c["kind"] == "Conversation").collect();
    assert_eq!(conversations.len(), 1, "one live conversation: {tree:#}");
    let recorders = conversations[0]["children"].as_array().unwrap();
    assert!(
        recorders
            .iter()
            .any(|r| r["kind"] == "Recorder" && r["id"] == ev["instanceId"] && r["state"] == "INITIALISED"),
        "no Recorder {} in INITIALISED under the conversation: {tree:#}",
        ev["instanceId"]
    );
    assert!(
        children.iter().any(|c| c["kind"] == "Uploader"),
        "no Uploader: {tree:#}"
    );

    // Once stopped, the conversation leaves the live tree.
    app.stop(KEY_A, &ev);
    let tree = poll(
        std::time::Duration::from_secs(5),
        "the stopped conversation to leave the tree",
        || {
            let tree = app.get("/debug/actors", KEY_ADMIN).json();
            let live = tree["children"]
                .as_array()?
                .iter()
                .filter(|c| c["kind"] == "Conversation")
                .count();
            (live == 0).then_some(tree)
        },
    );
    check_node(&tree, "$");
}

#[test]
fn compositions_are_404_until_an_instance_stops_and_stay_in_their_organization() {
    let app = TestApp::spawn();
    let c = conv("composition");
    let ev = app.start(KEY_A, APP_A, &c);
    app.get(&format!("/compositions/{c}"), NO_KEY).assert_error(401);
    app.get(&format!("/compositions/{c}"), KEY_A).assert_error(404);
    app.get("/compositions/unknown", KEY_A).assert_error(404);
    app.stop(KEY_A, &ev);
    // Stopped with no media: the composition is FAILED with the stop itself (nothing to
    // compose), without a compositor run and without touching the recording.
    let failed = app
        .get(&format!("/compositions/{c}"), KEY_A)
        .ok_json("RecordingDataMessage");
    assert_eq!(failed["conversationId"], c.as_str());
    assert_eq!(failed["instanceId"], ev["instanceId"]);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    assert!(failed["error"]["message"].as_str().is_some(), "{failed}");
    assert_eq!(
        failed["streams"][0]["tracks"].as_array().map(Vec::len),
        Some(1),
        "{failed}"
    );
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no media")),
        "{failed}"
    );
    assert_eq!(app.instance(KEY_A, &ev)["state"], "STOPPED");
    app.get(&format!("/compositions/{c}"), KEY_B).assert_error(404);
    // The compositor is node-wide: the operators' scope sees it.
    let tree = app.get("/debug/actors", KEY_OPS).json();
    let compositor = tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["kind"] == "Compositor"))
        .unwrap_or_else(|| panic!("no Compositor: {tree:#}"));
    assert_eq!(compositor["counters"]["num_failed"], 0, "{compositor:#}");
    assert_eq!(compositor["counters"]["num_running"], 0, "{compositor:#}");
    assert_eq!(compositor["counters"]["num_queued"], 0, "{compositor:#}");
}

#[test]
fn with_composition_disabled_nothing_is_composed() {
    let app = TestApp::spawn_with("[composition]\nenabled = false\n", &[]);
    let c = conv("no-composition");
    let ev = app.start(KEY_A, APP_A, &c);
    app.stop(KEY_A, &ev);
    app.get(&format!("/compositions/{c}"), KEY_A).assert_error(404);
}

#[test]
fn storage_verification_passes_for_a_healthy_profile() {
    let app = TestApp::spawn();
    let resp = app.post_empty("/storageproviders/app-a/verify", KEY_A);
    let report = resp.ok_json("StorageVerificationStatusMessage");
    for check in [
        "bucketTestResult",
        "writeTestResult",
        "readTestResult",
        "modifyTestResult",
        "deleteTestResult",
    ] {
        assert_eq!(report[check]["passed"], true, "{check}: {report:#}");
        assert!(
            report[check]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{check} without a message: {report:#}"
        );
    }
    // The probe cleaned up after itself: no object files left in the profile.
    let mut leftovers = Vec::new();
    let mut stack = vec![app.storage_a()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                leftovers.push(entry.path());
            }
        }
    }
    assert!(leftovers.is_empty(), "verify left files behind: {leftovers:?}");

    app.post_empty("/storageproviders/no-such-app/verify", KEY_A)
        .assert_error(404);
    app.post_empty("/storageproviders/app-b/verify", KEY_A)
        .assert_error(404);
    app.post_empty("/storageproviders/app-b/verify", KEY_B)
        .ok_json("StorageVerificationStatusMessage");
}

#[test]
fn storage_verification_reports_a_broken_profile() {
    let app = TestApp::spawn_with(
        r#"
[organizations.org-a.applications.app-broken]
allowed_origins = ["*"]
[organizations.org-a.applications.app-broken.storage]
provider = "LOCAL"
path = "{tmp}/storage-broken"
"#,
        &[],
    );
    let broken = app.root.join("storage-broken");
    // The service may create the directory at start; break it afterwards: a file in its place.
    let _ = std::fs::remove_dir_all(&broken);
    std::fs::write(&broken, "not a directory").unwrap();

    let report = app
        .post_empty("/storageproviders/app-broken/verify", KEY_A)
        .ok_json("StorageVerificationStatusMessage");
    assert_eq!(report["bucketTestResult"]["passed"], false, "{report:#}");
    assert!(
        report["bucketTestResult"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{report:#}"
    );
    for check in [
        "writeTestResult",
        "readTestResult",
        "modifyTestResult",
        "deleteTestResult",
    ] {
        assert!(report[check]["passed"].is_boolean(), "{check} missing: {report:#}");
        assert_eq!(
            report[check]["passed"], false,
            "{check} cannot pass without a bucket: {report:#}"
        );
    }
    // Removing it entirely is reported too.
    std::fs::remove_file(&broken).unwrap();
    let report = app
        .post_empty("/storageproviders/app-broken/verify", KEY_A)
        .ok_json("StorageVerificationStatusMessage");
    assert_eq!(report["bucketTestResult"]["passed"], false, "{report:#}");
    // Other applications are unaffected.
    let healthy = app
        .post_empty("/storageproviders/app-a/verify", KEY_A)
        .ok_json("StorageVerificationStatusMessage");
    assert_eq!(healthy["bucketTestResult"]["passed"], true, "{healthy:#}");
}

#[test]
fn unknown_routes_and_methods_answer_the_error_body() {
    let app = TestApp::spawn();
    for path in [
        "/nope",
        "/recordings",
        "/recordings/a/b/c/d/e/f/g",
        "/recordings/c/r/i/bogus",
    ] {
        let resp = app.get(path, KEY_A);
        let body = resp.assert_error(404);
        assert_eq!(body["code"], "ROUTE_NOT_FOUND", "{}", resp.describe());
    }
    for path in ["/", "/nope", "/auvious.video", "/auvious.video/rtc-recorder"] {
        let resp = app.get_root(path, NO_KEY);
        let body = resp.assert_error(404);
        assert_eq!(body["code"], "ROUTE_NOT_FOUND", "{}", resp.describe());
    }
    // Known paths with the wrong method.
    let ev = app.start(KEY_A, APP_A, &conv("methods"));
    for (method, path) in [
        ("GET", "/recordings/start".to_string()),
        ("PUT", instance_path(&ev)),
        ("GET", format!("{}/stop", instance_path(&ev))),
        ("PUT", "/recordings/chat/transcript/add".to_string()),
        ("GET", "/storageproviders/app-a/verify".to_string()),
    ] {
        let resp = app.request(method, &app.api(&path), &[("Authorization", KEY_A)], None);
        assert!(resp.status == 404 || resp.status == 405, "{}", resp.describe());
        resp.assert_error(resp.status);
    }
    // A GET of the stop path did not stop anything.
    assert_eq!(app.instance(KEY_A, &ev)["state"], "INITIALISED");
}

#[test]
fn ready_reads_cached_profile_checks_opens_no_connection_and_names_no_host_or_bucket() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A TCP server standing in for an S3 endpoint that is up but broken: it counts connections
    // and closes each one at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let app = TestApp::spawn_with(
        &format!(
            r#"
[ops]
public_metrics = false
ready_check_secs = 3600

[organizations.org-c.applications.app-s3]
allowed_origins = ["*"]
[organizations.org-c.applications.app-s3.storage]
provider = "AMAZON_S3"
bucket = "very-secret-bucket-name"
endpoint = "http://127.0.0.1:{port}"
path_style = true
access_key_id = {{ env = "READY_TEST_KEY_ID" }}
secret_access_key = {{ env = "READY_TEST_SECRET" }}
"#
        ),
        &[
            ("READY_TEST_KEY_ID", "AKIDREADYTEST"),
            ("READY_TEST_SECRET", "ready-test-secret"),
        ],
    );
    // The background check finds the profile unreachable once.
    let first = poll(std::time::Duration::from_secs(20), "the profile check to fail", || {
        let resp = app.get_root("/ready", NO_KEY);
        (resp.status == 503
            && resp.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("unreachable")))
        .then_some(resp)
    });
    first.assert_error(503);
    let before = accepted.load(Ordering::SeqCst);
    assert!(before >= 1, "the background check reached the endpoint");
    for _ in 0..25 {
        let resp = app.get_root("/ready", NO_KEY);
        resp.assert_error(503);
        let text = resp.text();
        for secret in [
            "very-secret-bucket-name",
            "127.0.0.1",
            &port.to_string(),
            "org-c",
            "app-s3",
            &app.root.display().to_string(),
        ] {
            assert!(!text.contains(secret), "/ready reveals {secret:?}: {text}");
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before,
        "a /ready request opened a connection to the storage profile"
    );
}
