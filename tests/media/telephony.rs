//! Phone legs as a SIP gateway bridges them in: G.711 μ-law and A-law and G.722 offered by
//! static payload type with `telephone-event` beside them, sent by the FFmpeg CLI, recorded as
//! sent (checked with ffprobe) and mixed into the composition and the stereo file; DTMF digits
//! never written anywhere.

use std::time::Duration;

use crate::harness::*;
use crate::stereo::{download_stereo, goertzel, samples};

/// A SIP gateway's offer: one audio m-line, the codec by static payload type and no rtpmap for
/// it, DTMF as RFC 4733 events beside it.
fn gateway_offer(payload_type: u8) -> String {
    format!(
        "v=0\r\no=gateway 1 1 IN IP4 127.0.0.1\r\ns=call\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 9 RTP/AVP {payload_type} 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendonly\r\n"
    )
}

/// FFmpeg sending a tone as `codec` (pcm_mulaw, pcm_alaw, g722) over RTP in 20 ms packets.
fn phone_leg(codec: &str, hz: u32, seconds: u32, port: u16) -> std::process::Child {
    let rate = if codec == "g722" { 16_000 } else { 8_000 };
    let samples_per_packet = rate / 50;
    ffmpeg(&args(&[
        "-re",
        "-f",
        "lavfi",
        "-i",
        &format!("sine=frequency={hz}:sample_rate={rate}:duration={seconds}:samples_per_frame={samples_per_packet}"),
        "-c:a",
        codec,
        "-ar",
        &rate.to_string(),
        "-f",
        "rtp",
        &format!("rtp://127.0.0.1:{port}"),
    ]))
}

#[test]
fn g711_and_g722_phone_legs_are_recorded_as_sent_and_mixed_into_the_stereo_file() {
    let _media = media_lock();
    let app = TestApp::spawn_uploading();
    let conversation = unique("phone");
    let conference = unique("room");
    let event = app.start(&conversation, &conference, true, false);
    let key = format!("Bearer {KEY}");
    // (user, role, static payload type, FFmpeg codec, tone, ffprobe's codec name)
    let legs = [
        ("agent-1", "AGENT", 0u8, "pcm_mulaw", 440, "pcm_mulaw"),
        ("cust-1", "CUSTOMER", 9, "g722", 1000, "adpcm_g722"),
        ("cust-2", "CUSTOMER", 8, "pcm_alaw", 1000, "pcm_alaw"),
    ];
    let seconds = 10;
    let mut senders = Vec::new();
    for (user, role, pt, codec, hz, _) in legs {
        let resp = app.publish(
            "rtp",
            &conference,
            &format!("userId={user}&type=MIC&role={role}"),
            &key,
            "application/sdp",
            &gateway_offer(pt),
        );
        assert_eq!(resp.status, 201, "{user}: {}", resp.text());
        let answer = resp.text();
        assert!(
            answer.contains(&format!(" RTP/AVP {pt} 101\r\n")) && answer.contains("a=rtpmap:101 telephone-event/8000"),
            "{user}: the answer takes the codec and DTMF events: {answer}"
        );
        senders.push(phone_leg(codec, hz, seconds, answer_ports(&answer)[0]));
    }
    for (i, s) in senders.into_iter().enumerate() {
        wait_ok(s, &format!("phone leg {i}"));
    }
    app.stop(&event);
    // Checked once stored (the local copies go once uploaded and composed).
    let instance = poll(Duration::from_secs(60), "every track uploaded", || {
        let instance = app.instance(&event);
        tracks(&instance)
            .iter()
            .all(|(_, _, _, t)| t["storage"]["objectStorage"]["uploaded"].is_string())
            .then_some(instance)
    });
    let all = tracks(&instance);
    for (user, _, _, _, _, probed) in legs {
        let mut track = find_track(&all, user, "MIC", "AUDIO").clone();
        let stored = track["storage"]["objectStorage"]["location"]
            .as_str()
            .unwrap()
            .replace("file://", "");
        track["storage"]["localStorage"]["location"] = stored.into();
        let track = &track;
        // 20 ms packets: 50 a second; the file as long as what was sent.
        let p = assert_track(track, probed, u64::from(seconds) * 50, f64::from(seconds));
        assert!(
            track_file(track).extension().is_some_and(|e| e == "mkv"),
            "telephony audio goes to Matroska: {track}"
        );
        eprintln!("{user}: {p:?}");
    }
    // The stereo file: the agent's μ-law on the left, the customers' G.722 and A-law on the
    // right, each decoded and resampled into the mix.
    let message = wait_composed(&app, &conversation, &event["instanceId"]);
    let dir = tempfile::tempdir().unwrap();
    let stereo = download_stereo(&app, &message, dir.path());
    let (left, right) = (samples(&stereo, Some(0)), samples(&stereo, Some(1)));
    let (from, to) = (2 * 48_000, 7 * 48_000);
    let (l, r) = (&left[from..to], &right[from..to]);
    assert!(
        goertzel(l, 440.0) > 1000.0 * goertzel(l, 1000.0).max(1e-12),
        "left: the agent's tone"
    );
    assert!(
        goertzel(r, 1000.0) > 1000.0 * goertzel(r, 440.0).max(1e-12),
        "right: the customers' tone"
    );
    let composition = app
        .root
        .join("storage/org-a/app-a")
        .join(&conversation)
        .join("composition.mp4");
    let mix = samples(&composition, None);
    let m = &mix[from..to];
    assert!(
        goertzel(m, 440.0) > 1e-4 && goertzel(m, 1000.0) > 1e-4,
        "the composition mixes both legs"
    );
}

