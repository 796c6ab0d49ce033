//! API keys: 401 without a (known) key, 403 without the `global` scope, and tenants never see each
//! other's data (another organization's ids answer exactly like missing ones).

use serde_json::{json, Value};

use crate::helpers::*;

/// One request against a protected route.
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl Call {
    fn get(path: String) -> Call {
        Call {
            method: "GET",
            path,
            body: None,
            headers: vec![],
        }
    }
    fn post(path: String, body: Option<Value>) -> Call {
        Call {
            method: "POST",
            path,
            body,
            headers: vec![],
        }
    }

    pub fn send(&self, app: &TestApp, authorization: &str) -> Resp {
        let mut headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if !authorization.is_empty() {
            headers.push(("Authorization", authorization));
        }
        let body = self.body.as_ref().map(|b| serde_json::to_vec(b).unwrap());
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let body = match (self.method, &body) {
            ("POST", None) => Some(&[][..]),
            (_, b) => b.as_deref(),
        };
        app.request(self.method, &app.api(&self.path), &headers, body)
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Every route of the spec that needs an API key, aimed at the instance `ev` (conversation,
/// recorder, instance) and co-browse session `session`.
pub fn protected_calls(ev: &Value, session: &str) -> Vec<Call> {
    let c = ev["conversationId"].as_str().unwrap();
    let (r, i) = (ev["recorderId"].as_str().unwrap(), ev["instanceId"].as_str().unwrap());
    let inst = instance_path(ev);
    let mut url_call = Call::get(format!(
        "{inst}/cobrowse/{session}/url/attachment?conversationId={c}&id={r}&instanceId={i}"
    ));
    url_call.headers.push(("referer", format!("{ALLOWED_ORIGIN}/agent")));
    vec![
        Call::get(format!("/compositions/{c}")),
        Call::post(
            "/recordings/chat/transcript/add".into(),
            Some(
                json!({"chatTranscriptList": [chat("2024-01-01T10:00:00Z", "hello", "u1")], "conversationId": c, "instanceId": i, "recorderId": r}),
            ),
        ),
        Call::post(
            "/recordings/cobrowse/event".into(),
            Some(cobrowse_cmd(ev, session, 99, "{}", 1)),
        ),
        Call::post(
            "/recordings/start".into(),
            Some(json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": c})),
        ),
        Call::get(format!("/recordings/{c}")),
        Call::get(format!("/recordings/{c}/active")),
        Call::get(format!("/recordings/{c}/cobrowse")),
        Call::get(inst.clone()),
        url_call,
        Call::get(format!("{inst}/state")),
        Call::get(format!("{inst}/storage/info")),
        Call::post("/storageproviders/app-a/verify".into(), None),
        // Last: it changes the instance.
        Call::post(format!("{inst}/stop"), None),
    ]
}

#[test]
fn missing_or_unknown_keys_are_401_on_every_route() {
    let app = TestApp::spawn();
    let c = conv("auth401");
    let ev = app.start(KEY_A, APP_A, &c);
    for call in protected_calls(&ev, "s1") {
        for authorization in [
            "",
            "wrong-key",
            "Bearer wrong-key",
            "Bearer ",
            "Basic a2V5LWEtZ2xvYmFsOg==",
            "key-a-global-but-longer",
        ] {
            let resp = call.send(&app, authorization);
            let body = resp.assert_error(401);
            assert!(
                !body.to_string().contains("key-a-global"),
                "an error must not echo keys: {}",
                resp.describe()
            );
        }
    }
    // None of that touched the instance.
    let msg = app.instance(KEY_A, &ev);
    assert_eq!(msg["state"], "INITIALISED");
    assert!(msg.get("chatTranscript").is_none());
    let sessions = app.get(&format!("/recordings/{c}/cobrowse"), KEY_A);
    if sessions.status == 200 {
        assert_eq!(
            sessions.json()["cobrowseSessions"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0),
            0,
            "{}",
            sessions.describe()
        );
    }
}

#[test]
fn raw_and_bearer_keys_are_both_accepted() {
    let app = TestApp::spawn();
    let c = conv("bearer");
    let resp = app.post_json(
        "/recordings/start",
        &format!("Bearer {KEY_A}"),
        &json!({"applicationId": APP_A, "conferenceId": conv("f"), "conversationId": c}),
    );
    let ev = resp.ok_json("RecordingDataEvent");
    let raw = app.get(&instance_path(&ev), KEY_A).ok_json("RecordingDataMessage");
    let bearer = app
        .get(&instance_path(&ev), &format!("Bearer {KEY_A}"))
        .ok_json("RecordingDataMessage");
    assert_eq!(raw, bearer);
    app.get(&format!("/recordings/{c}/active"), &format!("Bearer {KEY_B}"))
        .assert_error(404);
}

#[test]
fn keys_without_the_global_scope_are_403() {
    let app = TestApp::spawn();
    let ev = app.start(KEY_A, APP_A, &conv("scope"));
    for key in [KEY_NOSCOPE, KEY_OPS_ONLY] {
        for call in protected_calls(&ev, "s1") {
            let resp = call.send(&app, key);
            assert_eq!(resp.status, 403, "{} with {key}: {}", call.describe(), resp.describe());
            resp.assert_error(403);
            let resp = call.send(&app, &format!("Bearer {key}"));
            assert_eq!(
                resp.status,
                403,
                "{} with Bearer {key}: {}",
                call.describe(),
                resp.describe()
            );
        }
    }
    assert_eq!(
        app.instance(KEY_A, &ev)["state"],
        "INITIALISED",
        "a 403 stop must not stop"
    );
}

/// Builds, in org-a, a stopped instance with a transcript and an uploaded co-browse session.
fn rich_org_a_instance(app: &TestApp, c: &str) -> Value {
    let ev = app.start(KEY_A, APP_A, c);
    app.add_transcript(KEY_A, &ev, json!([chat("2024-01-01T10:00:00Z", "secret", "u1")]))
        .ok_json("RecordingDataEvent");
    app.add_event(KEY_A, &ev, "s1", 1, "{\"secret\":true}", 1000)
        .ok_json("RecordingDataEvent");
    app.stop(KEY_A, &ev);
    app.wait_session_uploaded(KEY_A, c, "s1");
    app.wait_transcript_file(KEY_A, &ev, 1);
    ev
}

#[test]
fn another_organizations_data_is_404_exactly_like_missing_data() {
    let app = TestApp::spawn();
    let c = conv("tenant");
    let ev = rich_org_a_instance(&app, &c);
    let before = app.instance(KEY_A, &ev);

    let missing = json!({"conversationId": "missing-conv", "recorderId": "missing-rec", "instanceId": "missing-inst"});
    let calls_b = protected_calls(&ev, "s1");
    let calls_missing = protected_calls(&missing, "s1");
    for (theirs, absent) in calls_b.iter().zip(&calls_missing) {
        // org-b may start its own recording of any conversation id and may verify its own
        // applications; everything else addresses org-a's data.
        if theirs.path == "/recordings/start"
            || theirs.path.starts_with("/storageproviders")
            || theirs.path.starts_with("/compositions")
        {
            continue;
        }
        let seen = theirs.send(&app, KEY_B);
        let reference = absent.send(&app, KEY_B);
        assert!(!seen.text().contains("secret"), "leaks org-a data: {}", seen.describe());
        if theirs.path.ends_with("/cobrowse") && reference.status == 200 {
            // The contract leaves open whether a session listing of an unknown conversation is
            // 404 or an empty list; either way org-a's must look the same.
            let seen = seen.ok_json("ConversationCobrowseSessionDataMessage");
            let sessions = seen["cobrowseSessions"].as_array().map(Vec::len).unwrap_or(0);
            assert_eq!(sessions, 0, "org-b sees org-a's co-browse sessions: {seen}");
            continue;
        }
        let seen_body = seen.assert_error(404);
        let reference_body = reference.assert_error(404);
        assert_eq!(
            seen_body["code"],
            reference_body["code"],
            "{} by org-b must look like a missing resource:\n  {}\n  {}",
            theirs.describe(),
            seen.describe(),
            reference.describe()
        );
    }
    // org-a's application is unknown to org-b.
    let verify = app.post_empty("/storageproviders/app-a/verify", KEY_B);
    let unknown = app.post_empty("/storageproviders/no-such-app/verify", KEY_B);
    assert_eq!(verify.assert_error(404)["code"], unknown.assert_error(404)["code"]);

    // org-a's data is unchanged by org-b's attempts (transcript add, event, stop).
    let after = app.instance(KEY_A, &ev);
    assert_eq!(before, after, "org-b changed org-a's instance");
    let file: Value = serde_json::from_slice(&std::fs::read(app.transcript_file(&ev)).unwrap()).unwrap();
    assert_eq!(
        file["chatTranscriptList"].as_array().map(Vec::len),
        Some(1),
        "org-b added to org-a's transcript: {file}"
    );
}

#[test]
fn organizations_have_separate_conversation_namespaces() {
    let app = TestApp::spawn();
    let c = conv("shared-id");
    let ev_a = app.start(KEY_A, APP_A, &c);
    // The same conversation id in org-b is another conversation: no 409.
    let ev_b = app.start(KEY_B, APP_B, &c);
    assert_ne!(ev_a["instanceId"], ev_b["instanceId"]);
    let active_a = app
        .get(&format!("/recordings/{c}/active"), KEY_A)
        .ok_json("RecordingDataEvent");
    let active_b = app
        .get(&format!("/recordings/{c}/active"), KEY_B)
        .ok_json("RecordingDataEvent");
    assert_eq!(active_a, ev_a);
    assert_eq!(active_b, ev_b);
    let list_a = app
        .get(&format!("/recordings/{c}"), KEY_A)
        .ok_json("ConversationMessage");
    let list_b = app
        .get(&format!("/recordings/{c}"), KEY_B)
        .ok_json("ConversationMessage");
    assert_eq!(list_a["recordings"].as_array().map(Vec::len), Some(1), "{list_a}");
    assert_eq!(list_a["applicationId"], APP_A);
    assert_eq!(list_b["recordings"].as_array().map(Vec::len), Some(1), "{list_b}");
    assert_eq!(list_b["applicationId"], APP_B);
    assert_eq!(app.instance(KEY_B, &ev_b)["organizationId"], ORG_B);
    // Stopping org-b's does not stop org-a's.
    app.stop(KEY_B, &ev_b);
    assert_eq!(app.instance(KEY_A, &ev_a)["state"], "INITIALISED");
}

#[test]
fn a_key_limited_to_one_application_cannot_act_on_another_applications_instances() {
    let app = TestApp::spawn();
    // config.toml: a key "may use the listed applications" — app-a2 only for this one.
    let c = conv("limited-scope");
    let ev = app.start(KEY_A, APP_A, &c);
    app.add_event(KEY_A, &ev, "s1", 1, "e", 1).ok_json("RecordingDataEvent");
    let mut reached = Vec::new();
    for call in protected_calls(&ev, "s1") {
        if call.path == "/recordings/start" {
            continue; // covered by recordings::a_key_limited_to_another_application_is_403_on_start
        }
        let resp = call.send(&app, KEY_LIMITED);
        if resp.status == 403 || resp.status == 404 {
            resp.assert_error(resp.status);
        } else {
            reached.push(resp.describe());
        }
    }
    let msg = app.instance(KEY_A, &ev);
    assert!(
        reached.is_empty(),
        "a key limited to app-a2 reached app-a's data ({} routes):\n{}\ninstance afterwards: {msg}",
        reached.len(),
        reached.join("\n")
    );
    assert_eq!(
        msg["state"], "INITIALISED",
        "the limited key stopped app-a's recording: {msg}"
    );
    // Its own application works end to end.
    let own = app.start(KEY_LIMITED, APP_A2, &conv("limited-own"));
    app.instance(KEY_LIMITED, &own);
    app.add_transcript(KEY_LIMITED, &own, json!([chat("2024-01-01T10:00:00Z", "mine", "u1")]))
        .ok_json("RecordingDataEvent");
    app.stop(KEY_LIMITED, &own);
    app.post_empty("/storageproviders/app-a2/verify", KEY_LIMITED)
        .ok_json("StorageVerificationStatusMessage");
}
