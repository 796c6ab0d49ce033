//! `whip-publish`: a small WHIP publisher on the project's own WebRTC stack (`webrtc` 0.21), for
//! tests, demos and load generation. It replays pre-encoded RTP (VP8 and Opus clips recorded
//! from FFmpeg, looped with continuous sequence numbers and timestamps) in real time.
//!
//! ```text
//! whip-publish URL... [--token KEY] [--seconds N] [--no-audio] [--no-video] [--keep] [--ramp-ms MS]
//!              [--fixtures DIR] [--h264 FMTP] [--rotation DEG]
//! ```
//!
//! Each URL is one publisher (one peer connection); several run at once in this process (the
//! load generator of `scripts/bench-media.py --whip`), the k-th starting k × `--ramp-ms` (default
//! 20) after the first. Prints one JSON line per publisher, in the URLs' order: the session
//! location, how many video/audio frames it sent and the answer's DTLS role, or its error (the exit status is then 1).
//! Without `--keep` each ends its session with DELETE; with it, it just disconnects.
//! `--fixtures DIR` replays `DIR/vp8.rtp` and `DIR/opus.rtp` (the format of
//! `scripts/capture-rtp-fixture.py`) instead of the built-in clips. `--h264 FMTP` offers only
//! H.264 with that `a=fmtp` (e.g. `profile-level-id=640c1f;packetization-mode=1`) and replays
//! `DIR/h264.rtp` (an H.264 capture of that profile). `--rotation DEG` (90, 180, 270) offers the
//! video-orientation extension and sends it on each frame's last packet, as a phone held upright
//! does with its landscape camera's picture.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState,
};

const VP8_CLIP: &[u8] = include_bytes!("../../actors/src/media/fixtures/vp8.rtp");
const OPUS_CLIP: &[u8] = include_bytes!("../../actors/src/media/fixtures/opus.rtp");

struct Handler {
    gathered: tokio::sync::Notify,
    connected: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            self.connected.notify_one();
        }
    }
}

/// RTP packets of a recorded clip (RTCP dropped), with arrival offsets.
struct Clip {
    packets: Vec<(Duration, rtc::rtp::Packet)>,
    duration: Duration,
    ticks: u32,
}

fn clip(bytes: &[u8], frame_ticks: u32) -> Clip {
    use rtc::shared::marshal::Unmarshal;
    let clock: u64 = if frame_ticks == 3000 { 90_000 } else { 48_000 };
    let mut packets = Vec::new();
    let mut rest = bytes;
    let mut first_ts = None;
    while rest.len() >= 6 {
        let len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
        let data = &rest[6..6 + len];
        rest = &rest[6 + len..];
        if (192..=223).contains(&data[1]) {
            continue;
        }
        let mut buf = data;
        if let Ok(p) = rtc::rtp::Packet::unmarshal(&mut buf) {
            // Paced by media time, not by when the recording saw them: what a live encoder
            // sends, so the sender reports' clock matches the packets'.
            let first = *first_ts.get_or_insert(p.header.timestamp);
            let ticks = u64::from(p.header.timestamp.wrapping_sub(first));
            packets.push((Duration::from_micros(ticks * 1_000_000 / clock), p));
        }
    }
    let first = packets[0].1.header.timestamp;
    let last = packets.last().expect("clips are not empty").1.header.timestamp;
    let ticks = last.wrapping_sub(first) + frame_ticks;
    Clip {
        duration: Duration::from_micros(u64::from(ticks) * 1_000_000 / clock),
        packets,
        ticks,
    }
}

fn encoding(kind: RtpCodecKind, codec: RTCRtpCodec, ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "whip-publish".into(),
        format!("whip-publish-{kind}"),
        format!("whip-publish-{kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

/// Sends `clip` looped for `seconds`, in real time; returns the number of frames sent.
async fn play(
    track: Arc<TrackLocalStaticRTP>,
    clip: Clip,
    (ssrc, payload_type): (u32, u8),
    start: Instant,
    seconds: f64,
    orientation: Option<(u8, u8)>,
) -> usize {
    let total = Duration::from_secs_f64(seconds);
    let loops = (total.as_secs_f64() / clip.duration.as_secs_f64()).ceil() as u32;
    let mut seq: u16 = rand::random();
    let ts_base: u32 = rand::random();
    let first_ts = clip.packets[0].1.header.timestamp;
    let mut frames = 0;
    'outer: for k in 0..loops {
        let mut last_ts = None;
        for (at, packet) in &clip.packets {
            let when = clip.duration * k + *at;
            if when >= total {
                break 'outer;
            }
            if let Some(wait) = (start + when).checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
            let mut p = packet.clone();
            p.header.ssrc = ssrc;
            // The payload type the answer gave the codec, whatever the capture had.
            p.header.payload_type = payload_type;
            p.header.sequence_number = seq;
            seq = seq.wrapping_add(1);
            p.header.timestamp = ts_base
                .wrapping_add(packet.header.timestamp.wrapping_sub(first_ts))
                .wrapping_add(clip.ticks * k);
            if last_ts != Some(p.header.timestamp) {
                frames += 1;
                last_ts = Some(p.header.timestamp);
            }
            if let Some((id, byte)) = orientation.filter(|_| p.header.marker) {
                let _ = p.header.set_extension(id, bytes::Bytes::from(vec![byte]));
            }
            if track.write_rtp(p).await.is_err() {
                break 'outer;
            }
        }
    }
    frames
}

/// Status, headers (lower-case names) and body.
type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// Minimal HTTP/1.1 over a plain socket (loopback tests): returns status, headers, body.
fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed response")?;
    let text = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, raw[end + 4..].to_vec()))
}

