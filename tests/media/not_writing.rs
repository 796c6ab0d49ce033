//! A track that receives packets and cannot write a frame says so instead of failing silently:
//! a VP8 sender that never sends a keyframe (and ignores keyframe requests) gets, within a few
//! seconds, an error on its track (`localStorage.error`) and on the instance, a warning in the
//! log, `num_tracks_not_writing` in `/metrics` and a `track.error` event at the webhook, while the
//! recorder keeps asking for a keyframe; once a keyframe comes, the track writes and all of that
//! is withdrawn (`track.recovered`). A track that never writes keeps its error after the stop.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::webhook::Receiver;

use crate::harness::*;

/// Whether an RTP datagram of the VP8 fixture starts a keyframe (RFC 7741: the payload header's
/// P bit, in a partition's first packet).
fn starts_vp8_keyframe(datagram: &[u8]) -> bool {
    let payload = &datagram[12..];
    let Some(&first) = payload.first() else { return false };
    if first & 0x10 == 0 {
        return false; // not the start of a partition
    }
    let mut at = 1;
    if first & 0x80 != 0 {
        let ext = payload[1];
        at += 1;
        if ext & 0x80 != 0 {
            at += if payload[at] & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            at += 1;
        }
        if ext & 0x30 != 0 {
            at += 1;
        }
    }
    payload.get(at).is_some_and(|b| b & 0x01 == 0)
}

/// Sends the VP8 fixture in real time for `seconds` from `socket`, leaving out every keyframe's
/// packets when `without_keyframes`; sequence numbers stay continuous (no loss is seen).
fn send_vp8(socket: &UdpSocket, to: u16, seconds: f64, without_keyframes: bool, seq: &mut u16, ts_base: &mut u32) {
    let fixture = testkit::rtp::Fixture::load("vp8");
    let rtp: Vec<&(u64, Vec<u8>)> = fixture
        .datagrams
        .iter()
        .filter(|(_, d)| !(192..=223).contains(&d[1]))
        .collect();
    let key_ts: std::collections::HashSet<[u8; 4]> = rtp
        .iter()
        .filter(|(_, d)| starts_vp8_keyframe(d))
        .map(|(_, d)| [d[4], d[5], d[6], d[7]])
        .collect();
    assert!(!key_ts.is_empty(), "the fixture has keyframes");
    let first_ts = u32::from_be_bytes([rtp[0].1[4], rtp[0].1[5], rtp[0].1[6], rtp[0].1[7]]);
    let first_at = rtp[0].0;
    let pass = Duration::from_secs(2);
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed().as_secs_f64() < seconds {
        for (at, d) in &rtp {
            let due = start + pass * n + Duration::from_micros(at - first_at);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if without_keyframes && key_ts.contains(&[d[4], d[5], d[6], d[7]]) {
                continue;
            }
            let mut p = d.clone();
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            *seq = seq.wrapping_add(1);
            let ts = u32::from_be_bytes([d[4], d[5], d[6], d[7]])
                .wrapping_sub(first_ts)
                .wrapping_add(*ts_base);
            p[4..8].copy_from_slice(&ts.to_be_bytes());
            socket.send_to(&p, ("127.0.0.1", to)).unwrap();
        }
        n += 1;
        *ts_base = ts_base.wrapping_add(60 * 3000);
    }
}

fn video_track<'a>(instance: &'a Value, user: &str) -> &'a Value {
    instance["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["userId"] == user)
        .and_then(|s| s["tracks"].as_array()?.iter().find(|t| t["type"] == "VIDEO"))
        .unwrap_or_else(|| panic!("no video track of {user}: {instance:#}"))
}

