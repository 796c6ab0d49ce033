//! Isolation between the applications of one organization and between organizations, beyond the
//! 404s of `auth.rs`: media ingest, conferences, compositions, conflicts and the debug tree.

use serde_json::{json, Value};

use crate::helpers::*;

/// A plain-RTP offer of one Opus m-line from loopback.
fn opus_offer() -> String {
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
     m=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n"
        .to_string()
}

fn start_in(app: &TestApp, key: &str, application_id: &str, conversation_id: &str, conference_id: &str) -> Resp {
    app.post_json(
        "/recordings/start",
        key,
        &json!({"applicationId": application_id, "conferenceId": conference_id, "conversationId": conversation_id}),
    )
}

fn publish_rtp(app: &TestApp, key: &str, conference_id: &str, user: &str) -> Resp {
    app.post_raw(
        &format!("/media/rtp/{}?userId={user}&type=MIC", enc(conference_id)),
        key,
        "application/sdp",
        opus_offer().as_bytes(),
    )
}

#[test]
fn a_key_limited_to_other_applications_cannot_publish_end_sessions_or_get_tokens() {
    let app = TestApp::spawn();
    let c = conv("ingest-apps");
    let conference = format!("conf-{c}");
    let ev = app.start(KEY_A, APP_A, &c);

    // The limited key (app-a2 only) finds no conference, exactly like a missing one.
    for path in [
        format!("/media/rtp/{}", enc(&conference)),
        format!("/media/whip/{}", enc(&conference)),
    ] {
        let resp = app.post_raw(
            &format!("{path}?userId=u1"),
            KEY_LIMITED,
            "application/sdp",
            opus_offer().as_bytes(),
        );
        resp.assert_error(404);
        let missing = app.post_raw(
            "/media/rtp/no-such-conference?userId=u1",
            KEY_LIMITED,
            "application/sdp",
            opus_offer().as_bytes(),
        );
        let missing_body = missing.assert_error(404);
        assert_eq!(
            resp.json()["message"].as_str().unwrap().replace(&conference, "X"),
            missing_body["message"]
                .as_str()
                .unwrap()
                .replace("no-such-conference", "X"),
            "another application's conference must read like a missing one"
        );
    }
    let token = app.post_json(
        &format!("{}/publish-token", instance_path(&ev)),
        KEY_LIMITED,
        &json!({}),
    );
    token.assert_error(404);

    // The key of the application publishes; the limited key cannot end that session.
    let published = publish_rtp(&app, KEY_A, &conference, "u1");
    published.assert_status(201);
    let location = published.header("location").expect("a session location").to_string();
    let url = app.url(&location);
    let ended = app.request("DELETE", &url, &[("Authorization", KEY_LIMITED)], None);
    ended.assert_error(404);
    // Nor can another organization's key.
    app.request("DELETE", &url, &[("Authorization", KEY_B)], None)
        .assert_error(404);
    // The session is still there for its own key to end.
    app.request("DELETE", &url, &[("Authorization", KEY_A)], None)
        .assert_status(200);
    app.post_json(&format!("{}/publish-token", instance_path(&ev)), KEY_A, &json!({}))
        .assert_status(200);
}

#[test]
fn a_conference_has_one_live_owner_and_only_its_end_frees_it() {
    let app = TestApp::spawn();
    let conference = conv("shared-conf");
    let (c1, c2, c3) = (conv("owner"), conv("hijacker"), conv("bystander"));
    let owner = start_in(&app, KEY_A, APP_A, &c1, &conference).ok_json("RecordingDataEvent");

    // A second live instance on the same conference is refused, from any application.
    for (key, application) in [(KEY_A, APP_A), (KEY_A, APP_A2), (KEY_LIMITED, APP_A2)] {
        let refused = start_in(&app, key, application, &c2, &conference);
        let body = refused.assert_error(409);
        assert!(
            body["message"].as_str().unwrap().contains(&conference),
            "the 409 names the conference: {}",
            refused.describe()
        );
    }
    // Another organization has its own conference namespace.
    start_in(&app, KEY_B, APP_B, &c2, &conference).ok_json("RecordingDataEvent");

    // Starting and stopping another conversation leaves the owner's conference alone.
    let other = start_in(&app, KEY_A, APP_A, &c3, &conv("other-conf")).ok_json("RecordingDataEvent");
    app.stop(KEY_A, &other);
    let published = publish_rtp(&app, KEY_A, &conference, "u1");
    published.assert_status(201);
    assert_eq!(
        published.header("x-recorder-instance-id"),
        owner["instanceId"].as_str(),
        "the conference's publishers reach its owner: {}",
        published.describe()
    );

    // Once the owner stops, the conference is free for a new instance.
    app.stop(KEY_A, &owner);
    let next = start_in(&app, KEY_A, APP_A2, &c2, &conference).ok_json("RecordingDataEvent");
    let published = publish_rtp(&app, KEY_A, &conference, "u2");
    published.assert_status(201);
    assert_eq!(published.header("x-recorder-instance-id"), next["instanceId"].as_str());
}

