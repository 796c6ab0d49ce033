//! Erasure of a recorded call: its track files, its composition, its manifest leave the storage
//! profile, its media folder leaves the node, and the instance stays a tombstone.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

#[test]
fn an_erased_call_leaves_no_track_composition_or_manifest_in_storage_nor_media_on_the_node() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("erase");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, true);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=customer&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let ports = answer_ports(&resp.text());
    let mut a = lavfi_av(2);
    a.extend(rtp_out("0:v", "vp8", 96, ports[0]));
    a.extend(rtp_out("0:a", "opus", 111, ports[1]));
    wait_ok(ffmpeg(&a), "ffmpeg");
    app.stop(&event);
    wait_composed(&app, &conversation, &event["instanceId"]);
    let conversation_dir = app.root.join("storage/org-a/app-a").join(&conversation);
    poll(
        Duration::from_secs(60),
        "tracks, composition and manifest in storage",
        || {
            let files = files_under(&conversation_dir);
            let has = |suffix: &str| files.iter().any(|f| f.to_string_lossy().ends_with(suffix));
            (has(".webm") && has("composition.mp4") && has("recording.json")).then_some(())
        },
    );

    let path = format!("/recordings/{conversation}");
    let resp = app.request("DELETE", &app.api(&path), &[("Authorization", KEY)], None);
    assert_eq!(resp.status, 202, "{}", resp.text());
    let erased: Value = poll(Duration::from_secs(60), "the erasure done", || {
        let instance = app.instance(&event);
        instance["erasure"]["erased"].is_string().then_some(instance)
    });
    let left = files_under(&conversation_dir);
    assert!(left.is_empty(), "left in storage: {left:?}");
    let media = app.root.join("data/media").join(event["instanceId"].as_str().unwrap());
    assert!(
        !media.exists(),
        "the instance's media folder is gone: {}",
        media.display()
    );
    for (_, _, _, track) in tracks(&erased) {
        assert!(track["storage"]["localStorage"].get("location").is_none(), "{track}");
        assert!(track["storage"]["objectStorage"].get("location").is_none(), "{track}");
    }
    // The composition says why it is gone.
    let composition = app.get(&format!("/compositions/{conversation}"), KEY);
    let body = composition.json();
    assert!(
        body["state"] == "FAILED" && body["error"]["code"] == "ERASED",
        "{}",
        composition.text()
    );
}