struct Args {
    urls: Vec<String>,
    ramp: Duration,
    token: Option<String>,
    seconds: f64,
    audio: bool,
    video: bool,
    keep: bool,
    /// The VP8 and Opus clips (the built-in ones unless `--fixtures`).
    vp8: Vec<u8>,
    opus: Vec<u8>,
    /// `--h264`: the fmtp offered, and the clip sent instead of VP8.
    h264: Option<(String, Vec<u8>)>,
    fixtures: Option<std::path::PathBuf>,
    /// `--rotation`: degrees the receiver must turn the picture clockwise.
    rotation: Option<u16>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        urls: Vec::new(),
        ramp: Duration::from_millis(20),
        token: None,
        seconds: 5.0,
        audio: true,
        video: true,
        keep: false,
        vp8: VP8_CLIP.to_vec(),
        opus: OPUS_CLIP.to_vec(),
        h264: None,
        fixtures: None,
        rotation: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--token" => args.token = it.next(),
            "--seconds" => {
                args.seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a number")?
            }
            "--no-audio" => args.audio = false,
            "--no-video" => args.video = false,
            "--keep" => args.keep = true,
            "--ramp-ms" => {
                args.ramp = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_millis)
                    .ok_or("--ramp-ms takes a number")?
            }
            "--fixtures" => {
                let dir = std::path::PathBuf::from(it.next().ok_or("--fixtures takes a directory")?);
                let read = |name: &str| {
                    std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
                };
                if dir.join("vp8.rtp").exists() {
                    args.vp8 = read("vp8.rtp")?;
                }
                args.opus = read("opus.rtp").unwrap_or_else(|_| OPUS_CLIP.to_vec());
                args.fixtures = Some(dir);
            }
            "--rotation" => {
                args.rotation = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|d| [0, 90, 180, 270].contains(d))
                        .ok_or("--rotation takes 0, 90, 180 or 270")?,
                )
            }
            "--h264" => args.h264 = Some((it.next().ok_or("--h264 takes an fmtp line")?, Vec::new())),
            url if !url.starts_with("--") => args.urls.push(url.to_string()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if let Some((_, clip)) = args.h264.as_mut() {
        let dir = args
            .fixtures
            .as_ref()
            .ok_or("--h264 needs --fixtures DIR holding h264.rtp")?;
        *clip = std::fs::read(dir.join("h264.rtp")).map_err(|e| format!("{}/h264.rtp: {e}", dir.display()))?;
    }
    if args.urls.is_empty() {
        return Err(
            "usage: whip-publish URL... [--token KEY] [--seconds N] [--no-audio] [--no-video] [--keep] [--ramp-ms MS] [--fixtures DIR] [--h264 FMTP]"
                .into(),
        );
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match args() {
        Ok(args) => Arc::new(args),
        Err(e) => {
            eprintln!("whip-publish: {e}");
            std::process::exit(2);
        }
    };
    let publishers: Vec<_> = (0..args.urls.len())
        .map(|k| {
            let args = args.clone();
            tokio::spawn(async move {
                tokio::time::sleep(args.ramp * k as u32).await;
                publish(&args, &args.urls[k]).await
            })
        })
        .collect();
    let mut failed = false;
    for (k, publisher) in publishers.into_iter().enumerate() {
        let outcome = publisher.await.unwrap_or_else(|e| Err(format!("publisher task: {e}")));
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failed = true;
                eprintln!("whip-publish {}: {e}", args.urls[k]);
                println!("{}", serde_json::json!({"url": args.urls[k], "error": e}));
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// One publisher on `url`: its JSON line.
async fn publish(args: &Args, url: &str) -> Result<String, String> {
    let e = |e: webrtc::error::Error| e.to_string();
    let vp8 = RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    };
    let opus = RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    };
    let (video_codec, video_pt) = match &args.h264 {
        Some((fmtp, _)) => (
            RTCRtpCodec {
                mime_type: MIME_TYPE_H264.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: fmtp.clone(),
                rtcp_feedback: vec![],
            },
            102,
        ),
        None => (vp8, 96),
    };
    let mut engine = MediaEngine::default();
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: video_codec.clone(),
                payload_type: video_pt,
            },
            RtpCodecKind::Video,
        )
        .map_err(e)?;
    engine
        .register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus.clone(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )
        .map_err(e)?;
    if args.rotation.is_some() {
        engine
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: "urn:3gpp:video-orientation".into(),
                },
                RtpCodecKind::Video,
                None,
            )
            .map_err(e)?;
    }
    let registry = register_default_interceptors(rtc::interceptor::Registry::new(), &mut engine).map_err(e)?;
    let settings = SettingEngineBuilder::new()
        .with_include_loopback_candidate(true)
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let handler = Arc::new(Handler {
        gathered: tokio::sync::Notify::new(),
        connected: tokio::sync::Notify::new(),
    });
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(handler.clone() as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .map_err(e)?;
    let (video_ssrc, audio_ssrc) = (rand::random::<u32>(), rand::random::<u32>());
    let video_track = Arc::new(TrackLocalStaticRTP::new(encoding(
        RtpCodecKind::Video,
        video_codec,
        video_ssrc,
    )));
    let audio_track = Arc::new(TrackLocalStaticRTP::new(encoding(
        RtpCodecKind::Audio,
        opus,
        audio_ssrc,
    )));
    if args.video {
        pc.add_track(video_track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(e)?;
    }
    if args.audio {
        pc.add_track(audio_track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(e)?;
    }
    let offer = pc.create_offer(None).await.map_err(e)?;
    let gathered = handler.gathered.notified();
    pc.set_local_description(offer).await.map_err(e)?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered).await;
    let offer = pc.local_description().await.ok_or("no local description")?;
    let auth = args.token.as_ref().map(|t| format!("Bearer {t}"));
    let post_url = url.to_string();
    let body = offer.sdp.clone();
    let post_auth = auth.clone();
    let (status, resp_headers, answer) = tokio::task::spawn_blocking(move || {
        let mut headers = vec![("Content-Type", "application/sdp")];
        if let Some(auth) = &post_auth {
            headers.push(("Authorization", auth.as_str()));
        }
        http("POST", &post_url, &headers, body.as_bytes())
    })
    .await
    .map_err(|e| e.to_string())??;
    if status != 201 {
        return Err(format!("POST answered {status}: {}", String::from_utf8_lossy(&answer)));
    }
    let location = resp_headers
        .iter()
        .find(|(n, _)| n == "location")
        .map(|(_, v)| v.clone())
        .ok_or("no Location")?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    // The answerer's DTLS role (`a=setup:`), reported with the result.
    let dtls_setup = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=setup:"))
        .unwrap_or("")
        .to_string();
    // The id the answer kept for the orientation extension, and the byte it carries.
    let orientation = args.rotation.and_then(|deg| {
        let id = answer.lines().find_map(|l| {
            let rest = l.trim_end().strip_prefix("a=extmap:")?;
            let (id, uri) = rest.split_once(' ')?;
            (uri.trim() == "urn:3gpp:video-orientation").then(|| id.split('/').next()?.parse::<u8>().ok())?
        })?;
        Some((id, (deg / 90) as u8))
    });
    let answer = RTCSessionDescription::answer(answer).map_err(e)?;
    let connected = handler.connected.notified();
    pc.set_remote_description(answer).await.map_err(e)?;
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .map_err(|_| "not connected within 10 s")?;
    let start = Instant::now() + Duration::from_millis(20);
    let video = args.video.then(|| {
        let video_clip = args.h264.as_ref().map_or(&args.vp8, |(_, clip)| clip);
        tokio::spawn(play(
            video_track,
            clip(video_clip, 3000),
            (video_ssrc, video_pt),
            start,
            args.seconds,
            orientation,
        ))
    });
    let audio = args.audio.then(|| {
        tokio::spawn(play(
            audio_track,
            clip(&args.opus, 960),
            (audio_ssrc, 111),
            start,
            args.seconds,
            None,
        ))
    });
    let video_frames = match video {
        Some(h) => h.await.unwrap_or(0),
        None => 0,
    };
    let audio_frames = match audio {
        Some(h) => h.await.unwrap_or(0),
        None => 0,
    };
    // Let the last packets (and any retransmissions) get through before leaving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if !args.keep {
        let base = url.split('/').take(3).collect::<Vec<_>>().join("/");
        let delete_url = format!("{base}{location}");
        let auth = auth.clone();
        let (status, _, body) = tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
            http("DELETE", &delete_url, &headers, b"")
        })
        .await
        .map_err(|e| e.to_string())??;
        if status != 200 {
            return Err(format!("DELETE answered {status}: {}", String::from_utf8_lossy(&body)));
        }
    }
    let _ = pc.close().await;
    Ok(serde_json::json!({
        "location": location,
        "videoFrames": video_frames,
        "audioFrames": audio_frames,
        "seconds": args.seconds,
        "dtlsSetup": dtls_setup,
    })
    .to_string())
}
