//! Bad input at every door — signalling and UDP — while a recording runs: clean errors, no panic,
//! the recording unaffected.

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[test]
fn bad_offers_tokens_and_packets_are_refused_and_the_recording_goes_on() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("room");
    let event = app.start(&unique("call"), &conference, true, true);
    let bearer = format!("Bearer {KEY}");

    // A recording in progress that everything below must leave alone.
    let ok = app.publish(
        "rtp",
        &conference,
        "userId=agent&type=CAM",
        &bearer,
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000")]),
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    let port = answer_ports(&ok.text())[0];
    let mut a = lavfi_video(5);
    a.extend(rtp_out("0", "vp8", 96, port));
    let sender = ffmpeg(&a);

    // Signalling: each a clean error with the spec's Error body.
    let q = "userId=x&type=SCREEN";
    for transport in ["rtp", "whip"] {
        app.publish(transport, &conference, q, &bearer, "application/sdp", "this is not sdp")
            .assert_error(400);
        app.publish(
            transport,
            &conference,
            q,
            &bearer,
            "application/sdp",
            "v=0\r\nm=video 9 RTP/AVP\r\n",
        )
        .assert_error(400);
        app.publish(transport, &conference, q, &bearer, "application/json", "{}")
            .assert_error(415);
        app.publish(transport, &conference, q, &bearer, "application/sdp", "")
            .assert_error(400);
        app.publish(
            transport,
            "no-such-conference",
            q,
            &bearer,
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        )
        .assert_error(404);
        app.publish(
            transport,
            &conference,
            q,
            "Bearer not-a-key",
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        )
        .assert_error(401);
        app.publish(
            transport,
            &conference,
            q,
            "Bearer pt1.forged.token",
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        )
        .assert_error(401);
        // Another organization's key does not see this conference.
        app.publish(
            transport,
            &conference,
            q,
            &format!("Bearer {KEY_OTHER_ORG}"),
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        )
        .assert_error(404);
        app.publish(
            transport,
            &conference,
            "type=CAM",
            &bearer,
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        )
        .assert_error(400);
        app.publish(
            transport,
            &conference,
            "userId=x&type=BOGUS",
            &bearer,
            "application/sdp",
            &rtp_offer(&[("video", 96, "VP8/90000")]),
        )
        .assert_error(400);
    }
    // Two video m-lines in one WHIP session: refused, not half recorded.
    let two_videos = rtp_offer(&[("video", 96, "VP8/90000"), ("video", 97, "VP8/90000")]);
    let body = app
        .publish("whip", &conference, q, &bearer, "application/sdp", &two_videos)
        .assert_error(400);
    assert!(
        body["message"].as_str().unwrap().contains("more than one video"),
        "{body}"
    );
    // Only an unknown codec: nothing can be recorded.
    let body = app
        .publish(
            "rtp",
            &conference,
            q,
            &bearer,
            "application/sdp",
            &rtp_offer(&[("audio", 18, "G729/8000")]),
        )
        .assert_error(400);
    assert!(
        body["message"].as_str().unwrap().contains("unsupported codec"),
        "{body}"
    );
    app.publish(
        "whip",
        &conference,
        q,
        &bearer,
        "application/sdp",
        &rtp_offer(&[("audio", 0, "PCMU/8000")]),
    )
    .assert_error(400);
    // An unknown codec beside a known one: refused in the answer (port 0), not dropped silently.
    let mixed = app.publish(
        "rtp",
        &conference,
        "userId=y&type=CAM",
        &bearer,
        "application/sdp",
        &rtp_offer(&[("audio", 18, "G729/8000"), ("audio", 111, "opus/48000/2")]),
    );
    assert_eq!(mixed.status, 201, "{}", mixed.text());
    let ports = answer_ports(&mixed.text());
    assert_eq!(ports[0], 0, "{}", mixed.text());
    assert_ne!(ports[1], 0, "{}", mixed.text());
    // Trickle ICE is not supported.
    let patch = app.request(
        "PATCH",
        &app.api(&format!("/media/whip/{conference}/whatever")),
        &[("Authorization", &bearer)],
        Some(b"a=candidate"),
    );
    patch.assert_error(405);
    assert_eq!(patch.header("allow"), Some("DELETE"));
    // Publish tokens: bound to their user, and to their instance.
    let token = app
        .post_json(
            &format!("{}/publish-token", instance_path(&event)),
            KEY,
            &json!({"userId": "only-me"}),
        )
        .json();
    let token = format!("Bearer {}", token["token"].as_str().unwrap());
    app.publish(
        "rtp",
        &conference,
        "userId=someone-else",
        &token,
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000")]),
    )
    .assert_error(403);
    app.post_json(
        &format!("{}/publish-token", instance_path(&event)),
        KEY,
        &json!({"ttlSecs": 0}),
    )
    .assert_error(400);
    app.post_json(
        &format!("{}/publish-token", instance_path(&event)),
        KEY_OTHER_ORG,
        &json!({}),
    )
    .assert_error(404);

    // UDP: garbage, oversized datagrams and a second source aimed at the recording's port.
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = ("127.0.0.1", port);
    // The real sender has latched the port once its frames are written.
    poll(Duration::from_secs(15), "the agent's frames written", || {
        stream_snapshots(&app.debug_tree())
            .iter()
            .find(|s| s["id"].as_str().unwrap().contains(" agent "))
            .filter(|s| s["counters"]["num_frames_written"].as_u64() > Some(0))
            .map(|_| ())
    });
    // Paced: a burst would overflow the socket buffer and be dropped by the kernel, uncounted.
    for i in 0..200u32 {
        std::thread::sleep(Duration::from_millis(2));
        let _ = intruder.send_to(&i.to_be_bytes(), target);
        let _ = intruder.send_to(&vec![0x80; 9000], target);
        let mut fake = vec![0x80, 96];
        fake.extend_from_slice(&(i as u16).to_be_bytes());
        fake.extend_from_slice(&[0; 8]);
        fake.extend_from_slice(b"\x10\x00garbage");
        let _ = intruder.send_to(&fake, target);
    }
    // Garbage on a port whose m-line was never sent to: nothing in it is RTP of the accepted
    // payload type, so it never latches the port and every datagram is refused.
    for i in 0..100u32 {
        std::thread::sleep(Duration::from_millis(1));
        let _ = intruder.send_to(&[0xff; 40], ("127.0.0.1", ports[1]));
        let _ = intruder.send_to(&(i as u64).to_be_bytes(), ("127.0.0.1", ports[1]));
    }
    // Counters are published every 250 ms: wait until the refusals show.
    let streams = poll(Duration::from_secs(10), "the intruder's datagrams refused", || {
        let streams = stream_snapshots(&app.debug_tree());
        let refused = |name: &str, at_least: u64| {
            streams
                .iter()
                .find(|s| s["id"].as_str().unwrap().contains(name))
                .is_some_and(|s| s["counters"]["num_refused"].as_u64() >= Some(at_least))
        };
        // 600 datagrams from a second source: (nearly) all counted as refused, none recorded.
        (refused(" agent ", 500) && refused(" y ", 150)).then_some(streams)
    });
    let y = streams
        .iter()
        .find(|s| s["id"].as_str().unwrap().contains(" y "))
        .expect("stream y");
    assert_eq!(
        y["counters"]["num_malformed"].as_u64(),
        Some(0),
        "garbage reached the depacketizer: {y}"
    );

    wait_ok(sender, "ffmpeg");
    app.stop(&event);
    let health = app.request("GET", &format!("{}/health", app.base_url), &[], None);
    assert_eq!(health.status, 200, "the service survived: {}", app.stderr());
    assert!(!app.stderr().contains("panicked"), "{}", app.stderr());
    let all = tracks(&app.instance(&event));
    assert_track(find_track(&all, "agent", "CAM", "VIDEO"), "vp8", 150, 5.0 - 1.0 / 30.0);
    // Stopped: publishing is over for this instance.
    app.publish(
        "rtp",
        &conference,
        q,
        &bearer,
        "application/sdp",
        &rtp_offer(&[("video", 96, "VP8/90000")]),
    )
    .assert_error(404);
}
