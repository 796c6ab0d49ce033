//! Tests on recorded fixtures: RTP that FFmpeg really sent (`scripts/capture-rtp-fixture.py`),
//! replayed on simulated time through the receiver, then through the FFmpeg writer and joiner,
//! with `ffprobe` checking the files.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::Codec;
use super::join::join_segments;
use super::receiver::{ReceiverConfig, ReceiverOutput, TimedFrame, TrackReceiver};
use super::rtp::{is_rtcp, RtpPacket};
use super::segment::{plan_join, SegmentInfo};
use super::testing::SimRng;
use super::writer::{TrackWriter, WriterConfig};

/// (arrival µs, datagram) records of a fixture.
fn fixture(name: &str) -> Vec<(u64, Bytes)> {
    let bytes: &[u8] = match name {
        "vp8" => include_bytes!("fixtures/vp8.rtp"),
        "vp9" => include_bytes!("fixtures/vp9.rtp"),
        "h264" => include_bytes!("fixtures/h264.rtp"),
        "opus" => include_bytes!("fixtures/opus.rtp"),
        other => panic!("no fixture {other}"),
    };
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 6 {
        let at = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64;
        let len = u16::from_be_bytes([rest[4], rest[5]]) as usize;
        out.push((at, Bytes::copy_from_slice(&rest[6..6 + len])));
        rest = &rest[6 + len..];
    }
    out
}

/// Replays datagrams (arrival µs) into a receiver, polling every 5 ms of simulated time.
fn replay(codec: Codec, datagrams: &[(u64, Bytes)]) -> (Vec<TimedFrame>, usize, TrackReceiver) {
    let t0 = Instant::now();
    let mut rx = TrackReceiver::new(codec, ReceiverConfig::default(), t0, 1_700_000_000_000_000);
    let mut out = Vec::new();
    let end = datagrams.last().map(|(at, _)| *at).unwrap_or(0) + 1_000_000;
    let mut next = 0;
    let mut now_us = 0;
    while now_us <= end {
        while next < datagrams.len() && datagrams[next].0 <= now_us {
            let (at, data) = &datagrams[next];
            let at = t0 + Duration::from_micros(*at);
            if is_rtcp(data) {
                rx.push_rtcp(data);
            } else {
                rx.push_rtp(RtpPacket::parse(data).expect("fixture packets parse"), at, &mut out);
            }
            next += 1;
        }
        rx.poll(t0 + Duration::from_micros(now_us), &mut out);
        now_us += 5_000;
    }
    let requests = out
        .iter()
        .filter(|o| matches!(o, ReceiverOutput::RequestKeyframe { .. }))
        .count();
    let frames = out
        .into_iter()
        .filter_map(|o| match o {
            ReceiverOutput::Frame(f) => Some(f),
            _ => None,
        })
        .collect();
    (frames, requests, rx)
}

fn rtp_only(datagrams: &[(u64, Bytes)]) -> usize {
    datagrams.iter().filter(|(_, d)| !is_rtcp(d)).count()
}

#[test]
fn every_codec_fixture_depacketizes_into_whole_frames_starting_at_a_keyframe() {
    for (name, codec, num_frames) in [
        ("vp8", Codec::Vp8, 60),
        ("vp9", Codec::Vp9, 60),
        ("h264", Codec::H264, 60),
        ("opus", Codec::Opus, 101),
    ] {
        let datagrams = fixture(name);
        let (frames, _, rx) = replay(codec, &datagrams);
        assert_eq!(frames.len(), num_frames, "{name}: {:?}", rx.stats());
        assert!(frames[0].frame.keyframe, "{name}");
        assert_eq!(rx.stats().num_malformed, 0, "{name}");
        assert!(
            rx.stats().num_sender_reports >= 1,
            "{name}: ffmpeg sends a report at start"
        );
        if codec.is_video() {
            assert_eq!(
                frames.iter().filter(|f| f.frame.keyframe).count(),
                2,
                "{name}: gop of 30 in 60 frames"
            );
            let multi = frames.iter().filter(|f| f.frame.num_packets > 1).count();
            assert!(
                multi > 10,
                "{name}: the fixture exercises fragmentation ({multi} multi-packet frames)"
            );
        }
    }
}

