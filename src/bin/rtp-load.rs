//! A plain-RTP load generator for the media benchmark (`scripts/bench-media.py`): replays the
//! pre-encoded VP8 + Opus clips of `actors/src/media/fixtures` (looped, with continuous sequence
//! numbers and timestamps) in real time to many destinations at once, batching every packet due
//! at one moment into `sendmmsg` calls, so one core drives thousands of streams (the Python
//! sender it replaces stopped near 250).
//!
//! usage: rtp-load --fixtures DIR --seconds S --targets FILE [--no-pli]
//! FILE holds one destination per line: `<video port> <audio port>` on 127.0.0.1. Each
//! destination gets its own SSRCs and sequence numbers; every destination gets the same frames.
//! Prints one JSON line: frames sent per destination, packets, how late the worst batch left,
//! the keyframe requests answered, and the generator's own CPU seconds.
//!
//! Like a live encoder, each destination answers the recorder's keyframe requests (RTCP PLI,
//! sent back to the generator's socket, naming the destination's video SSRC): its next video
//! frame is the clip's next keyframe, and it goes on from there. The frame takes the place of
//! the one due, so the frames sent per destination do not change. `--no-pli` ignores requests
//! (a replayed file: after a restart the recorder then waits for the clip's own next keyframe).

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

struct Packet {
    /// Media time of the packet from the clip's start, seconds.
    at: f64,
    data: Vec<u8>,
}

/// A clip's RTP packets (RTCP dropped), paced by their media time; its length in seconds and ticks.
fn clip(path: &std::path::Path, clock: u32, frame_ticks: u32) -> std::io::Result<(Vec<Packet>, f64, u32)> {
    let data = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut first: Option<u32> = None;
    let mut last = 0u32;
    let mut i = 0usize;
    while i + 6 <= data.len() {
        let length = u16::from_be_bytes([data[i + 4], data[i + 5]]) as usize;
        let Some(pkt) = data.get(i + 6..i + 6 + length) else {
            break;
        };
        i += 6 + length;
        if pkt.len() < 12 || (192..=223).contains(&pkt[1]) {
            continue;
        }
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let first = *first.get_or_insert(ts);
        last = ts;
        out.push(Packet {
            at: f64::from(ts.wrapping_sub(first)) / f64::from(clock),
            data: pkt.to_vec(),
        });
    }
    let ticks = last.wrapping_sub(first.unwrap_or(0)).wrapping_add(frame_ticks);
    Ok((out, f64::from(ticks) / f64::from(clock), ticks))
}

/// One video frame of the clip: its packets (a range of the clip's) and whether it is a keyframe.
struct Frame {
    packets: std::ops::Range<usize>,
    key: bool,
}

fn rtp_ts(packet: &[u8]) -> u32 {
    u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]])
}

/// Whether an RTP packet of the clip starts a VP8 keyframe (the recorder's own parsers).
fn starts_keyframe(packet: &[u8]) -> bool {
    use recorder_actors::media::depacketize::{PayloadFormat, Vp8Depacketizer};
    recorder_actors::media::rtp::RtpPacket::parse(packet)
        .ok()
        .and_then(|p| Vp8Depacketizer.parse(&p.payload).ok())
        .is_some_and(|part| part.keyframe)
}

/// The clip's video packets grouped into frames (one RTP timestamp each).
fn video_frames(video: &[Packet]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = Vec::new();
    for (k, packet) in video.iter().enumerate() {
        let same = frames
            .last()
            .is_some_and(|f| rtp_ts(&video[f.packets.start].data) == rtp_ts(&packet.data));
        if same {
            frames.last_mut().expect("checked").packets.end = k + 1;
        } else {
            frames.push(Frame {
                packets: k..k + 1,
                key: false,
            });
        }
        let last = frames.last_mut().expect("pushed");
        last.key |= starts_keyframe(&packet.data);
    }
    frames
}

