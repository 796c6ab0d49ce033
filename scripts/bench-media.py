#!/usr/bin/env python3
"""Media ingest benchmark: CPU per stream of rtc-recorder's plain-RTP ingest against FFmpeg
`-c copy` receivers, measured in the same run on the same packets.

A load generator replays a pre-encoded VP8 + Opus RTP stream (the clips recorded from FFmpeg in
actors/src/media/fixtures, looped with continuous sequence numbers and timestamps) in real time to
N plain-RTP ingests of one recorder instance and to N `ffmpeg -c copy` processes (one per
stream, WebM output, like the recorder). It reports CPU seconds per stream for each side and
their ratio, frames written against frames sent, and memory per track.

With --whip, the same run then has N `whip-publish` processes (the project's own WebRTC client,
replaying the same clips) publish to the recorder for S seconds, and reports the recorder's CPU
per WHIP stream against its CPU per plain-RTP stream: what ICE, DTLS and SRTP cost.

usage: scripts/bench-media.py [--streams N] [--seconds S] [--whip] [--binary PATH]
(build first: cargo build --bins; the binary defaults to $CARGO_TARGET_DIR/debug/rtc-recorder)
"""
import argparse, json, os, re, signal, socket, struct, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "actors/src/media/fixtures")
TICK = os.sysconf("SC_CLK_TCK")