/// RFC 4733 events between the audio packets (a caller typing a card number into an IVR) are
/// taken in sequence, counted as packets, and never written: the file holds exactly the audio
/// frames, and neither the log, the debug tree nor /metrics names a digit.
#[test]
fn dtmf_digits_are_never_written_anywhere() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("ivr");
    let event = app.start(&unique("ivr-call"), &conference, true, false);
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=caller&type=MIC&role=customer",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &gateway_offer(0),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let port = answer_ports(&resp.text())[0];
    // μ-law silence-free payloads: a steady 0x55 pattern, 160 bytes (20 ms) each.
    let mut sender = testkit::rtp::ScriptedAudio::new(
        vec![vec![0x55u8; 160]],
        0,
        160,
        8_000,
        format!("127.0.0.1:{port}").parse().unwrap(),
        None,
    );
    // 150 frames with a digit event after every 10th: 15 events for digits 4, 1, 1, 1, ...
    for digit in [4u8, 1, 1, 1, 7] {
        sender.send(30, Some((digit, 10)));
    }
    let sent = sender.num_frames();
    std::thread::sleep(Duration::from_millis(300));
    let tracks_tree = snapshots_of(&app.debug_tree(), "Track");
    let metrics = app
        .request(
            "GET",
            &format!("{}/metrics", app.base_url),
            &[("Authorization", KEY_ADMIN)],
            None,
        )
        .text();
    app.stop(&event);
    let instance = app.instance(&event);
    let all = tracks(&instance);
    let track = find_track(&all, "caller", "MIC", "AUDIO");
    let p = probe(&track_file(track));
    assert_eq!(
        (p.codec.as_str(), p.num_frames),
        ("pcm_mulaw", sent),
        "only the audio frames: {track}"
    );
    let log = app.stderr();
    for text in [
        log.as_str(),
        &tracks_tree.iter().map(|t| t.to_string()).collect::<String>(),
        metrics.as_str(),
    ] {
        for needle in ["telephone-event", "dtmf", "digit"] {
            assert!(
                !text.to_ascii_lowercase().contains(needle),
                "{needle:?} appears where digits must not: {}",
                &text[..text.len().min(2000)]
            );
        }
    }
}

