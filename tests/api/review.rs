//! The review page over HTTP (the browser test is tests/media/review.rs): the signed link, what
//! it is bound to, the page's headers, its data (chat placed on the timeline, co-browse sessions
//! that are not rrweb listed with their events), its static files, and every refusal.

use serde_json::{json, Value};

use crate::helpers::*;
use crate::signed_urls::uploaded_sessions;

fn review_link(app: &TestApp, key: &str, conversation: &str, query: &str) -> Value {
    app.get(&format!("/recordings/{conversation}/url/review{query}"), key)
        .ok_json("URLResourceMessage")
}

/// `url` with `/{sub}` inserted before its query.
fn sub(url: &str, sub: &str) -> String {
    url.replacen('?', &format!("/{sub}?"), 1)
}

#[test]
fn a_review_link_opens_the_page_and_its_data_without_a_key() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "review");
    // Lines sent before the instance began and after it ended sit at its edges.
    let now = chrono::Utc::now();
    let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    app.add_transcript(
        KEY_A,
        &up.ev,
        json!([
            {"timeStamp": stamp(now - chrono::Duration::seconds(600)), "transcript": "<b>not markup</b>", "userId": "agent-1"},
            {"timeStamp": stamp(now + chrono::Duration::seconds(600)), "transcript": "later", "userId": "customer-1"},
        ]),
    )
    .assert_status(200);

    let link = review_link(&app, KEY_A, &up.conversation, "");
    let url = link["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&app.api(&format!("/review/{}?", up.conversation))),
        "{url}"
    );
    assert!(
        url.contains("organizationId=org-a") && url.contains("applicationId=app-a"),
        "{url}"
    );

    let page = app.request("GET", &url, &[], None);
    assert_eq!(page.status, 200, "{}", page.describe());
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    assert!(
        html.contains(&up.conversation) && html.contains("review-assets/review.js"),
        "{html}"
    );
    assert!(!html.contains(KEY_A), "the page holds no key");

    let data = app.request("GET", &sub(&url, "data"), &[], None);
    assert_eq!(data.status, 200, "{}", data.describe());
    let data = data.json();
    assert!(!data.to_string().contains(KEY_A));
    assert_eq!(data["conversationId"], up.conversation.as_str());
    assert_eq!(data["live"], false);
    assert_eq!(data["instances"][0]["placement"], "composed", "{data:#}");
    assert_eq!(data["instances"][0]["state"], "STOPPED");
    let chat = data["chat"].as_array().unwrap();
    assert_eq!(chat.len(), 2, "{data:#}");
    assert_eq!(chat[0]["text"], "<b>not markup</b>");
    let length = data["instances"][0]["length"].as_f64().unwrap();
    assert!(length > 0.0, "{data:#}");
    assert_eq!(chat[0]["t"].as_f64(), Some(0.0), "{data:#}");
    assert!((chat[1]["t"].as_f64().unwrap() - length).abs() < 1e-6, "{data:#}");

    // Sessions that are not rrweb are listed, their events served through the link.
    let sessions = data["cobrowse"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{data:#}");
    let s1 = sessions.iter().find(|s| s["sessionId"] == "s1").unwrap();
    assert_eq!(s1["rrweb"], false);
    assert_eq!(s1["numEvents"], 3);
    let events = app.request("GET", s1["eventsUrl"].as_str().unwrap(), &[], None);
    assert_eq!(events.status, 200, "{}", events.describe());
    let events = events.json();
    let seqs: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequenceId"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(
        events[0]["payload"]["step"], 1,
        "JSON payloads are given as JSON: {events}"
    );

    // The static files: compiled in, typed, public (they hold no data).
    for (name, kind) in [
        ("review.js", "text/javascript"),
        ("review.css", "text/css"),
        ("rrweb-replay.min.js", "text/javascript"),
        ("LICENSE.rrweb.txt", "text/plain"),
    ] {
        let asset = app.request("GET", &app.api(&format!("/review-assets/{name}")), &[], None);
        assert_eq!(asset.status, 200, "{name}");
        assert!(asset.header("content-type").unwrap().starts_with(kind), "{name}");
    }
    app.request("GET", &app.api("/review-assets/..%2Fmod.rs"), &[], None)
        .assert_error(404);
    let license = app.request("GET", &app.api("/review-assets/LICENSE.rrweb.txt"), &[], None);
    assert!(license.text().contains("MIT"));
}

#[test]
fn a_review_link_reaches_nothing_beyond_its_conversation_and_refusals_are_clear() {
    let app = TestApp::spawn();
    let up = uploaded_sessions(&app, "review-a");
    let other = uploaded_sessions(&app, "review-b");
    let url = review_link(&app, KEY_A, &up.conversation, "?ttlSecs=600")["url"]
        .as_str()
        .unwrap()
        .to_string();

    // Another conversation, organization or application under the same signature: refused.
    let moved = url.replacen(&up.conversation, &other.conversation, 1);
    app.request("GET", &sub(&moved, "data"), &[], None).assert_error(403);
    for (from, to) in [
        ("organizationId=org-a", "organizationId=org-b"),
        ("applicationId=app-a", "applicationId=app-a2"),
    ] {
        let changed = url.replace(from, to);
        assert_ne!(changed, url);
        app.request("GET", &sub(&changed, "data"), &[], None).assert_error(403);
    }
    // An instance of another conversation through this link's routes: missing.
    let other_instance = other.ev["instanceId"].as_str().unwrap();
    app.request("GET", &sub(&url, &format!("cobrowse/{other_instance}/s1")), &[], None)
        .assert_error(404);
    let other_recorder = other.ev["recorderId"].as_str().unwrap();
    app.request(
        "GET",
        &sub(&url, &format!("track/{other_recorder}/{other_instance}/st/tr")),
        &[],
        None,
    )
    .assert_error(404);
    // Missing parameters and a mangled signature.
    let bare = app.api(&format!("/review/{}/data", up.conversation));
    app.request("GET", &bare, &[], None)
        .assert_error_naming(400, "organizationId");
    let unsigned = format!("{bare}?organizationId=org-a&applicationId=app-a");
    app.request("GET", &unsigned, &[], None)
        .assert_error_naming(400, "Date");
    let mangled = url.replace("Signature=", "Signature=zz");
    app.request("GET", &sub(&mangled, "data"), &[], None).assert_error(403);
    // A refused page is a page, for the browser that opened it.
    let page = app.request("GET", &mangled, &[], None);
    assert_eq!(page.status, 403);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("id=\"refused\""), "{}", page.text());

    // Asking for a link: a key is needed, another organization sees nothing, and bad input
    // names its field.
    let path = format!("/recordings/{}/url/review", up.conversation);
    app.get(&path, NO_KEY).assert_error(401);
    app.get(&path, KEY_B).assert_error(404);
    app.get(&format!("{path}?ttlSecs=abc"), KEY_A)
        .assert_error_naming(400, "ttlSecs");
    app.get(&format!("{path}?ttlSecs=604801"), KEY_A)
        .assert_error_naming(400, "ttlSecs");
    app.get(&format!("{path}?applicationId={APP_A2}"), KEY_A)
        .assert_error(404);
    app.get(&format!("{path}?applicationId=no%20such"), KEY_A)
        .assert_error_naming(400, "applicationId");
    app.get("/recordings/conv-none/url/review", KEY_A).assert_error(404);
}
