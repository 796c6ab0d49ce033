//! A plain-RTP load generator for the media benchmark (`scripts/bench-media.py`): replays the
//! pre-encoded VP8 + Opus clips of `actors/src/media/fixtures` (looped, with continuous sequence
//! numbers and timestamps) in real time to many destinations at once, batching every packet due
//! at one moment into `sendmmsg` calls, so one core drives thousands of streams (the Python
//! sender it replaces stopped near 250).
//!
//! usage: rtp-load --fixtures DIR --seconds S --targets FILE
//! FILE holds one destination per line: `<video port> <audio port>` on 127.0.0.1. Each
//! destination gets its own SSRCs and sequence numbers; every destination gets the same frames.
//! Prints one JSON line: frames sent per destination, packets, how late the worst batch left,
//! and the generator's own CPU seconds.

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
    let (video, video_len, video_ticks) = clip(&fixtures.join("vp8.rtp"), 90_000, 3000)?;
    let (audio, audio_len, audio_ticks) = clip(&fixtures.join("opus.rtp"), 48_000, 960)?;
    // (time, is audio, loop, packet index), in time order.
    let mut schedule: Vec<(f64, bool, u32, usize)> = Vec::new();
    for (is_audio, packets, length) in [(false, &video, video_len), (true, &audio, audio_len)] {
        let loops = (seconds / length) as u32 + 1;
        for loop_ in 0..loops {
            for (k, p) in packets.iter().enumerate() {
                let t = f64::from(loop_) * length + p.at;
                if t < seconds {
                    schedule.push((t, is_audio, loop_, k));
                }
            }
        }
    }
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let _ = socket2::SockRef::from(&socket).set_send_buffer_size(16 << 20);
    let mut sequence = vec![[0u16; 2]; targets.len()];
    let mut frames = [std::collections::HashSet::new(), std::collections::HashSet::new()];
    let mut num_packets = 0usize;
    let mut max_late = Duration::ZERO;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut i = 0;
    let mut batch: Vec<(Vec<u8>, SocketAddrV4)> = Vec::with_capacity(targets.len() * 8);
    while i < schedule.len() {
        let due = t0 + Duration::from_secs_f64(schedule[i].0);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_late = max_late.max(now - due);
        }
        // Everything due by now goes out in one batch.
        let now = t0.elapsed().as_secs_f64();
        batch.clear();
        while i < schedule.len() && schedule[i].0 <= now + 0.001 {
            let (_, is_audio, loop_, k) = schedule[i];
            let (packet, ticks) = if is_audio {
                (&audio[k], audio_ticks)
            } else {
                (&video[k], video_ticks)
            };
            let ts = u32::from_be_bytes([packet.data[4], packet.data[5], packet.data[6], packet.data[7]])
                .wrapping_add(loop_.wrapping_mul(ticks));
            frames[usize::from(is_audio)].insert(ts);
            for (d, (video_to, audio_to)) in targets.iter().enumerate() {
                let seq = &mut sequence[d][usize::from(is_audio)];
                let ssrc = 1000 + 2 * d as u32 + u32::from(is_audio);
                let mut data = packet.data.clone();
                data[2..4].copy_from_slice(&seq.to_be_bytes());
                data[4..8].copy_from_slice(&ts.to_be_bytes());
                data[8..12].copy_from_slice(&ssrc.to_be_bytes());
                *seq = seq.wrapping_add(1);
                batch.push((data, if is_audio { *audio_to } else { *video_to }));
            }
            i += 1;
        }
        num_packets += send_batch(&socket, &batch);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    println!(
        "{{\"destinations\": {}, \"seconds\": {:.2}, \"sent_video_frames\": {}, \"sent_audio_frames\": {}, \"packets\": {}, \"max_late_ms\": {:.1}, \"generator_cpu_s\": {:.3}}}",
        targets.len(),
        elapsed,
        frames[0].len(),
        frames[1].len(),
        num_packets,
        max_late.as_secs_f64() * 1000.0,
        cpu_seconds() - cpu0
    );
    Ok(())
}
