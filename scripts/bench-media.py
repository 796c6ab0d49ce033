#!/usr/bin/env python3
"""Media ingest benchmark: CPU per stream of rtc-recorder's plain-RTP ingest against FFmpeg
`-c copy` receivers, measured in the same run on the same packets.

A load generator replays a pre-encoded VP8 + Opus RTP stream, looped with continuous sequence
numbers and timestamps, in real time to
N plain-RTP ingests of the recorder, in calls of 2 streams (--streams-per-call; an agent and a
customer, one recorder instance each) and to N `ffmpeg -c copy` processes (one per
stream, WebM output, like the recorder). It reports CPU seconds per stream for each side and
their ratio, frames written against frames sent, and memory per track.

With --whip, the same run then has N `whip-publish` processes (the project's own WebRTC client,
replaying the same clips) publish to the recorder for S seconds, and reports the recorder's CPU
per WHIP stream against its CPU per plain-RTP stream: what ICE, DTLS and SRTP cost.

The packets are sent by `rtp-load` (src/bin/rtp-load.rs, batched sendmmsg, one process for
every destination), so the generator drives thousands of streams; the recorder's port range and
the FFmpeg receivers' ports are sized to N.

With --find-max, the script ramps N (--start, --step) with the recorder alone until the first
stream with a lost frame, a refused publish or a generator that falls behind, then ramps FFmpeg
receivers alone the same way, and reports each side's largest N with every frame written, with
CPU per stream (recorder and generator separately), RSS per stream and the writers' slowest
write (max and p99 over streams), and the CPU ratio at the largest N both sustained. Admission
control is lifted for the ramp (RECORDER_CAPACITY__BUDGET), so the ramp finds what the machine
does; the default budget is then set from it. Every step also reports how soon recording started
(each track's first frame in its file after its first packet, max and p99; a step fails above
300 ms). With --whip, find-max then ramps WHIP publishers from --whip-start.

Every run also reports what the machine spent beyond the measured processes: the kernel threads'
CPU over the load (kernel_threads_cpu_s_per_stream: page-cache writeback, softirq) and the whole
machine's busy time (machine_busy_cpu_s_per_stream), per stream. With one side alone (find-max,
--recorder-only) it then syncs the work directory's filesystem and reports what that cost
(sync_at_end_cpu_s_per_stream): FFmpeg never fsyncs, so its bytes are still in the page cache
when the window ends, while the recorder has synced all but its last second in its own CPU.
find-max's summary adds the ratio with each side's data on disk (..._on_disk).

With --kill-after S, the recorder is killed with SIGKILL S seconds into the load and started again
on the same data directory while the generator keeps sending; the run reports the downtime and
each track's loss against the promise (loss <= downtime + 1 s).

The stream (--fixture): "hd" (the default) is VP8 640x360 at 30 fps and ~1 Mbit/s with Opus at
48 kbit/s, about 150 packets/s, captured once from FFmpeg with scripts/capture-rtp-fixture.py into
~/.cache/rtc-recorder/bench-fixtures/hd; "small" is the unit tests' clips in
actors/src/media/fixtures (VP8 320x240 ~300 kbit/s, Opus 32 kbit/s, about 90 packets/s);
"hd-gop15" is the hd stream with a keyframe every 15 frames (0.5 s) instead of 90 (3 s). The
generator answers the recorder's keyframe requests (PLI) as a live encoder does: the destination's
next video frame is the clip's next keyframe (rtp-load; --no-pli turns that off, and a video
track's loss after --kill-after then includes the wait for the clip's own next keyframe).

usage: scripts/bench-media.py [--streams N] [--seconds S] [--whip] [--binary PATH]
       scripts/bench-media.py --find-max [--start N] [--step N] [--limit N] [--ffmpeg-start N] [--ffmpeg-step N] [--seconds S] [--whip [--whip-start N] [--whip-step N]] [--binary PATH]
       scripts/bench-media.py --streams N --recorder-only --kill-after S
       (any of them: --fixture hd|hd-gop15|small, --no-pli, --recorder-env RECORDER_X=V)
(build first: cargo build --release --bins; the binary defaults to $CARGO_TARGET_DIR/release/rtc-recorder
when it exists, else debug)
"""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.error, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "actors/src/media/fixtures")
HD_FIXTURES = os.path.join(os.path.expanduser("~"), ".cache/rtc-recorder/bench-fixtures/hd")