#[test]
fn seeded_reorder_and_duplication_change_nothing_and_loss_costs_only_whole_frames() {
    for (name, codec) in [
        ("vp8", Codec::Vp8),
        ("vp9", Codec::Vp9),
        ("h264", Codec::H264),
        ("opus", Codec::Opus),
    ] {
        let datagrams = fixture(name);
        let (clean, _, _) = replay(codec, &datagrams);
        for seed in 1..=10u64 {
            let mut rng = SimRng::new(seed);
            // Reorder by up to 30 ms (inside the window) and duplicate 5%.
            let as_packets: Vec<(u64, RtpPacket)> = datagrams
                .iter()
                .filter(|(_, d)| !is_rtcp(d))
                .map(|(at, d)| (*at / 1000, RtpPacket::parse(d).expect("fixture parses")))
                .collect();
            let shuffled = rng.impair(as_packets.clone(), 0.0, 0.2, 0.05, 30);
            let shuffled: Vec<(u64, Bytes)> = shuffled
                .into_iter()
                .map(|(ms, p)| (ms * 1000, Bytes::from(p.to_bytes())))
                .collect();
            let (frames, _, rx) = replay(codec, &shuffled);
            assert_eq!(frames, clean_without_wall(&clean, &frames), "{name} seed {seed}");
            assert!(rx.stats().reorder.num_duplicates > 0, "{name} seed {seed}");

            // 3% loss: fewer frames, each still byte-identical to one sent, keyframe requested.
            let lossy = rng.impair(as_packets, 0.03, 0.0, 0.0, 1);
            let lossy: Vec<(u64, Bytes)> = lossy
                .into_iter()
                .map(|(ms, p)| (ms * 1000, Bytes::from(p.to_bytes())))
                .collect();
            let (frames, requests, rx) = replay(codec, &lossy);
            let lost = rx.stats().reorder.num_lost;
            assert!(frames.len() <= clean.len(), "{name} seed {seed}");
            for f in &frames {
                let sent = clean.iter().find(|c| c.frame.rtp_timestamp == f.frame.rtp_timestamp);
                assert_eq!(
                    sent.map(|c| &c.frame.data),
                    Some(&f.frame.data),
                    "{name} seed {seed}: no damaged frame"
                );
            }
            if codec.is_video() && lost > 0 {
                // A loss asks for a keyframe, unless the next one was already in the jitter
                // buffer when the gap was given up on (then only the frames between wait). (The
                // start asks for none: the stream begins with a keyframe.)
                let skipped = rx.stats().num_frames_skipped;
                assert!(
                    requests >= 1 || skipped <= 7,
                    "{name} seed {seed}: a loss asks for a keyframe ({requests} requests, {skipped} frames skipped)"
                );
            }
        }
    }
}

/// `clean` with the wall-clock estimates of `other` (arrival-based estimates move with jitter).
fn clean_without_wall(clean: &[TimedFrame], other: &[TimedFrame]) -> Vec<TimedFrame> {
    clean
        .iter()
        .zip(other.iter().map(|f| f.wall_micros).chain(std::iter::repeat(None)))
        .map(|(c, wall)| TimedFrame {
            wall_micros: wall,
            ..c.clone()
        })
        .collect()
}

fn ffprobe(path: &Path, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "0",
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(path: &Path, codec: Codec, frames: &[TimedFrame]) -> super::writer::SegmentReport {
    let writer = TrackWriter::spawn(path.to_path_buf(), codec, WriterConfig::default()).expect("writer starts");
    let sink = writer.sink();
    for f in frames {
        assert!(sink.offer(f.clone()));
    }
    futures_executor::block_on(writer.finish())
}

#[test]
fn recorded_frames_become_files_ffprobe_decodes_whole() {
    let dir = tempfile::tempdir().unwrap();
    for (name, codec, probe_name, ext) in [
        ("vp8", Codec::Vp8, "vp8", "webm"),
        ("vp9", Codec::Vp9, "vp9", "webm"),
        ("h264", Codec::H264, "h264", "mkv"),
        ("opus", Codec::Opus, "opus", "webm"),
    ] {
        let (frames, _, _) = replay(codec, &fixture(name));
        let path = dir.path().join(format!("{name}.{ext}"));
        let report = write(&path, codec, &frames);
        assert_eq!(report.error, None, "{name}");
        assert_eq!(report.info.num_frames, frames.len() as u64, "{name}");
        let probe = ffprobe(&path, "stream=codec_name,nb_read_frames");
        assert_eq!(
            probe,
            format!("{probe_name},{}", frames.len()),
            "{name}: every frame decodes"
        );
        let duration: f64 = ffprobe(&path, "format=duration").parse().unwrap();
        assert!((duration - 2.0).abs() < 0.15, "{name}: duration {duration}");
        if codec.is_video() {
            let first = Command::new("ffprobe")
                .args([
                    "-v",
                    "error",
                    "-select_streams",
                    "0",
                    "-show_entries",
                    "packet=flags",
                    "-read_intervals",
                    "%+#1",
                    "-of",
                    "csv=p=0",
                ])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&first.stdout).starts_with('K'),
                "{name}: first packet is a keyframe"
            );
        }
        assert!(rtp_only(&fixture(name)) > 0);
    }
}

