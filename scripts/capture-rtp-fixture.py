#!/usr/bin/env python3
"""Records the RTP packets FFmpeg sends for a short test clip into a fixture file.

Usage: capture-rtp-fixture.py OUT.rtp -- <ffmpeg output options without the rtp:// url>
The format is a sequence of records: u32 arrival microseconds (big endian) since the first
packet, u16 length, then the datagram. Used by the media unit tests (recorded fixtures).
"""
import socket, struct, subprocess, sys, time

out_path = sys.argv[1]
ffmpeg_args = sys.argv[3:]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.settimeout(3.0)
proc = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re"] + ffmpeg_args
                        + ["-f", "rtp", f"rtp://127.0.0.1:{port}?rtcpport={port}"])
records, start = [], None
try:
    while True:
        data = sock.recv(65536)
        now = time.monotonic()
        if start is None:
            start = now
        records.append(struct.pack(">IH", int((now - start) * 1e6), len(data)) + data)
except socket.timeout:
    pass
proc.wait()
with open(out_path, "wb") as f:
    f.write(b"".join(records))
print(f"{out_path}: {len(records)} datagrams")
