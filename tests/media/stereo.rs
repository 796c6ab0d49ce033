//! The conversation's stereo audio: an agent and a customer publish tones of different
//! frequencies over plain RTP (FFmpeg's CLI), the recorder composes, and the stereo file is
//! checked by decoding it: each tone in its own channel (Goertzel per channel), each starting
//! within 20 ms of where it starts in the composition's audio, listed in `recording.json` and
//! in `GET /compositions/{conversationId}`, downloadable through its signed URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const AGENT_HZ: f64 = 440.0;
const CUSTOMER_HZ: f64 = 1000.0;

/// One FFmpeg sending a tone (Opus over RTP) for `seconds` as a MIC of `user`, with `role`.
/// `auth` is the `Authorization` header (an API key or a publish token).
fn send_tone(
    app: &TestApp,
    conference: &str,
    user: &str,
    role: Option<&str>,
    auth: &str,
    hz: f64,
    seconds: f64,
) -> Child {
    let role = role.map(|r| format!("&role={r}")).unwrap_or_default();
    let resp = app.publish(
        "rtp",
        conference,
        &format!("userId={user}&type=MIC{role}"),
        auth,
        "application/sdp",
        &rtp_offer(&[("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    let mut a = args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency={hz}:sample_rate=48000:duration={seconds}"),
    ]);
    a.extend(rtp_out("0:a", "opus", 111, port));
    ffmpeg(&a)
}

/// Channel `index` of `path` (`None`: all channels mixed to mono) as samples at 48 kHz.
pub fn samples(path: &Path, index: Option<usize>) -> Vec<f64> {
    let filter = match index {
        Some(i) => format!("pan=mono|c0=c{i}"),
        None => "aformat=channel_layouts=mono".into(),
    };
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-vn", "-af", &filter, "-ar", "48000", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Power of `hz` in `samples` (Goertzel), normalized by the length.
pub fn goertzel(samples: &[f64], hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len() as f64).powi(2)
}

/// Seconds at which `hz` starts in `samples`: the first 10 ms window (1 ms steps) whose power
/// of `hz` reaches a quarter of the strongest window's.
pub fn onset(samples: &[f64], hz: f64) -> f64 {
    const WINDOW: usize = 480;
    const HOP: usize = 48;
    let powers: Vec<f64> = (0..samples.len().saturating_sub(WINDOW))
        .step_by(HOP)
        .map(|at| goertzel(&samples[at..at + WINDOW], hz))
        .collect();
    let peak = powers.iter().cloned().fold(0.0, f64::max);
    assert!(peak > 1e-6, "no {hz} Hz at all");
    let first = powers
        .iter()
        .position(|p| *p >= peak / 4.0)
        .expect("the peak reaches it");
    (first * HOP) as f64 / 48_000.0
}

/// The stereo track of the composition message; its signed URL downloaded into `dir`.
pub fn download_stereo(app: &TestApp, message: &Value, dir: &Path) -> PathBuf {
    let tracks = message["streams"][0]["tracks"].as_array().expect("tracks");
    let stereo = tracks
        .iter()
        .find(|t| t["id"] == "stereo")
        .unwrap_or_else(|| panic!("no stereo track: {message:#}"));
    assert_eq!(stereo["type"], "AUDIO", "{stereo:#}");
    let location = stereo["storage"]["objectStorage"]["location"]
        .as_str()
        .unwrap_or_default();
    assert!(location.ends_with("/stereo.opus"), "{stereo:#}");
    let url = stereo["url"].as_str().unwrap_or_else(|| panic!("no url: {stereo:#}"));
    let resp = app.request("GET", url, &[], None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let path = dir.join("stereo.opus");
    std::fs::write(&path, &resp.body).unwrap();
    path
}

fn wait_manifest_stereo(app: &TestApp, event: &Value) -> Value {
    let manifest_path = app.root.join("storage").join(format!(
        "org-a/app-a/{}/{}/{}/recording.json",
        event["conversationId"].as_str().unwrap(),
        event["recorderId"].as_str().unwrap(),
        event["instanceId"].as_str().unwrap()
    ));
    poll(Duration::from_secs(30), "recording.json lists the stereo audio", || {
        std::fs::read(&manifest_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(|m| m["stereo"].is_object())
    })
}

#[test]
fn agent_and_customer_land_each_in_their_channel_in_time_with_the_composition() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("stereo");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, false);
    // The customer publishes with a token that fixes its role: declaring another is refused,
    // declaring none takes the token's; asking for a role that is not one is a 400.
    let token_path = format!("{}/publish-token", instance_path(&event));
    let bad = app.post_json(&token_path, KEY, &serde_json::json!({"role": "boss"}));
    assert_eq!(bad.assert_error(400)["field"], "role", "{}", bad.text());
    let token = app.post_json(
        &token_path,
        KEY,
        &serde_json::json!({"userId": "cust-1", "role": "customer"}),
    );
    assert_eq!(token.status, 200, "{}", token.text());
    let token = format!("Bearer {}", token.json()["token"].as_str().unwrap());
    app.publish(
        "rtp",
        &conference,
        "userId=cust-1&type=MIC&role=agent",
        &token,
        "application/sdp",
        &rtp_offer(&[("audio", 111, "opus/48000/2")]),
    )
    .assert_error(403);
    // The customer speaks first: without roles it would be on the left.
    let customer = send_tone(&app, &conference, "cust-1", None, &token, CUSTOMER_HZ, 4.0);
    std::thread::sleep(Duration::from_millis(1200));
    let key = format!("Bearer {KEY}");
    let agent = send_tone(&app, &conference, "agent-1", Some("AGENT"), &key, AGENT_HZ, 2.5);
    wait_ok(agent, "agent");
    wait_ok(customer, "customer");
    app.stop(&event);
    let instance = app.instance(&event);
    let roles: Vec<(&str, &str)> = instance["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["userId"].as_str().unwrap(), s["role"].as_str().unwrap_or("none")))
        .collect();
    assert!(
        roles.contains(&("cust-1", "CUSTOMER")) && roles.contains(&("agent-1", "AGENT")),
        "{roles:?}"
    );
    let message = wait_composed(&app, &conversation, &event["instanceId"]);

    let dir = tempfile::tempdir().unwrap();
    let stereo = download_stereo(&app, &message, dir.path());
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,channels",
            "-of",
            "csv=p=0",
        ])
        .arg(&stereo)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "opus,2");
    let (left, right) = (samples(&stereo, Some(0)), samples(&stereo, Some(1)));
    // While both speak: the agent's tone on the left only, the customer's on the right only.
    let both_from = onset(&left, AGENT_HZ) + 0.3;
    let span = |s: &[f64]| s[(both_from * 48_000.0) as usize..((both_from + 1.0) * 48_000.0) as usize].to_vec();
    let (l, r) = (span(&left), span(&right));
    assert!(
        goertzel(&l, AGENT_HZ) > 1000.0 * goertzel(&l, CUSTOMER_HZ).max(1e-12),
        "left channel"
    );
    assert!(
        goertzel(&r, CUSTOMER_HZ) > 1000.0 * goertzel(&r, AGENT_HZ).max(1e-12),
        "right channel"
    );

    // Each tone starts where it starts in the composition's audio, within 20 ms.
    let composition = app
        .root
        .join("storage/org-a/app-a")
        .join(&conversation)
        .join("composition.mp4");
    let mix = samples(&composition, None);
    for (channel, hz, name) in [(&left, AGENT_HZ, "agent"), (&right, CUSTOMER_HZ, "customer")] {
        let (in_stereo, in_mix) = (onset(channel, hz), onset(&mix, hz));
        eprintln!("{name}: starts at {in_stereo:.4}s in the stereo audio, {in_mix:.4}s in the composition");
        assert!(
            (in_stereo - in_mix).abs() <= 0.020,
            "{name}: {in_stereo:.3}s in the stereo audio, {in_mix:.3}s in the composition"
        );
    }
    let agent_late = onset(&left, AGENT_HZ) - onset(&right, CUSTOMER_HZ);
    assert!(
        (0.8..2.0).contains(&agent_late),
        "the agent joined {agent_late:.3}s after the customer"
    );

    let manifest = wait_manifest_stereo(&app, &event);
    assert_eq!(
        manifest["stereo"]["channels"]["left"],
        serde_json::json!(["agent-1"]),
        "{manifest:#}"
    );
    assert_eq!(
        manifest["stereo"]["channels"]["right"],
        serde_json::json!(["cust-1"]),
        "{manifest:#}"
    );
    assert_eq!(manifest["stereo"]["format"], "opus", "{manifest:#}");
    assert!(manifest["stereo"]["location"]
        .as_str()
        .unwrap_or_default()
        .ends_with("/stereo.opus"));
}