def clip(name, clock, frame_ticks):
    """RTP packets of a fixture (RTCP dropped), paced by their media time."""
    data = open(os.path.join(FIXTURES, name), "rb").read()
    out, i, first = [], 0, None
    while i + 6 <= len(data):
        length = struct.unpack(">H", data[i + 4:i + 6])[0]
        pkt = data[i + 6:i + 6 + length]
        i += 6 + length
        if 192 <= pkt[1] <= 223:
            continue
        ts = struct.unpack(">I", pkt[4:8])[0]
        first = ts if first is None else first
        out.append(((ts - first) % 2**32 / clock, pkt))
    ticks = (struct.unpack(">I", out[-1][1][4:8])[0] - first) % 2**32 + frame_ticks
    return out, ticks / clock, ticks


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def http(method, url, key, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read().decode()


def ffprobe_frames(path):
    out = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries", "stream=codec_name,nb_read_packets",
                          "-of", "csv=p=0", path], capture_output=True, text=True).stdout.split()
    return {line.split(",")[0]: int(line.split(",")[1]) for line in out if "," in line}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--whip", action="store_true")
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug/rtc-recorder"))
    args = ap.parse_args()
    n, seconds = args.streams, args.seconds
    work = tempfile.mkdtemp(prefix="bench-media-")
    key = "bench-key-0123456789"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env.update(RECORDER_BIND="127.0.0.1:0", RECORDER_DATA_DIR=os.path.join(work, "data"), RECORDER_API_KEY=key, RECORDER_LOG="warn",
               RECORDER_MEDIA__RTP_PORT_MIN="24000", RECORDER_MEDIA__RTP_PORT_MAX="24999",
               # The track files are counted where they were written: keep them there, and keep
               # the compositor (which would release them after its run) out of the measurement.
               RECORDER_UPLOADS__DELETE_LOCAL_AFTER_UPLOAD="false", RECORDER_COMPOSITION__ENABLED="false")
    recorder = subprocess.Popen([args.binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = None
    for line in recorder.stdout:
        if "listening on http://" in line:
            base = line.split("listening on ")[1].strip() + "/auvious.video/rtc-recorder/api"
            break
    start = json.loads(http("POST", base + "/recordings/start", key,
                            json.dumps({"applicationId": "default", "conferenceId": "bench", "conversationId": "bench"}).encode(), "application/json"))
    offer = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             "m=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-mux\r\nm=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n")
    rss_rec_base = rss_kib(recorder.pid)
    targets = []  # (video addr, audio addr) per destination
    for k in range(n):
        answer = http("POST", f"{base}/media/rtp/bench?userId=user-{k}&type=CAM", key, offer.encode(), "application/sdp")
        ports = [int(l.split()[1]) for l in answer.splitlines() if l.startswith("m=")]
        targets.append(("rec", ports[0], ports[1]))
    receivers = []
    for k in range(n):
        vport, aport = 26000 + 4 * k, 26002 + 4 * k
        sdp = os.path.join(work, f"in-{k}.sdp")
        with open(sdp, "w") as f:
            f.write("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                    f"m=video {vport} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\nm=audio {aport} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n")
        out = os.path.join(work, f"ffmpeg-{k}.webm")
        receivers.append((subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-protocol_whitelist", "file,udp,rtp",
                                            "-i", sdp, "-map", "0:v", "-map", "0:a", "-c", "copy", "-f", "webm", out],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
        targets.append(("ffmpeg", vport, aport))
    time.sleep(1.5)  # let every ffmpeg open its sockets

    video, video_len, video_ticks = clip("vp8.rtp", 90000, 3000)
    audio, audio_len, audio_ticks = clip("opus.rtp", 48000, 960)
    schedule = []
    for kind, pkts, length, ticks in (("v", video, video_len, video_ticks), ("a", audio, audio_len, audio_ticks)):
        loops = int(seconds / length) + 1
        for loop in range(loops):
            for at, pkt in pkts:
                t = loop * length + at
                if t < seconds:
                    schedule.append((t, kind, loop, ticks, pkt))
    schedule.sort(key=lambda s: s[0])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    seq = {}
    sent_frames = {"v": set(), "a": set()}
    cpu_rec0 = cpu_seconds(recorder.pid)
    cpu_ff0 = sum(cpu_seconds(p.pid) for p, _ in receivers)
    t0 = time.monotonic()
    for t, kind, loop, ticks, pkt in schedule:
        wait = t0 + t - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        ts = (struct.unpack(">I", pkt[4:8])[0] + loop * ticks) % 2**32
        sent_frames[kind].add(ts)
        for d, (_, vport, aport) in enumerate(targets):
            s = seq.get((d, kind), 0)
            seq[(d, kind)] = s + 1
            ssrc = 1000 + 2 * d + (kind == "a")
            header = pkt[:2] + struct.pack(">HII", s & 0xFFFF, ts, ssrc)
            sock.sendto(header + pkt[12:], ("127.0.0.1", vport if kind == "v" else aport))
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    cpu_rec = cpu_seconds(recorder.pid) - cpu_rec0
    cpu_ff = sum(cpu_seconds(p.pid) for p, _ in receivers) - cpu_ff0
    rss_rec = rss_kib(recorder.pid)
    rss_ff = sum(rss_kib(p.pid) for p, _ in receivers)
    stop = json.loads(http("POST", f"{base}/recordings/bench/{start['recorderId']}/{start['instanceId']}/stop", key, b""))
    instance = json.loads(http("GET", f"{base}/recordings/bench/{start['recorderId']}/{start['instanceId']}", key))
    whip = None
    if args.whip:
        publisher = os.path.join(os.path.dirname(args.binary), "whip-publish")
        wstart = json.loads(http("POST", base + "/recordings/start", key,
                                 json.dumps({"applicationId": "default", "conferenceId": "bench-whip", "conversationId": "bench-whip"}).encode(), "application/json"))
        cpu0 = cpu_seconds(recorder.pid)
        w0 = time.monotonic()
        procs = [subprocess.Popen([publisher, f"{base}/media/whip/bench-whip?userId=w-{k}&type=CAM", "--token", key, "--seconds", str(seconds)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for k in range(n)]
        sent = [json.loads(p.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1]) for p in procs]
        whip_cpu = cpu_seconds(recorder.pid) - cpu0
        path = f"{base}/recordings/bench-whip/{wstart['recorderId']}/{wstart['instanceId']}"
        http("POST", path + "/stop", key, b"")
        complete = 0
        for s_ in json.loads(http("GET", path, key))["streams"]:
            counts = {}
            for t in s_["tracks"]:
                counts.update(ffprobe_frames(t["storage"]["localStorage"]["location"]))
            complete += counts.get("vp8", 0) >= 0.999 * sent[0]["videoFrames"] and counts.get("opus", 0) >= 0.999 * sent[0]["audioFrames"]
        whip = {"whip_seconds_wall": round(time.monotonic() - w0, 1),
                "whip_frames_sent_min": min(s["videoFrames"] for s in sent),
                "whip_streams_complete": f"{complete}/{n}",
                "recorder_whip_cpu_s_per_stream": round(whip_cpu / n, 3),
                "cpu_ratio_whip_to_plain_rtp": round(whip_cpu / cpu_rec, 2) if cpu_rec else None}
    for p, _ in receivers:
        p.send_signal(signal.SIGINT)
    for p, _ in receivers:
        p.wait(timeout=30)
    recorder.send_signal(signal.SIGTERM)
    recorder.wait(timeout=30)

    sent_v, sent_a = len(sent_frames["v"]), len(sent_frames["a"])
    rec_ok = ff_ok = 0
    rec_min = ff_min = 1.0
    for s in instance["streams"]:
        counts = {}
        for t in s["tracks"]:
            counts.update(ffprobe_frames(t["storage"]["localStorage"]["location"]))
        got = min(counts.get("vp8", 0) / sent_v, counts.get("opus", 0) / sent_a)
        rec_min = min(rec_min, got)
        rec_ok += got >= 0.999
    for _, out in receivers:
        counts = ffprobe_frames(out)
        got = min(counts.get("vp8", 0) / sent_v, counts.get("opus", 0) / sent_a)
        ff_min = min(ff_min, got)
        ff_ok += got >= 0.999
    result = {
        "streams": n, "seconds": round(elapsed, 1), "state": stop["state"],
        "sent_video_frames": sent_v, "sent_audio_frames": sent_a,
        "recorder_cpu_s_per_stream": round(cpu_rec / n, 3), "ffmpeg_cpu_s_per_stream": round(cpu_ff / n, 3),
        "cpu_ratio_recorder_to_ffmpeg": round(cpu_rec / cpu_ff, 2) if cpu_ff else None,
        "recorder_streams_complete": f"{rec_ok}/{n}", "ffmpeg_streams_complete": f"{ff_ok}/{n}",
        "recorder_worst_frame_ratio": round(rec_min, 4), "ffmpeg_worst_frame_ratio": round(ff_min, 4),
        "recorder_rss_kib_per_track": (rss_rec - rss_rec_base) // (2 * n), "ffmpeg_rss_kib_per_track": rss_ff // (2 * n),
    }
    if whip:
        result.update(whip)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