/// The gaps (start, seconds) longer than `min` between a file's packets.
fn gaps(times: &[f64], min: f64) -> Vec<(f64, f64)> {
    times
        .windows(2)
        .filter(|w| w[1] - w[0] > min)
        .map(|w| (w[0], w[1] - w[0]))
        .collect()
}

/// Silence is not the end of a track. Three publishers of one call, at once: each sends 3 s of
/// Opus, nothing for 15 s (an agent on mute, a customer on hold), then 5 s more from the same
/// port: one as a new FFmpeg process (a new SSRC, sequence and timestamp base), one on the same
/// SSRC whose RTP clock jumped 10 minutes ahead (after an RTCP BYE), one whose clock went back
/// 5 s. Each ends as one track holding both halves with the 15 s as a gap, and while they are
/// silent their sessions stay bound and say how long they have been silent.
#[test]
fn hold_mute_new_ssrc_and_clock_jumps_keep_one_track_with_the_silence_as_a_gap() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("hold");
    let event = app.start(&unique("hold-call"), &conference, true, false);
    let key = format!("Bearer {KEY}");
    let publish = |user: &str| {
        let resp = app.publish(
            "rtp",
            &conference,
            &format!("userId={user}&type=MIC"),
            &key,
            "application/sdp",
            &rtp_offer(&[("audio", 111, "opus/48000/2")]),
        );
        assert_eq!(resp.status, 201, "{}", resp.text());
        let answer = resp.text();
        (answer_ports(&answer)[0], testkit::rtp::answer_ports(&answer)[0].1)
    };
    let (ssrc_port, _) = publish("new-ssrc");
    let (ahead_port, ahead_rtcp) = publish("clock-ahead");
    let (back_port, _) = publish("clock-back");
    let hold = Duration::from_secs(15);

    // A new FFmpeg from the same local port after the hold: a new SSRC, sequence and clock.
    let local = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let ffmpeg_leg = move |seconds: u32| {
        let mut a = args(&[
            "-re",
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate=48000:duration={seconds}"),
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
            "-payload_type",
            "111",
            "-f",
            "rtp",
        ]);
        a.push(format!("rtp://127.0.0.1:{ssrc_port}?localrtpport={local}"));
        a
    };
    let new_ssrc = std::thread::spawn(move || {
        let first = std::time::Instant::now();
        wait_ok(ffmpeg(&ffmpeg_leg(3)), "first half");
        std::thread::sleep(hold);
        let second = std::time::Instant::now();
        wait_ok(ffmpeg(&ffmpeg_leg(5)), "second half");
        second.duration_since(first)
    });
    let opus = testkit::rtp::Fixture::load("opus");
    let scripted = |port: u16, rtcp: Option<u16>, jump_secs: i64| {
        let opus = opus.clone();
        std::thread::spawn(move || {
            let rtcp = rtcp.map(|p| format!("127.0.0.1:{p}").parse().unwrap());
            let mut s = testkit::rtp::ScriptedAudio::from_fixture(
                &opus,
                960,
                format!("127.0.0.1:{port}").parse().unwrap(),
                rtcp,
            );
            s.send(150, None);
            s.bye();
            s.hold(hold, false);
            s.jump_clock(jump_secs * 48_000);
            s.send(250, None);
            let b = s.bursts();
            (s.num_frames(), b[1].first_sent.duration_since(b[0].last_sent))
        })
    };
    let ahead = scripted(ahead_port, ahead_rtcp, 600);
    let back = scripted(back_port, None, -5);

    // In the middle of the hold every session is bound and says it is silent.
    std::thread::sleep(Duration::from_secs(3 + 10));
    let streams = stream_snapshots(&app.debug_tree());
    assert_eq!(streams.len(), 3, "{streams:#?}");
    for s in &streams {
        let c = &s["counters"];
        assert_eq!(c["connected"], 1, "a silent session stays bound: {s}");
        assert!(c["session_silent_ms"].as_u64() >= Some(8_000), "{s}");
        assert_eq!(c["session_idle_limit_ms"], 1_800_000, "{s}");
    }
    let ssrc_start_gap = new_ssrc.join().unwrap();
    let (ahead_frames, ahead_gap) = ahead.join().unwrap();
    let (back_frames, back_gap) = back.join().unwrap();
    app.stop(&event);

    // The review timeline shows each hold where it was.
    let conversation = event["conversationId"].as_str().unwrap();
    let link = app.get(&format!("/recordings/{conversation}/url/review"), KEY);
    assert_eq!(link.status, 200, "{}", link.text());
    let url = link.json()["url"].as_str().unwrap().replacen('?', "/data?", 1);
    let data = app.request("GET", &url, &[], None);
    assert_eq!(data.status, 200, "{}", data.text());
    let data = data.json();
    let silences = data["instances"][0]["silences"].as_array().cloned().unwrap_or_default();
    for user in ["new-ssrc", "clock-ahead", "clock-back"] {
        let spans: Vec<&serde_json::Value> = silences.iter().filter(|s| s["userId"] == user).collect();
        assert_eq!(spans.len(), 1, "{user}: one hold on the timeline: {silences:#?}");
        let seconds = spans[0]["end"].as_f64().unwrap() - spans[0]["start"].as_f64().unwrap();
        assert!(
            (seconds - 15.0).abs() < 0.5,
            "{user}: a {seconds:.2} s hold on the timeline"
        );
    }

    let instance = app.instance(&event);
    let all = tracks(&instance);
    assert_eq!(all.len(), 3, "one track each: {all:#?}");
    for (user, frames, gap) in [
        ("clock-ahead", ahead_frames, ahead_gap.as_secs_f64()),
        ("clock-back", back_frames, back_gap.as_secs_f64()),
    ] {
        let track = find_track(&all, user, "MIC", "AUDIO");
        let path = track_file(track);
        let p = probe(&path);
        assert_eq!(
            (p.codec.as_str(), p.num_frames),
            ("opus", frames),
            "{user}: every frame, both halves: {track}"
        );
        let times = testkit::probe::packet_times(&path);
        let found = gaps(&times, 1.0);
        assert_eq!(found.len(), 1, "{user}: one gap: {found:?}");
        let (at, seconds) = found[0];
        // The gap spans from the last frame before the hold to the first after: the silence
        // plus one frame, within a frame of what the sender did.
        assert!((at - 2.98).abs() <= 0.021, "{user}: the gap starts after 3 s, at {at}");
        assert!(
            (seconds - (gap + 0.020)).abs() <= 0.040,
            "{user}: a {seconds:.3} s gap for {gap:.3} s of silence"
        );
        assert!(
            (p.duration - (3.0 + gap + 5.0)).abs() <= 0.040,
            "{user}: {} s long, sent {:.3} s",
            p.duration,
            3.0 + gap + 5.0
        );
    }
    let track = find_track(&all, "new-ssrc", "MIC", "AUDIO");
    let path = track_file(track);
    let p = probe(&path);
    assert_eq!(
        p.num_frames,
        ffmpeg_opus_frames(3) + ffmpeg_opus_frames(5),
        "both halves: {track}"
    );
    let found = gaps(&testkit::probe::packet_times(&path), 1.0);
    assert_eq!(found.len(), 1, "one gap: {found:?}");
    // The second FFmpeg started `ssrc_start_gap` after the first; each sends from its start.
    let expected = ssrc_start_gap.as_secs_f64() - 3.0;
    assert!(
        (found[0].1 - expected).abs() <= 0.3,
        "a {:.3} s gap where FFmpeg paused {expected:.3} s (process start-up included)",
        found[0].1
    );
}