#[test]
fn without_roles_the_first_publisher_is_left_and_a_bad_role_is_refused() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("stereo-noroles");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, false);
    let bad = app.publish(
        "rtp",
        &conference,
        "userId=x&type=MIC&role=supervisor",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &rtp_offer(&[("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(bad.assert_error(400)["field"], "role", "{}", bad.text());
    let key = format!("Bearer {KEY}");
    let first = send_tone(&app, &conference, "first", None, &key, CUSTOMER_HZ, 3.0);
    std::thread::sleep(Duration::from_millis(800));
    let second = send_tone(&app, &conference, "second", None, &key, AGENT_HZ, 2.0);
    wait_ok(second, "second");
    wait_ok(first, "first");
    app.stop(&event);
    let message = wait_composed(&app, &conversation, &event["instanceId"]);
    let dir = tempfile::tempdir().unwrap();
    let stereo = download_stereo(&app, &message, dir.path());
    let (left, right) = (samples(&stereo, Some(0)), samples(&stereo, Some(1)));
    let at = ((onset(&right, AGENT_HZ) + 0.3) * 48_000.0) as usize;
    let (l, r) = (&left[at..at + 48_000], &right[at..at + 48_000]);
    assert!(
        goertzel(l, CUSTOMER_HZ) > 1000.0 * goertzel(l, AGENT_HZ).max(1e-12),
        "first publisher left"
    );
    assert!(
        goertzel(r, AGENT_HZ) > 1000.0 * goertzel(r, CUSTOMER_HZ).max(1e-12),
        "second publisher right"
    );
}