#[test]
fn segments_are_joined_with_the_gap_between_them_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, _, _) = replay(Codec::Vp8, &fixture("vp8"));
    // Two connections: the first second, then (after a 3 s outage) the second second, with a new
    // timestamp base as a new connection would have.
    let (first, second) = frames.split_at(30);
    let second: Vec<TimedFrame> = second
        .iter()
        .map(|f| TimedFrame {
            timestamp: f.timestamp + 77_000_000,
            ..f.clone()
        })
        .collect();
    let a = write(&dir.path().join("t.seg0.webm"), Codec::Vp8, first);
    let b = write(&dir.path().join("t.seg1.webm"), Codec::Vp8, &second);
    let start = 1_700_000_000_000_000i64;
    let segments = vec![
        SegmentInfo {
            started_wall_micros: Some(start),
            ..a.info
        },
        SegmentInfo {
            started_wall_micros: Some(start + 4_000_000),
            ..b.info
        },
    ];
    let plan = plan_join(&segments);
    assert_eq!(plan[1].offset_micros, 4_000_000);
    let out = dir.path().join("t.webm");
    join_segments(&plan, &out, "webm", false).expect("join");
    assert!(
        !dir.path().join("t.seg0.webm").exists(),
        "segments are removed once joined"
    );
    assert_eq!(ffprobe(&out, "stream=codec_name,nb_read_frames"), "vp8,60");
    let duration: f64 = ffprobe(&out, "format=duration").parse().unwrap();
    // 4 s to the start of the second segment, plus its 29 frame intervals.
    assert!((duration - (4.0 + 29.0 / 30.0)).abs() < 0.15, "duration {duration}");
}

#[test]
fn a_file_is_readable_up_to_the_last_flush_while_still_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, _, _) = replay(Codec::Vp8, &fixture("vp8"));
    let path = dir.path().join("live.webm");
    let config = WriterConfig {
        flush_interval: Duration::from_millis(100),
        ..WriterConfig::default()
    };
    let writer = TrackWriter::spawn(path.clone(), Codec::Vp8, config).unwrap();
    let sink = writer.sink();
    for f in &frames[..45] {
        assert!(sink.offer(f.clone()));
    }
    std::thread::sleep(Duration::from_millis(400));
    // The writer has not finished: no trailer, no cues. A copy of the file as it is now stands
    // for what a crash would leave behind.
    let snapshot = dir.path().join("crash.webm");
    std::fs::copy(&path, &snapshot).unwrap();
    let count: usize = ffprobe(&snapshot, "stream=nb_read_frames").parse().unwrap();
    assert!(count >= 44, "{count} of 45 frames readable before finalization");
    let report = futures_executor::block_on(writer.finish());
    assert!(report.error.is_none());
    assert!(writer_stats_flushed(&report));
}

#[test]
fn a_writer_creates_its_file_before_the_first_frame_and_leaves_none_without_frames() {
    // Creating the file is most of what opening a muxer costs; done when the writer joins its
    // pool thread, a first frame finds it there (hundreds of tracks starting at once do not
    // queue behind each other's file creation).
    let dir = tempfile::tempdir().unwrap();
    let (frames, _, _) = replay(Codec::Vp8, &fixture("vp8"));
    let wait_for_file = |path: &Path| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} not created ahead of its first frame",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let path = dir.path().join("t.seg0.webm");
    let writer = TrackWriter::spawn(path.clone(), Codec::Vp8, WriterConfig::default()).unwrap();
    wait_for_file(&path);
    let sink = writer.sink();
    for f in &frames {
        assert!(sink.offer(f.clone()));
    }
    let report = futures_executor::block_on(writer.finish());
    assert!(report.error.is_none(), "{report:?}");
    let count: usize = ffprobe(&path, "stream=nb_read_frames").parse().unwrap();
    assert_eq!(count, frames.len(), "every frame in the file created ahead");
    assert_eq!(ffprobe(&path, "stream=width,height"), "320,240");

    // No frame: the file created ahead is removed at the finish.
    let empty = dir.path().join("t.seg1.webm");
    let writer = TrackWriter::spawn(empty.clone(), Codec::Vp8, WriterConfig::default()).unwrap();
    wait_for_file(&empty);
    let report = futures_executor::block_on(writer.finish());
    assert_eq!(report.info.num_frames, 0);
    assert!(!empty.exists(), "a writer without frames leaves no file");
}

