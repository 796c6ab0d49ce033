//! What mediasoup's PlainTransport (and other SFU forwarders) send: RTP and RTCP on one port
//! (`rtcp-mux`), a transport that sends only once it heard from its peer (`comedia`), and RED
//! audio (RFC 2198, what Chrome sends when offered and SFUs forward as it came) over a path that
//! loses packets: the redundancy fills every loss.

use std::net::UdpSocket;
use std::time::Duration;

use crate::harness::*;

/// An offer as a PlainTransport's: its own address and port, RTP and RTCP muxed.
fn plain_transport_offer(port: u16, lines: &str) -> String {
    format!(
        "v=0\r\no=mediasoup 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP {lines}a=rtcp-mux\r\n"
    )
}

#[test]
fn a_comedia_transport_is_greeted_and_red_audio_fills_every_loss() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("plain-transport");
    let event = app.start(&unique("plain-transport-call"), &conference, true, false);
    let opus = testkit::rtp::Fixture::load("opus");

    // comedia: the transport sends nothing until a datagram from the recorder tells it where to.
    let comedia = UdpSocket::bind("127.0.0.1:0").unwrap();
    let comedia_port = comedia.local_addr().unwrap().port();
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=comedia&type=MIC",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &plain_transport_offer(comedia_port, "111\r\na=rtpmap:111 opus/48000/2\r\n"),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let answer = resp.text();
    assert!(answer.contains("a=rtcp-mux"), "{answer}");
    let answered_port = answer_ports(&answer)[0];
    comedia.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1500];
    let (len, from) = comedia
        .recv_from(&mut buf)
        .expect("the recorder greets a comedia transport");
    assert_eq!(from.port(), answered_port, "greeted from the answered port");
    assert_eq!(buf[1], 201, "an RTCP receiver report: {:?}", &buf[..len]);
    let greeted = std::thread::spawn(move || {
        let mut s = testkit::rtp::ScriptedAudio::from_fixture(&opus, 960, from, None).with_socket(comedia);
        s.send(150, None);
        s.num_frames()
    });

    // RED over a path that loses every 10th packet.
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=red&type=MIC",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &plain_transport_offer(
            9,
            "63 111\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\na=rtpmap:111 opus/48000/2\r\n",
        ),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let answer = resp.text();
    assert!(
        answer.contains("RTP/AVP 63 111") && answer.contains("a=rtpmap:63 red/48000/2"),
        "{answer}"
    );
    let red_port = answer_ports(&answer)[0];
    let opus = testkit::rtp::Fixture::load("opus");
    let mut red =
        testkit::rtp::ScriptedAudio::from_fixture(&opus, 960, format!("127.0.0.1:{red_port}").parse().unwrap(), None)
            .with_red(63)
            .dropping_every(10);
    // 201 frames: the last one sent is not a lost one (nothing after it could carry it).
    red.send(201, None);
    assert!(red.num_dropped() >= 19, "{} dropped", red.num_dropped());
    let comedia_frames = greeted.join().unwrap();
    app.stop(&event);

    let instance = app.instance(&event);
    let all = tracks(&instance);
    let p = assert_track(
        find_track(&all, "comedia", "MIC", "AUDIO"),
        "opus",
        comedia_frames,
        150.0 * 0.020,
    );
    eprintln!("comedia: {p:?}");
    // Every frame, those whose packets were lost from the next packet's redundancy.
    let p = assert_track(
        find_track(&all, "red", "MIC", "AUDIO"),
        "opus",
        red.num_frames(),
        201.0 * 0.020,
    );
    assert_eq!(p.num_frames, 201, "{p:?}");
}

/// A video sender whose offer takes keyframe requests as FIR only (`a=rtcp-fb:96 ccm fir`, no
/// `nack pli`: some SIP video endpoints and MCUs) joins in the middle of a GOP: the recorder asks
/// it for a keyframe with FIRs (RFC 5104), each with a new sequence number, never with a PLI it
/// would ignore.
#[test]
fn a_sender_that_takes_only_fir_is_asked_for_a_keyframe_by_fir() {
    let _media = media_lock();
    let app = TestApp::spawn();
    let conference = unique("fir");
    let event = app.start(&unique("fir-call"), &conference, false, true);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let resp = app.publish(
        "rtp",
        &conference,
        "userId=endpoint&type=CAM",
        &format!("Bearer {KEY}"),
        "application/sdp",
        &format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=video {} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-mux\r\n",
            socket.local_addr().unwrap().port()
        ),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let answer = resp.text();
    assert!(answer.contains("a=rtcp-fb:96 ccm fir\r\n"), "{answer}");
    let to: std::net::SocketAddr = format!("127.0.0.1:{}", answer_ports(&answer)[0]).parse().unwrap();
    // The fixture's packets after its first keyframe: delta frames only, for a second.
    let fixture = testkit::rtp::Fixture::load("vp8");
    let rtp: Vec<&Vec<u8>> = fixture
        .datagrams
        .iter()
        .map(|(_, d)| d)
        .filter(|d| !(192..=223).contains(&d[1]))
        .skip(15)
        .take(60)
        .collect();
    socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let (mut firs, mut plis) = (Vec::new(), 0);
    let mut buf = [0u8; 1500];
    for d in rtp {
        socket.send_to(d, to).unwrap();
        std::thread::sleep(Duration::from_millis(15));
        while let Ok(n) = socket.recv(&mut buf) {
            let fb = &buf[..n];
            if n >= 20 && fb[1] == 206 && fb[0] & 0x1f == 4 {
                firs.push(fb[16]);
            }
            plis += recorder_actors::media::rtp::picture_loss_media_ssrcs(fb).len();
        }
    }
    app.stop(&event);
    assert_eq!(plis, 0, "no PLI for a sender that takes only FIR");
    assert!(firs.len() >= 2, "FIRs asked again while no keyframe came: {firs:?}");
    assert!(
        firs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "a new sequence number each: {firs:?}"
    );
}
