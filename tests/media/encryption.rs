//! Encryption with the customer's key: every artefact is stored as `age` ciphertext for the
//! application's public key — tracks, transcript, co-browse session, composition — the local
//! plaintext is removed after the upload, signed downloads serve the ciphertext, and the standard
//! `age` CLI with the private key gives back media that plays.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// `age-keygen`: (identity file, public key).
fn keypair(dir: &Path) -> (PathBuf, String) {
    let identity = dir.join("customer.key");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen runs (scripts/test-setup.sh installs age)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&identity).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("the key file names its public key")
        .to_string();
    (identity, public)
}

/// `age -d -i identity -o out in`.
fn decrypt(identity: &Path, sealed: &Path, out: &Path) {
    let status = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(out)
        .arg(sealed)
        .status()
        .expect("age runs");
    assert!(status.success(), "age could not decrypt {}", sealed.display());
}

#[test]
fn artefacts_are_stored_encrypted_to_the_customers_key_and_decrypt_with_the_age_cli() {
    let _media = media_lock();
    let keys = tempfile::tempdir().unwrap();
    let (identity, public) = keypair(keys.path());
    let app = TestApp::spawn_uploading_with(&format!(
        "[organizations.org-a.applications.app-a.encryption]\npublic_key = \"{public}\"\n"
    ));
    let conversation = unique("sealed");
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
    let line = json!({"chatTranscriptList": [{"timeStamp": "2024-05-01T10:00:00Z", "transcript": "my card is 4111", "userId": "customer"}],
        "conversationId": event["conversationId"], "instanceId": event["instanceId"], "recorderId": event["recorderId"]});
    assert_eq!(app.post_json("/recordings/chat/transcript/add", KEY, &line).status, 200);
    app.stop(&event);
    poll(Duration::from_secs(60), "every track uploaded", || {
        let instance = app.instance(&event);
        let all = tracks(&instance);
        (all.len() == 2
            && all
                .iter()
                .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string())
            && instance["chatTranscript"].is_object())
        .then_some(())
    });
    wait_composed(&app, &conversation, &event["instanceId"]);
    let conversation_dir = app.root.join("storage/org-a/app-a").join(&conversation);
    let stored = poll(
        Duration::from_secs(60),
        "the composition and the manifest stored",
        || {
            let files = files_under(&conversation_dir);
            let has = |suffix: &str| files.iter().any(|f| f.to_string_lossy().ends_with(suffix));
            // A rewrite of the manifest in flight leaves a `.recording.json.*.tmp` for a moment:
            // the set is read once no write is under way.
            let in_flight = files.iter().any(|f| f.to_string_lossy().ends_with(".tmp"));
            (has("composition.mp4.age") && has("recording.json") && !in_flight).then_some(files)
        },
    );
    // Nothing but ciphertext (and the manifest, which lists) is in storage.
    for file in &stored {
        let name = file.to_string_lossy();
        if name.ends_with("recording.json") {
            continue;
        }
        assert!(name.ends_with(".age"), "stored in the clear: {name}");
        let head = std::fs::read(file).unwrap();
        assert!(
            head.starts_with(b"age-encryption.org/v1"),
            "{name} is not age ciphertext"
        );
    }
    // The local plaintext is removed once uploaded (after the composition read it).
    let instance: Value = poll(Duration::from_secs(60), "the local track files deleted", || {
        let instance = app.instance(&event);
        tracks(&instance)
            .iter()
            .all(|(_, _, _, t)| t["storage"]["localStorage"]["deleted"].is_string())
            .then_some(instance)
    });
    let out = keys.path();
    for (_, _, kind, track) in tracks(&instance) {
        let location = track["storage"]["objectStorage"]["location"].as_str().unwrap();
        assert!(location.ends_with(".webm.age"), "{location}");
        let plain = out.join(format!("{kind}.webm"));
        decrypt(&identity, Path::new(location.strip_prefix("file://").unwrap()), &plain);
        let p = probe(&plain);
        let (codec, frames) = if kind == "VIDEO" {
            ("vp8", 60)
        } else {
            ("opus", ffmpeg_opus_frames(2))
        };
        assert_eq!((p.codec.as_str(), p.num_frames), (codec, frames), "{p:?}");
        // The recorder's signed download serves the ciphertext.
        let url = track["url"].as_str().unwrap_or_else(|| panic!("no url: {track}"));
        let served = app.request("GET", url, &[], None);
        assert_eq!(served.status, 200, "{}", served.text());
        assert!(
            served.body.starts_with(b"age-encryption.org/v1"),
            "a download in the clear"
        );
    }
    // The transcript, and the composition, decrypt too.
    let transcript = stored
        .iter()
        .find(|f| f.to_string_lossy().ends_with("transcript.json.age"))
        .expect("the transcript's ciphertext");
    decrypt(&identity, transcript, &out.join("transcript.json"));
    let text = std::fs::read_to_string(out.join("transcript.json")).unwrap();
    assert!(text.contains("my card is 4111"), "{text}");
    let composition = stored
        .iter()
        .find(|f| f.to_string_lossy().ends_with("composition.mp4.age"))
        .unwrap();
    decrypt(&identity, composition, &out.join("composition.mp4"));
    assert_eq!(probe(&out.join("composition.mp4")).codec, "h264");
    // The manifest stays readable and lists the ciphertexts.
    let manifest = stored
        .iter()
        .find(|f| f.to_string_lossy().ends_with("recording.json"))
        .unwrap();
    let manifest: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert!(manifest.to_string().contains(".webm.age"), "{manifest:#}");
}