fn writer_stats_flushed(report: &super::writer::SegmentReport) -> bool {
    report.info.num_frames == 45
}

#[test]
fn a_full_writer_queue_drops_frames_without_ever_blocking_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (frames, _, _) = replay(Codec::Vp8, &fixture("vp8"));
    let config = WriterConfig {
        queue_capacity: 1,
        ..WriterConfig::default()
    };
    let writer = TrackWriter::spawn(dir.path().join("slow.webm"), Codec::Vp8, config).unwrap();
    let sink = writer.sink();
    let stats = writer.stats();
    let mut num_offered = 0u64;
    let mut num_refused = 0u64;
    for _ in 0..20 {
        for f in &frames {
            // `offer` answers at once: false when the queue is full (a blocking send would
            // wait for the writer instead, and never refuse).
            if !sink.offer(f.clone()) {
                num_refused += 1;
            }
            num_offered += 1;
        }
    }
    let report = futures_executor::block_on(writer.finish());
    assert!(report.error.is_none());
    let dropped = stats.num_frames_dropped.load(std::sync::atomic::Ordering::Relaxed);
    let queued = stats.num_frames_queued.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        dropped + queued,
        num_offered,
        "every frame is either queued or counted as dropped"
    );
    assert!(dropped > 0, "a one-frame queue under a tight loop overflows");
    assert_eq!(dropped, num_refused, "each refused offer is counted as dropped");
}

#[test]
fn a_segment_carries_its_start_for_recovery_to_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut frames, _, _) = replay(Codec::Opus, &fixture("opus"));
    frames[0].wall_micros = Some(1_700_000_000_123_456);
    let path = dir.path().join("t.seg3.webm");
    let report = write(&path, Codec::Opus, &frames);
    let (codec, num_frames, duration_micros, started) = super::join::probe_segment(&path).expect("probe");
    assert_eq!(codec, Codec::Opus);
    assert_eq!(super::join::probe_codec(&path).expect("header"), Codec::Opus);
    assert_eq!(num_frames, report.info.num_frames);
    assert!(
        (duration_micros - report.info.duration_micros).abs() <= 1_000,
        "{duration_micros} vs {report:?}"
    );
    assert_eq!(started, Some(1_700_000_000_123_456));
}

/// The Opus fixture's RTP packets, and a plain-RTP session of one track that records them into
/// `path` (a receive thread on a loopback port, a writer); returns the port to send to.
fn opus_rtp_session(path: &Path) -> (Vec<Bytes>, u16, super::receive::PlainRtpSession, TrackWriter) {
    use std::net::UdpSocket;
    use std::sync::Arc;

    use super::ingest::{TrackCounters, TrackPump};
    use super::plain_rtp::BoundMedia;
    use super::receive;
    use super::sdp::Accepted;

    let datagrams: Vec<Bytes> = fixture("opus")
        .into_iter()
        .filter(|(_, d)| !is_rtcp(d))
        .map(|(_, d)| d)
        .collect();
    let payload_type = RtpPacket::parse(&datagrams[0]).unwrap().payload_type;
    let writer = TrackWriter::spawn(path.to_path_buf(), Codec::Opus, WriterConfig::default()).unwrap();
    let socket = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let port = socket.local_addr().unwrap().port();
    let bound = BoundMedia {
        accepted: Accepted::new(Codec::Opus, payload_type),
        rtp: socket,
        rtcp: None,
        allowed_source: None,
        latched_source: None,
        greet: None,
        parameter_sets: Vec::new(),
    };
    let now = Instant::now();
    let pump = TrackPump::new(
        "session".into(),
        "track".into(),
        TrackReceiver::new(Codec::Opus, ReceiverConfig::default(), now, 1_700_000_000_000_000),
        writer.sink(),
        Arc::new(TrackCounters::default()),
        Arc::new(|_| {}),
        now,
    );
    let session = receive::start(
        vec![(bound, pump)],
        Duration::from_secs(30),
        &Default::default(),
        &Default::default(),
    )
    .unwrap();
    (datagrams, port, session, writer)
}