/// A clip packet for one destination: its sequence number, the timeline's timestamp, its SSRC.
fn restamp(packet: &[u8], seq: &mut u16, ts: u32, ssrc: u32) -> Vec<u8> {
    let mut data = packet.to_vec();
    data[2..4].copy_from_slice(&seq.to_be_bytes());
    data[4..8].copy_from_slice(&ts.to_be_bytes());
    data[8..12].copy_from_slice(&ssrc.to_be_bytes());
    *seq = seq.wrapping_add(1);
    data
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Sends every (packet, destination) with `sendmmsg`, 512 at a time.
fn send_batch(socket: &UdpSocket, batch: &[(Vec<u8>, SocketAddrV4)]) -> usize {
    let mut sent = 0;
    for chunk in batch.chunks(512) {
        let mut addrs: Vec<libc::sockaddr_in> = chunk
            .iter()
            .map(|(_, addr)| libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: addr.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*addr.ip()).to_be(),
                },
                sin_zero: [0; 8],
            })
            .collect();
        let mut iovs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(data, _)| libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            })
            .collect();
        // SAFETY: every header points into `addrs` and `iovs`, which outlive the call.
        let mut headers: Vec<libc::mmsghdr> = (0..chunk.len())
            .map(|k| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = &mut addrs[k] as *mut _ as *mut libc::c_void;
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut iovs[k];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut offset = 0;
        while offset < headers.len() {
            // SAFETY: `headers[offset..]` is a valid array of initialised mmsghdr.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    headers[offset..].as_mut_ptr(),
                    (headers.len() - offset) as u32,
                    0,
                )
            };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::ENOBUFS) {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                eprintln!("sendmmsg: {e}");
                break;
            }
            offset += n as usize;
        }
        sent += offset;
    }
    sent
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let fixtures = std::path::PathBuf::from(arg(&args, "--fixtures").ok_or("--fixtures DIR is required")?);
    let seconds: f64 = arg(&args, "--seconds").ok_or("--seconds S is required")?.parse()?;
    let targets_file = arg(&args, "--targets").ok_or("--targets FILE is required")?;
    let mut targets = Vec::new();
    for line in std::fs::read_to_string(&targets_file)?.lines() {
        let ports: Vec<u16> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        if let [video, audio] = ports[..] {
            targets.push((
                SocketAddrV4::new([127, 0, 0, 1].into(), video),
                SocketAddrV4::new([127, 0, 0, 1].into(), audio),
            ));
        }
    }
    let answer_pli = !args.iter().any(|a| a == "--no-pli");
    let (video, video_len, video_ticks) = clip(&fixtures.join("vp8.rtp"), 90_000, 3000)?;
    let (audio, audio_len, audio_ticks) = clip(&fixtures.join("opus.rtp"), 48_000, 960)?;
    let frames_of_video = video_frames(&video);
    if !frames_of_video.iter().any(|f| f.key) {
        return Err("the video clip has no keyframe".into());
    }
    // (time, is audio, loop, packet index for audio / frame index for video), in time order.
    let mut schedule: Vec<(f64, bool, u32, usize)> = Vec::new();
    let loops = |length: f64| (seconds / length) as u32 + 1;
    for loop_ in 0..loops(audio_len) {
        for (k, p) in audio.iter().enumerate() {
            let t = f64::from(loop_) * audio_len + p.at;
            if t < seconds {
                schedule.push((t, true, loop_, k));
            }
        }
    }
    for loop_ in 0..loops(video_len) {
        for (k, f) in frames_of_video.iter().enumerate() {
            let t = f64::from(loop_) * video_len + video[f.packets.start].at;
            if t < seconds {
                schedule.push((t, false, loop_, k));
            }
        }
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    let _ = socket2::SockRef::from(&socket).set_send_buffer_size(16 << 20);
    let mut sequence = vec![[0u16; 2]; targets.len()];
    // Per destination: how far its video runs ahead in the clip (frames), moved on a PLI.
    let mut clip_offset = vec![0usize; targets.len()];
    let mut wants_keyframe = vec![false; targets.len()];
    let mut num_pli = 0usize;
    let mut sent_frames = [std::collections::HashSet::new(), std::collections::HashSet::new()];
    let mut num_packets = 0usize;
    let mut max_late = Duration::ZERO;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut i = 0;
    let mut batch: Vec<(Vec<u8>, SocketAddrV4)> = Vec::with_capacity(targets.len() * 8);
    let mut rtcp = [0u8; 1500];
    while i < schedule.len() {
        let due = t0 + Duration::from_secs_f64(schedule[i].0);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_late = max_late.max(now - due);
        }
        if answer_pli {
            while let Ok((len, _)) = socket.recv_from(&mut rtcp) {
                for ssrc in recorder_actors::media::rtp::picture_loss_media_ssrcs(&rtcp[..len]) {
                    let d = ssrc.wrapping_sub(1000) as usize / 2;
                    if ssrc >= 1000 && ssrc % 2 == 0 && d < targets.len() {
                        wants_keyframe[d] = true;
                        num_pli += 1;
                    }
                }
            }
        }
        // Everything due by now goes out in one batch.
        let now = t0.elapsed().as_secs_f64();
        batch.clear();
        while i < schedule.len() && schedule[i].0 <= now + 0.001 {
            let (_, is_audio, loop_, k) = schedule[i];
            if is_audio {
                let packet = &audio[k];
                let ts = rtp_ts(&packet.data).wrapping_add(loop_.wrapping_mul(audio_ticks));
                sent_frames[1].insert(ts);
                for (d, (_, audio_to)) in targets.iter().enumerate() {
                    let ssrc = 1000 + 2 * d as u32 + 1;
                    batch.push((restamp(&packet.data, &mut sequence[d][1], ts, ssrc), *audio_to));
                }
            } else {
                // The frame due carries the timeline's timestamp whatever clip frame fills it.
                let ts =
                    rtp_ts(&video[frames_of_video[k].packets.start].data).wrapping_add(loop_.wrapping_mul(video_ticks));
                sent_frames[0].insert(ts);
                let n = frames_of_video.len();
                for (d, (video_to, _)) in targets.iter().enumerate() {
                    let mut at = (k + clip_offset[d]) % n;
                    if wants_keyframe[d] {
                        wants_keyframe[d] = false;
                        let next_key = (0..n).map(|j| (at + j) % n).find(|&j| frames_of_video[j].key);
                        if let Some(key) = next_key {
                            clip_offset[d] = (clip_offset[d] + (key + n - at)) % n;
                            at = key;
                        }
                    }
                    let ssrc = 1000 + 2 * d as u32;
                    for packet in &video[frames_of_video[at].packets.clone()] {
                        batch.push((restamp(&packet.data, &mut sequence[d][0], ts, ssrc), *video_to));
                    }
                }
            }
            i += 1;
        }
        num_packets += send_batch(&socket, &batch);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    println!(
        "{{\"destinations\": {}, \"seconds\": {:.2}, \"sent_video_frames\": {}, \"sent_audio_frames\": {}, \"packets\": {}, \"pli_answered\": {}, \"max_late_ms\": {:.1}, \"generator_cpu_s\": {:.3}}}",
        targets.len(),
        elapsed,
        sent_frames[0].len(),
        sent_frames[1].len(),
        num_packets,
        num_pli,
        max_late.as_secs_f64() * 1000.0,
        cpu_seconds() - cpu0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ts: u32, payload: &[u8]) -> Packet {
        let mut data = vec![0x80, 96, 0, 0];
        data.extend_from_slice(&ts.to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 1]);
        data.extend_from_slice(payload);
        Packet { at: 0.0, data }
    }

    #[test]
    fn frames_are_grouped_by_timestamp_and_keyframes_found_behind_a_long_picture_id() {
        // X=1, S=1, PID 0; I=1 with a 15-bit picture id; then the VP8 header's P bit.
        let key = [0x90, 0x80, 0x80, 0x01, 0x10];
        let delta = [0x90, 0x80, 0x80, 0x02, 0x11];
        let continuation = [0x80, 0x80, 0x80, 0x01, 0xff];
        let video = [
            rtp(0, &key),
            rtp(0, &continuation),
            rtp(3000, &delta),
            rtp(6000, &[0x10, 0x10]), // no extension, S=1, a keyframe
        ];
        let frames = video_frames(&video);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].packets, 0..2);
        assert!(frames[0].key);
        assert!(!frames[1].key);
        assert!(frames[2].key);
    }
}