def hd_fixtures(gop=90):
    """The issue's stream: VP8 640x360@30 ~1 Mbit/s and Opus 48 kbit/s, 10 s, captured once;
    a keyframe every `gop` frames."""
    out = HD_FIXTURES if gop == 90 else f"{HD_FIXTURES}-gop{gop}"
    if all(os.path.exists(os.path.join(out, f)) for f in ("vp8.rtp", "opus.rtp")):
        return out
    os.makedirs(out, exist_ok=True)
    capture = os.path.join(ROOT, "scripts/capture-rtp-fixture.py")
    tmp = {f: os.path.join(out, f + ".part") for f in ("vp8.rtp", "opus.rtp")}
    procs = [subprocess.Popen([sys.executable, capture, tmp["vp8.rtp"], "--", "-f", "lavfi", "-i", "testsrc2=s=640x360:r=30", "-t", "10",
                               "-c:v", "libvpx", "-b:v", "1M", "-minrate", "1M", "-maxrate", "1M", "-deadline", "realtime", "-cpu-used", "8",
                               "-g", str(gop), "-an", "-payload_type", "96"], stdout=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, capture, tmp["opus.rtp"], "--", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
                               "-t", "10", "-c:a", "libopus", "-b:a", "48k", "-vn", "-payload_type", "111"], stdout=subprocess.DEVNULL)]
    for p in procs:
        if p.wait() != 0:
            sys.exit("cannot capture the hd fixture")
    for f, part in tmp.items():
        os.replace(part, os.path.join(out, f))
    return out
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid):
    """Resident memory of a live process; 0 for one that already exited (a zombie has none)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            found = re.search(r"VmRSS:\s+(\d+)", f.read())
    except FileNotFoundError:  # exited and reaped
        return 0
    return int(found.group(1)) if found else 0


def kernel_threads_cpu():
    """CPU seconds of every kernel thread (children of kthreadd, pid 2) by pid: the page-cache
    writeback (kworker flush), the journal (jbd2) and softirq threads. They write a process's
    dirty pages when it does not sync them itself, so a receiver that never fsyncs (FFmpeg) has
    its writeback here rather than in its own CPU."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[1] == "2":  # ppid: kthreadd
            found[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return found


def kernel_threads_cpu_since(before):
    """Kernel threads' CPU since `before` (kernel_threads_cpu()); a thread started since counts whole."""
    return sum(cpu - before.get(pid, 0) for pid, cpu in kernel_threads_cpu().items())


def machine_busy_seconds():
    """CPU seconds the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def sync_cost(path):
    """CPU seconds to write back and sync everything dirty on path's filesystem now: the `sync -f`
    process's own and the kernel threads' meanwhile."""
    kthreads0 = kernel_threads_cpu()
    proc = subprocess.Popen(["sync", "-f", path])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"sync -f {path} failed")
    return usage.ru_utime + usage.ru_stime + kernel_threads_cpu_since(kthreads0)


def udp_rcvbuf_errors():
    """The machine's UDP datagrams dropped for a full socket receive buffer (/proc/net/snmp)."""
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


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


def ports_of(answer):
    return [int(l.split()[1]) for l in answer.splitlines() if l.startswith("m=")]


def frames_ratio(counts, sent_v, sent_a):
    return min(counts.get("vp8", 0) / sent_v, counts.get("opus", 0) / sent_a)


# Streams per recorded call (instance): a contact-center call has an agent and a customer.
# --streams-per-call 0 puts every stream in one instance (this benchmark's first shape, which also
# measures rewriting one ever larger instance record at every stream's first packets).
STREAMS_PER_CALL = 2
FIXTURE_DIR = FIXTURES  # set by main (--fixture)
LOADER_FLAGS = []  # set by main (--no-pli)


def start_recorder(binary, env):
    """Starts the recorder; its API base URL once it listens."""
    # BENCH_RECORDER_LOG=FILE keeps the recorder's log (appended: a --kill-after run has two processes).
    log = os.environ.get("BENCH_RECORDER_LOG")
    stderr = open(log, "a") if log else subprocess.DEVNULL
    recorder = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    for line in recorder.stdout:
        if "listening on http://" in line:
            return recorder, line.split("listening on ")[1].strip() + "/auvious.video/rtc-recorder/api"
    sys.exit(f"the recorder exited before listening (code {recorder.wait()})")


def percentile(values, q):
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else None


def run(n, seconds, binary, with_recorder=True, with_ffmpeg=True, whip=False, extra_env=(), kill_after=None):
    """One run: N plain-RTP streams to a fresh recorder (in calls of STREAMS_PER_CALL streams)
    and/or N ffmpeg -c copy receivers. With kill_after, the recorder is killed with SIGKILL that
    many seconds into the load and started again on the same data directory, while the
    generator keeps sending; each track's loss is then set against the downtime."""
    work = tempfile.mkdtemp(prefix="bench-media-")
    key = "bench-key-0123456789"
    result = {"streams": n}
    recorder = base = start = None
    targets = []
    # FFmpeg's receivers first: the recorder's sessions are opened last, just before the load,
    # so none is ended as an idle publisher while hundreds of ffmpeg processes start.
    receivers = []
    if with_ffmpeg:
        for k in range(n):
            vport, aport = 40000 + 4 * k, 40002 + 4 * k
            sdp = os.path.join(work, f"in-{k}.sdp")
            with open(sdp, "w") as f:
                f.write("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                        f"m=video {vport} RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\nm=audio {aport} RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\n")
            out = os.path.join(work, f"ffmpeg-{k}.webm")
            receivers.append((subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-protocol_whitelist", "file,udp,rtp",
                                                "-i", sdp, "-map", "0:v", "-map", "0:a", "-c", "copy", "-f", "webm", out],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
            targets.append((vport, aport))
        time.sleep(1.5 + n / 200)  # let every ffmpeg open its sockets
    if with_recorder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
        env.update(RECORDER_BIND="127.0.0.1:0", RECORDER_DATA_DIR=os.path.join(work, "data"), RECORDER_API_KEY=key, RECORDER_LOG="warn",
                   # Two ports per m-line (RTP on an even port; rtcp-mux), two m-lines per stream.
                   RECORDER_MEDIA__RTP_PORT_MIN="20000", RECORDER_MEDIA__RTP_PORT_MAX=str(20000 + 4 * n + 200),
                   # The ramp measures the machine, not the configured budget.
                   RECORDER_CAPACITY__BUDGET="100000000", RECORDER_CAPACITY__MAX_CPU_PERCENT="0",
                   RECORDER_LIMITS__MAX_RTP_SESSIONS_PER_ORGANIZATION=str(n + 10), RECORDER_LIMITS__MAX_WHIP_SESSIONS_PER_ORGANIZATION=str(n + 10),
                   RECORDER_LIMITS__MAX_STREAMS_PER_INSTANCE=str(n + 10), RECORDER_LIMITS__MAX_LIVE_INSTANCES_PER_ORGANIZATION=str(n + 10),
                   # The track files are counted where they were written: keep them there, and keep
                   # the compositor (which would release them after its run) out of the measurement.
                   RECORDER_UPLOADS__DELETE_LOCAL_AFTER_UPLOAD="false", RECORDER_COMPOSITION__ENABLED="false")
        env.update(kv.split("=", 1) for kv in extra_env)
        recorder, base = start_recorder(binary, env)
        per_call = STREAMS_PER_CALL or n
        calls = []
        for c in range((n + per_call - 1) // per_call):
            calls.append(json.loads(http("POST", base + "/recordings/start", key, json.dumps(
                {"applicationId": "default", "conferenceId": f"bench-{c}", "conversationId": f"bench-{c}"}).encode(), "application/json")))
        offer = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bench\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                 "m=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=rtcp-mux\r\nm=audio 9 RTP/AVP 111\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-mux\r\n")
        rss_rec_base = rss_kib(recorder.pid)
        refused = 0
        for k in range(n):
            try:
                ports = ports_of(http("POST", f"{base}/media/rtp/bench-{k // per_call}?userId=user-{k}&type=CAM", key, offer.encode(), "application/sdp"))
            except urllib.error.HTTPError as e:
                refused += 1
                continue
            targets.append((ports[0], ports[1]))
        result["recorder_refused"] = refused
    targets_file = os.path.join(work, "targets.txt")
    with open(targets_file, "w") as f:
        f.write("".join(f"{v} {a}\n" for v, a in targets))
    loader = os.path.join(os.path.dirname(binary), "rtp-load")
    cpu_rec0 = cpu_seconds(recorder.pid) if recorder else 0
    cpu_ff0 = sum(cpu_seconds(p.pid) for p, _ in receivers)
    kthreads0, busy0 = kernel_threads_cpu(), machine_busy_seconds()
    load = subprocess.Popen([loader, "--fixtures", FIXTURE_DIR, "--seconds", str(seconds), "--targets", targets_file, *LOADER_FLAGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    downtime = None
    if kill_after is not None and recorder:
        time.sleep(kill_after)
        killed = time.monotonic()
        recorder.kill()
        recorder.wait()
        recorder, base = start_recorder(binary, env)
        downtime = time.monotonic() - killed
        cpu_rec0 = cpu_seconds(recorder.pid)
        rss_rec_base = 0  # a new process: its whole RSS is the streams'
    out, err = load.communicate()
    if load.returncode != 0:
        sys.exit(f"rtp-load failed: {err}")
    sent = json.loads(out.strip().splitlines()[-1])
    time.sleep(0.5)
    # The kernel's share (writeback, journal, softirq threads) and the whole machine's over the
    # load, per stream: with one side alone, what that side costs the machine beyond its own CPU.
    result.update(kernel_threads_cpu_s_per_stream=round(kernel_threads_cpu_since(kthreads0) / max(1, len(targets)), 4),
                  machine_busy_cpu_s_per_stream=round((machine_busy_seconds() - busy0) / max(1, len(targets)), 4))
    if bool(recorder) != bool(receivers):
        # One side alone: what it still costs to put the bytes it wrote on disk. FFmpeg never
        # syncs, so its data waits in the page cache for the kernel's writeback (30 s by
        # default: after the window); the recorder syncs every media.fsync_interval_ms in its
        # own CPU. Both sides' "CPU with the data on disk" counts this too.
        result["sync_at_end_cpu_s_per_stream"] = round(sync_cost(work) / max(1, len(targets)), 4)
    sent_v, sent_a = sent["sent_video_frames"], sent["sent_audio_frames"]
    result.update(seconds=sent["seconds"], sent_video_frames=sent_v, sent_audio_frames=sent_a,
                  generator_cpu_s_per_stream=round(sent["generator_cpu_s"] / max(1, len(targets)), 4),
                  generator_max_late_ms=sent["max_late_ms"], generator_pli_answered=sent.get("pli_answered"))
    if recorder:
        cpu_rec = cpu_seconds(recorder.pid) - cpu_rec0
        rss_rec = rss_kib(recorder.pid)
        tree = json.loads(http("GET", f"{base}/debug/actors", key))
        writes, first_frame_ms, first_audio_ms = [], [], []
        def walk(node):
            # Each track's slowest single write or flush (the debug tree's Track nodes), and how
            # long after its first packet its first frame was in the file: for video its first
            # keyframe (the 300 ms promise), for audio its first frame, which waits for the
            # jitter buffer's start to settle (a packet sent before the first to arrive may come).
            counters = node.get("counters", {})
            if node.get("kind") == "Track" and "max_write_micros" in counters:
                writes.append(counters["max_write_micros"])
                if counters.get("first_write_at_micros") and counters.get("first_packet_at_micros"):
                    ms = (counters["first_write_at_micros"] - counters["first_packet_at_micros"]) / 1000
                    (first_audio_ms if str(node.get("state", "")).startswith("AUDIO") else first_frame_ms).append(ms)
            for child in node.get("children", []):
                walk(child)
        walk(tree)
        rec_ok, rec_min, states, lost_v, lost_a = 0, 1.0, set(), [], []
        for c, start in enumerate(calls):
            path = f"{base}/recordings/bench-{c}/{start['recorderId']}/{start['instanceId']}"
            states.add(json.loads(http("POST", path + "/stop", key, b""))["state"])
            for s in json.loads(http("GET", path, key))["streams"]:
                counts = {}
                for t in s["tracks"]:
                    location = t.get("storage", {}).get("localStorage", {}).get("location")
                    if location:
                        counts.update(ffprobe_frames(location))
                    else:  # no file: the track lost every frame (counted as such below)
                        print(f"no file for a track of bench-{c}: {json.dumps(t)}", file=sys.stderr)
                got = frames_ratio(counts, sent_v, sent_a)
                rec_min, rec_ok = min(rec_min, got), rec_ok + (got >= 1.0)
                # Media seconds missing from each track: 30 fps video, 20 ms Opus frames.
                lost_v.append((sent_v - counts.get("vp8", 0)) / 30)
                lost_a.append((sent_a - counts.get("opus", 0)) * 0.020)
        writes.sort()
        result.update(state="/".join(sorted(states)), calls=len(calls), recorder_cpu_s_per_stream=round(cpu_rec / n, 4),
                      recorder_cpu_share_of_2_cores=round(cpu_rec / sent["seconds"] / 2, 3),
                      recorder_streams_every_frame=f"{rec_ok}/{n}", recorder_worst_frame_ratio=round(rec_min, 5),
                      recorder_rss_kib_per_stream=(rss_rec - rss_rec_base) // n,
                      recorder_threads=int(re.search(r"Threads:\s+(\d+)", open(f"/proc/{recorder.pid}/status").read()).group(1)),
                      writer_max_write_ms=round(writes[-1] / 1000, 1) if writes else None,
                      writer_p99_max_write_ms=round(writes[int(0.99 * (len(writes) - 1))] / 1000, 1) if writes else None,
                      first_frame_ms_max=round(max(first_frame_ms), 1) if first_frame_ms else None,
                      first_frame_ms_p99=round(percentile(first_frame_ms, 0.99), 1) if first_frame_ms else None,
                      first_audio_ms_max=round(max(first_audio_ms), 1) if first_audio_ms else None)
        result["recorder_ok"] = rec_ok == n and result["recorder_refused"] == 0
        if downtime is not None:
            # The promise: loss per track <= downtime + 1 s, video included: the generator answers
            # the restarted recorder's PLI with a keyframe as a live encoder does (with --no-pli,
            # video also waits for the clip's own next keyframe).
            result.update(killed_after_s=kill_after, downtime_s=round(downtime, 2),
                          audio_lost_s_max=round(max(lost_a), 2), video_lost_s_max=round(max(lost_v), 2),
                          audio_loss_within_downtime_plus_1s=f"{sum(l <= downtime + 1 for l in lost_a)}/{len(lost_a)}",
                          video_loss_within_downtime_plus_1s=f"{sum(l <= downtime + 1 for l in lost_v)}/{len(lost_v)}",
                          audio_lost_s_p99=round(percentile(lost_a, 0.99), 2), video_lost_s_p99=round(percentile(lost_v, 0.99), 2))
            result["recorder_ok"] = result["recorder_refused"] == 0 and all(l <= downtime + 1 for l in lost_a + (lost_v if not LOADER_FLAGS else []))
            # Two processes: CPU and memory per stream are not comparable; the restarted process's
            # first frames wait for the clip's next keyframe too.
            for k in ("recorder_cpu_s_per_stream", "recorder_cpu_share_of_2_cores", "recorder_rss_kib_per_stream"):
                del result[k]
        if whip:
            result.update(whip_phase(base, key, binary, n, seconds, cpu_rec, recorder))
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(timeout=60)
    if receivers:
        cpu_ff = sum(cpu_seconds(p.pid) for p, _ in receivers) - cpu_ff0
        result["ffmpeg_exited_early"] = sum(p.poll() is not None for p, _ in receivers)
        rss_ff = sum(rss_kib(p.pid) for p, _ in receivers)
        for p, _ in receivers:
            p.send_signal(signal.SIGINT)
        for p, _ in receivers:
            p.wait(timeout=60)
        ff_ok, ff_min = 0, 1.0
        for _, out in receivers:
            got = frames_ratio(ffprobe_frames(out), sent_v, sent_a)
            ff_min, ff_ok = min(ff_min, got), ff_ok + (got >= 1.0)
        result.update(ffmpeg_cpu_s_per_stream=round(cpu_ff / n, 4), ffmpeg_streams_every_frame=f"{ff_ok}/{n}",
                      ffmpeg_worst_frame_ratio=round(ff_min, 5), ffmpeg_rss_kib_per_stream=rss_ff // n)
        result["ffmpeg_ok"] = ff_ok == n
    if recorder and receivers:
        result["cpu_ratio_recorder_to_ffmpeg"] = round(result["recorder_cpu_s_per_stream"] / result["ffmpeg_cpu_s_per_stream"], 3) if cpu_ff else None
    shutil.rmtree(work, ignore_errors=True)
    return result


WHIP_PER_PROCESS = 25  # publishers per whip-publish process (one tokio runtime each)


def whip_phase(base, key, binary, n, seconds, cpu_rec, recorder):
    """N WHIP publishers (in calls of STREAMS_PER_CALL, one instance each) for S seconds, after
    the plain-RTP phase, on the same recorder: its CPU per WHIP stream against per plain-RTP
    stream, the publishers' own CPU, and the streams whose files hold every frame sent."""
    publisher = os.path.join(os.path.dirname(binary), "whip-publish")
    per_call = STREAMS_PER_CALL or n
    calls = []
    for c in range((n + per_call - 1) // per_call):
        calls.append(json.loads(http("POST", base + "/recordings/start", key, json.dumps(
            {"applicationId": "default", "conferenceId": f"bench-whip-{c}", "conversationId": f"bench-whip-{c}"}).encode(),
            "application/json")))
    urls = [f"{base}/media/whip/bench-whip-{k // per_call}?userId=w-{k}&type=CAM" for k in range(n)]
    rcvbuf0 = udp_rcvbuf_errors()
    cpu0 = cpu_seconds(recorder.pid)
    children0 = sum(os.times()[2:4])  # CPU of the waited-for children so far
    w0 = time.monotonic()
    procs = [subprocess.Popen([publisher, *urls[i:i + WHIP_PER_PROCESS], "--token", key, "--seconds", str(seconds), "--fixtures", FIXTURE_DIR],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in range(0, n, WHIP_PER_PROCESS)]
    peak_rss = 0
    while any(p.poll() is None for p in procs):
        peak_rss = max(peak_rss, rss_kib(recorder.pid))
        time.sleep(0.5)
    whip_cpu = cpu_seconds(recorder.pid) - cpu0
    wall = time.monotonic() - w0
    # The publishers' CPU: they were waited for (poll) above, so their times are in our children's.
    gen_cpu = sum(os.times()[2:4]) - children0
    sent, errors = [], 0
    for p in procs:
        out = p.stdout.read()
        for line in out.strip().splitlines():
            line = json.loads(line)
            if "error" in line:
                errors += 1
            else:
                sent.append(line)
    complete, shortfalls = 0, []
    for call in calls:
        path = f"{base}/recordings/{call['conversationId']}/{call['recorderId']}/{call['instanceId']}"
        http("POST", path + "/stop", key, b"")
        for s_ in json.loads(http("GET", path, key))["streams"]:
            counts = {}
            for t in s_["tracks"]:
                counts.update(ffprobe_frames(t["storage"]["localStorage"]["location"]))
            ok = counts.get("vp8", 0) >= 0.999 * sent[0]["videoFrames"] and counts.get("opus", 0) >= 0.999 * sent[0]["audioFrames"]
            complete += ok
            if not ok:
                shortfalls.append((sent[0]["videoFrames"] - counts.get("vp8", 0), sent[0]["audioFrames"] - counts.get("opus", 0)))
    return {"whip_streams": n,
            "whip_seconds_wall": round(wall, 1),
            "whip_publish_errors": errors,
            "whip_frames_sent_min": min((s["videoFrames"] for s in sent), default=0),
            "whip_streams_complete": f"{complete}/{n}",
            # (video, audio) frames missing from each incomplete stream, and the machine's UDP
            # datagrams dropped for a full receive buffer during the phase.
            "whip_frames_missing": sorted(shortfalls, reverse=True)[:10],
            "udp_rcvbuf_errors": udp_rcvbuf_errors() - rcvbuf0,
            "recorder_whip_cpu_s_per_stream": round(whip_cpu / n, 3),
            "recorder_whip_cpu_share_of_machine": round(whip_cpu / wall / os.cpu_count(), 2),
            "recorder_whip_rss_kib_per_stream": round(peak_rss / n),
            "generator_whip_cpu_s_per_stream": round(gen_cpu / n, 3),
            "cpu_ratio_whip_to_plain_rtp": round(whip_cpu / cpu_rec, 2) if cpu_rec else None}


def find_max(args):
    """Ramps N for each side alone until the first failure; the largest N each sustained."""
    best = {}
    sides = ["recorder", "ffmpeg"] + (["whip"] if args.whip else [])
    for side in sides:
        start, step = {"recorder": (args.start, args.step), "ffmpeg": (args.ffmpeg_start or args.start, args.ffmpeg_step or args.step),
                       "whip": (args.whip_start, args.whip_step)}[side]
        n = start
        while n <= args.limit:
            r = run(n, args.seconds, args.binary, with_recorder=side in ("recorder", "whip"), with_ffmpeg=side == "ffmpeg",
                    whip=side == "whip", extra_env=args.recorder_env)
            late = r["generator_max_late_ms"] > 200
            # Recording must start on time at every N: the first frame in the file <= 300 ms after
            # the first packet.
            slow_start = side != "ffmpeg" and (r.get("first_frame_ms_max") or 0) > 300
            if side == "whip":
                ok = r["whip_streams_complete"] == f"{n}/{n}" and r["whip_publish_errors"] == 0 and not slow_start
            else:
                ok = r[f"{side}_ok"] and not late and not slow_start
            print(json.dumps({"side": side, "ok": ok, "generator_late": late, "slow_start": slow_start, **r}), flush=True)
            if not ok:
                break
            best[side] = r
            n += step
    summary = {"recorder_max_streams": best.get("recorder", {}).get("streams"),
               "ffmpeg_max_streams": best.get("ffmpeg", {}).get("streams"),
               "whip_max_publishers": best.get("whip", {}).get("streams")}
    if "recorder" in best and "ffmpeg" in best:
        common = min(best["recorder"]["streams"], best["ffmpeg"]["streams"])
        # The recorder at the largest N FFmpeg sustained, in a run of its own for a like-for-like ratio.
        rec = best["recorder"] if best["recorder"]["streams"] == common else run(common, args.seconds, args.binary, with_ffmpeg=False)
        ff = best["ffmpeg"] if best["ffmpeg"]["streams"] == common else run(common, args.seconds, args.binary, with_recorder=False)
        summary.update(at_streams=common, recorder_cpu_s_per_stream=rec["recorder_cpu_s_per_stream"],
                       ffmpeg_cpu_s_per_stream=ff["ffmpeg_cpu_s_per_stream"],
                       cpu_ratio_recorder_to_ffmpeg=round(rec["recorder_cpu_s_per_stream"] / ff["ffmpeg_cpu_s_per_stream"], 3))
        if "sync_at_end_cpu_s_per_stream" in rec and "sync_at_end_cpu_s_per_stream" in ff:
            # With each side's data on disk: the recorder synced most of it itself (in its CPU);
            # FFmpeg's was still in the page cache.
            rec_disk = rec["recorder_cpu_s_per_stream"] + rec["sync_at_end_cpu_s_per_stream"]
            ff_disk = ff["ffmpeg_cpu_s_per_stream"] + ff["sync_at_end_cpu_s_per_stream"]
            summary.update(recorder_cpu_s_per_stream_on_disk=round(rec_disk, 4), ffmpeg_cpu_s_per_stream_on_disk=round(ff_disk, 4),
                           cpu_ratio_recorder_to_ffmpeg_on_disk=round(rec_disk / ff_disk, 3))
    print(json.dumps({"summary": summary}))


def main():
    global STREAMS_PER_CALL, FIXTURE_DIR, LOADER_FLAGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--whip", action="store_true")
    ap.add_argument("--find-max", action="store_true")
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--step", type=int, default=100)
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--ffmpeg-start", type=int, default=0, help="--find-max: the first N of the FFmpeg ramp (0: --start)")
    ap.add_argument("--ffmpeg-step", type=int, default=0, help="--find-max: the FFmpeg ramp's step (0: --step)")
    ap.add_argument("--whip-start", type=int, default=150, help="--find-max --whip: the first N of the WHIP ramp")
    ap.add_argument("--whip-step", type=int, default=50, help="--find-max --whip: the WHIP ramp's step")
    ap.add_argument("--kill-after", type=float, metavar="S",
                    help="kill -9 the recorder S seconds into the load and start it again; report each track's loss against the downtime")
    ap.add_argument("--recorder-only", action="store_true", help="no FFmpeg receivers (one run)")
    ap.add_argument("--streams-per-call", type=int, default=STREAMS_PER_CALL,
                    help="streams per recorder instance (0: all streams in one instance)")
    ap.add_argument("--fixture", choices=["hd", "hd-gop15", "small"], default="hd",
                    help="hd: VP8 640x360@30 ~1 Mbit/s + Opus 48 kbit/s; small: VP8 320x240 ~300 kbit/s + Opus 32 kbit/s")
    ap.add_argument("--no-pli", action="store_true", help="the generator ignores keyframe requests (a replayed file, not a live encoder)")
    ap.add_argument("--recorder-env", action="append", default=[], metavar="RECORDER_X=V",
                    help="extra settings for the recorder, e.g. RECORDER_MEDIA__FSYNC_INTERVAL_MS=600000")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    release = os.path.join(target, "release/rtc-recorder")
    ap.add_argument("--binary", default=release if os.path.exists(release) else os.path.join(target, "debug/rtc-recorder"))
    args = ap.parse_args()
    STREAMS_PER_CALL = args.streams_per_call
    LOADER_FLAGS = ["--no-pli"] if args.no_pli else []
    FIXTURE_DIR = {"hd": hd_fixtures, "hd-gop15": lambda: hd_fixtures(15), "small": lambda: FIXTURES}[args.fixture]()
    if args.find_max:
        find_max(args)
    else:
        print(json.dumps(run(args.streams, args.seconds, args.binary, with_ffmpeg=not args.recorder_only and args.kill_after is None,
                             whip=args.whip, extra_env=args.recorder_env, kill_after=args.kill_after)))


if __name__ == "__main__":
    main()