fn metric(app: &TestApp, line_start: &str) -> Option<u64> {
    app.request(
        "GET",
        &format!("{}/metrics", app.base_url),
        &[("Authorization", KEY_ADMIN)],
        None,
    )
    .text()
    .lines()
    .find(|l| l.starts_with(line_start))
    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_track_that_receives_and_cannot_write_says_so_on_the_api_log_metrics_and_webhook() {
    let _media = media_lock();
    let receiver = Receiver::start();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), "0123456789abcdef0123456789abcdef").unwrap();
    let app = TestApp::spawn_with(&format!(
        "\n[webhooks]\nretry_base_ms = 100\npoll_interval_ms = 50\n\n[organizations.org-a.applications.app-a.webhook]\nurl = \"{}\"\nsecret = {{ file = \"{}\" }}\n",
        receiver.url(),
        secret_file.path().display()
    ));
    let conference = unique("no-keyframe");
    let event = app.start(&unique("no-keyframe-call"), &conference, true, true);
    let publish = |user: &str| {
        let resp = app.publish(
            "rtp",
            &conference,
            &format!("userId={user}&type=CAM"),
            &format!("Bearer {KEY}"),
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        answer_ports(&resp.text())[0]
    };
    let late_port = publish("late-keyframe");
    let never_port = publish("never-keyframe");
    let never = std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (mut seq, mut ts) = (100u16, 5_000u32);
        send_vp8(&socket, never_port, 14.0, true, &mut seq, &mut ts);
    });
    let late_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (mut seq, mut ts) = (9_000u16, 77_000u32);
    let sent_from = Instant::now();
    send_vp8(&late_socket, late_port, 7.0, true, &mut seq, &mut ts);

    // Said on the API: the track's local error and the instance's.
    let instance = poll(Duration::from_secs(10), "the track's error on the API", || {
        let instance = app.instance(&event);
        (video_track(&instance, "late-keyframe")["storage"]["localStorage"]["error"]["code"] == "NO_DECODABLE_MEDIA")
            .then_some(instance)
    });
    assert!(sent_from.elapsed() >= Duration::from_secs(5), "not before the grace");
    assert_eq!(instance["error"]["code"], "NO_DECODABLE_MEDIA", "{instance:#}");
    let message = video_track(&instance, "late-keyframe")["storage"]["localStorage"]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("no frame written") && message.contains("keyframe"),
        "{message}"
    );
    // In /metrics and the log.
    assert_eq!(
        metric(&app, "recorder_media_live{counter=\"num_tracks_not_writing\"}"),
        Some(2)
    );
    assert!(
        app.wait_stderr("track receives packets and writes no frame"),
        "{}",
        app.stderr()
    );
    // At the webhook.
    let events = poll(Duration::from_secs(10), "track.error at the webhook", || {
        let errors: Vec<Value> = receiver
            .accepted()
            .iter()
            .map(|r| r.json())
            .filter(|e| e["type"] == "track.error")
            .collect();
        (errors.len() == 2).then_some(errors)
    });
    assert!(
        events
            .iter()
            .all(|e| e["data"]["code"] == "NO_DECODABLE_MEDIA" && e["data"]["trackId"].is_string()),
        "{events:#?}"
    );
    // Still asking for a keyframe.
    let requests = |app: &TestApp| -> u64 {
        snapshots_of(&app.debug_tree(), "Stream")
            .iter()
            .filter(|s| s["id"].as_str().is_some_and(|id| id.contains("late-keyframe")))
            .map(|s| s["counters"]["num_keyframe_requests"].as_u64().unwrap())
            .sum()
    };
    let before = requests(&app);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(requests(&app) > before, "the recorder keeps asking for a keyframe");
    // A keyframe at last: the track writes, and the error is withdrawn everywhere.
    send_vp8(&late_socket, late_port, 3.0, false, &mut seq, &mut ts);
    let instance = poll(Duration::from_secs(10), "the error withdrawn", || {
        let instance = app.instance(&event);
        video_track(&instance, "late-keyframe")["storage"]["localStorage"]["error"]
            .is_null()
            .then_some(instance)
    });
    // The other track still cannot write: the instance keeps its error.
    assert_eq!(instance["error"]["code"], "NO_DECODABLE_MEDIA", "{instance:#}");
    assert_eq!(
        metric(&app, "recorder_media_live{counter=\"num_tracks_not_writing\"}"),
        Some(1)
    );
    poll(Duration::from_secs(10), "track.recovered at the webhook", || {
        receiver
            .accepted()
            .iter()
            .any(|r| r.json()["type"] == "track.recovered")
            .then_some(())
    });
    never.join().unwrap();
    app.stop(&event);
    let stopped = app.instance(&event);
    assert_eq!(stopped["state"], "STOPPED");
    let late = video_track(&stopped, "late-keyframe");
    assert!(late["storage"]["localStorage"]["error"].is_null(), "{late:#}");
    let p = probe(&track_file(late));
    assert!(p.first_is_keyframe && p.num_frames >= 59, "{p:?}");
    let never = video_track(&stopped, "never-keyframe");
    assert_eq!(
        never["storage"]["localStorage"]["error"]["code"], "NO_DECODABLE_MEDIA",
        "{never:#}"
    );
    assert_eq!(stopped["error"]["code"], "NO_DECODABLE_MEDIA", "{stopped:#}");
}