#[test]
fn a_conflicting_start_names_no_instance_of_another_application() {
    let app = TestApp::spawn();
    let c = conv("conflict-apps");
    let first = app.start(KEY_A, APP_A, &c);
    let first_id = first["instanceId"].as_str().unwrap().to_string();

    let refused = start_in(&app, KEY_LIMITED, APP_A2, &c, &conv("conf-x"));
    refused.assert_error(409);
    assert!(
        !refused.text().contains(&first_id),
        "the 409 reveals app-a's instance to an app-a2 key: {}",
        refused.describe()
    );
    // The same application's caller may learn its own live instance.
    let again = start_in(&app, KEY_A, APP_A, &c, &conv("conf-y"));
    again.assert_error(409);
    assert!(again.text().contains(&first_id), "{}", again.describe());
}

fn contains_text(tree: &Value, needle: &str) -> bool {
    tree.to_string().contains(needle)
}

#[test]
fn the_debug_tree_shows_an_admin_key_only_its_organization_and_the_ops_scope_everything() {
    let app = TestApp::spawn();
    let (ca, cb) = (conv("tree-a"), conv("tree-b"));
    let a = app.start(KEY_A, APP_A, &ca);
    let b = app.start(KEY_B, APP_B, &cb);
    let b_instance = b["instanceId"].as_str().unwrap();

    let own = app.get("/debug/actors", KEY_ADMIN);
    own.assert_status(200);
    let own = own.json();
    assert!(
        contains_text(&own, &ca),
        "org-a's admin sees its own conversation: {own}"
    );
    assert!(contains_text(&own, a["instanceId"].as_str().unwrap()), "{own}");
    for hidden in [cb.as_str(), b_instance, ORG_B, APP_B] {
        assert!(
            !contains_text(&own, hidden),
            "org-a's admin sees {hidden:?} of org-b: {own}"
        );
    }

    let all = app.get("/debug/actors", KEY_OPS);
    all.assert_status(200);
    let all = all.json();
    for seen in [ca.as_str(), cb.as_str(), b_instance] {
        assert!(contains_text(&all, seen), "the ops scope sees {seen:?}: {all}");
    }
    assert!(
        all["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "Compositor"),
        "the ops scope sees the node's compositor: {all}"
    );
    // The ops scope is for the debug tree, not the Recorder API.
    app.get(&format!("/recordings/{ca}"), KEY_OPS).assert_error(403);
}

#[test]
fn each_application_has_its_own_composition_of_a_conversation() {
    let app = TestApp::spawn();
    let c = conv("composed-apps");
    let a = app.start(KEY_A, APP_A, &c);
    app.stop(KEY_A, &a);
    let a2 = app.start(KEY_LIMITED, APP_A2, &c);
    app.stop(KEY_LIMITED, &a2);

    let composition = |key: &str, query: &str| {
        let resp = app.get(&format!("/compositions/{c}{query}"), key);
        resp.ok_json("RecordingDataMessage")
    };
    // app-a's composition is of app-a's instance, whatever was stopped after it.
    let of_a = composition(KEY_A, "?applicationId=app-a");
    assert_eq!(of_a["instanceId"], a["instanceId"], "{of_a}");
    // The limited key reads only app-a2's, and asking for app-a's is a 404.
    let of_a2 = composition(KEY_LIMITED, "");
    assert_eq!(of_a2["instanceId"], a2["instanceId"], "{of_a2}");
    app.get(&format!("/compositions/{c}?applicationId=app-a"), KEY_LIMITED)
        .assert_error(404);
    // Without a choice, a key of both applications gets the one queued last.
    let newest = composition(KEY_A, "");
    assert_eq!(newest["instanceId"], a2["instanceId"], "{newest}");
    app.get(&format!("/compositions/{c}?applicationId=app-b"), KEY_A)
        .assert_error(404);
    app.get(&format!("/compositions/{c}?applicationId=bad%2Fid"), KEY_A)
        .assert_error_naming(400, "applicationId");
}

#[test]
fn a_plain_rtp_offer_without_a_sender_address_is_refused_unless_the_key_is_trusted_for_any_source() {
    const KEY_ANY: &str = "key-a-any-rtp-source";
    let app = TestApp::spawn_with(
        &format!(
            "[api_keys.any-source]\nhash = \"sha256:{}\"\norganization = \"org-a\"\nscopes = [\"global\"]\nrtp_any_source = true\n",
            sha256_hex(KEY_ANY)
        ),
        &[],
    );
    let c = conv("no-c-line");
    app.start(KEY_A, APP_A, &c);
    let conference = format!("conf-{c}");
    let without_c = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=test\r\nt=0 0\r\n\
                     m=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n";
    let unspecified = opus_offer().replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0");
    for offer in [without_c.to_string(), unspecified] {
        let refused = app.post_raw(
            &format!("/media/rtp/{}?userId=u1", enc(&conference)),
            KEY_A,
            "application/sdp",
            offer.as_bytes(),
        );
        refused.assert_error_naming(400, "sdp");
        assert!(refused.text().contains("c="), "{}", refused.describe());
        // A key trusted for any source may publish it (e.g. from behind a NAT it cannot name).
        app.post_raw(
            &format!("/media/rtp/{}?userId=u-any-{}", enc(&conference), offer.len()),
            KEY_ANY,
            "application/sdp",
            offer.as_bytes(),
        )
        .assert_status(201);
    }
}