/// Stops the session, waits for its receive thread to end, then finishes the writer (the order a
/// stream's stop follows), and checks one Opus frame per packet sent, in the file.
fn stop_and_check_every_packet(
    path: &Path,
    datagrams: &[Bytes],
    session: super::receive::PlainRtpSession,
    writer: TrackWriter,
) {
    for ended in session.stop_and_wait() {
        futures_executor::block_on(ended).expect("the receive thread reports its end");
    }
    let report = futures_executor::block_on(writer.finish());
    assert!(report.error.is_none(), "{:?}", report.error);
    assert_eq!(
        report.info.num_frames,
        datagrams.len() as u64,
        "one Opus frame per packet sent"
    );
    assert_eq!(
        ffprobe(path, "stream=codec_name,nb_read_frames"),
        format!("opus,{}", datagrams.len())
    );
}

/// A plain-RTP receive thread reads in batches while media flows and blocks while it does not:
/// the Opus fixture sent over loopback in a fast burst (many datagrams queued per batch), then
/// after a pause longer than the flowing period (the thread back on blocking reads), the rest.
/// Every packet becomes a frame in the file, in order.
#[test]
fn a_plain_rtp_receive_thread_keeps_every_packet_across_batches_and_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.seg1.webm");
    let (datagrams, port, session, writer) = opus_rtp_session(&path);
    let sender = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let half = datagrams.len() / 2;
    for (i, d) in datagrams.iter().enumerate() {
        if i == half {
            // Longer than the flowing period: the thread goes back to blocking reads.
            std::thread::sleep(Duration::from_millis(600));
        }
        sender.send_to(d, ("127.0.0.1", port)).unwrap();
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The last batch is read and the reorder window passes before the stop.
    std::thread::sleep(Duration::from_millis(800));
    stop_and_check_every_packet(&path, &datagrams, session, writer);
}

/// A stop that comes while datagrams wait in the socket (the thread between two batches) takes
/// them too: the last media before a stop is recorded.
#[test]
fn a_plain_rtp_receive_thread_stopped_with_datagrams_queued_takes_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.seg1.webm");
    let (datagrams, port, session, writer) = opus_rtp_session(&path);
    let sender = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let half = datagrams.len() / 2;
    // The first half paced, so the thread reads in batches; the rest at once, then the stop.
    for d in &datagrams[..half] {
        sender.send_to(d, ("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for d in &datagrams[half..] {
        sender.send_to(d, ("127.0.0.1", port)).unwrap();
    }
    stop_and_check_every_packet(&path, &datagrams, session, writer);
}

#[test]
fn every_writer_of_a_pool_is_fsynced_by_its_sync_thread() {
    // 3 and then 12 writers on a pool of their own (fewer threads than writers): every file is
    // fsynced within a few fsync intervals.
    for num_writers in [3usize, 12] {
        let dir = tempfile::tempdir().unwrap();
        let (frames, _, _) = replay(Codec::Vp8, &fixture("vp8"));
        let config = WriterConfig {
            flush_interval: Duration::from_millis(20),
            fsync_interval: Duration::from_millis(50),
            pool: super::writer::WriterPool::new(2).expect("the writer pool starts"),
            ..WriterConfig::default()
        };
        let writers: Vec<TrackWriter> = (0..num_writers)
            .map(|k| TrackWriter::spawn(dir.path().join(format!("t{k}.webm")), Codec::Vp8, config.clone()).unwrap())
            .collect();
        for writer in &writers {
            for f in &frames[..10] {
                assert!(writer.sink().offer(f.clone()));
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while writers
            .iter()
            .any(|w| w.stats().num_syncs.load(std::sync::atomic::Ordering::Relaxed) == 0)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{num_writers} writers: not all synced"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for writer in writers {
            let stats = writer.stats();
            let report = futures_executor::block_on(writer.finish());
            assert!(report.error.is_none(), "{report:?}");
            assert_eq!(stats.num_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
        }
    }
}
