#!/usr/bin/env python3
"""An independent WHIP publisher for the black-box tests: aiortc (PyPI) sends synthetic video
and audio to the recorder's WHIP endpoint for a number of seconds, then ends the session with
DELETE. Prints one JSON line with the number of video and audio frames it produced.

usage: aiortc_publish.py URL TOKEN SECONDS [vp8|h264]
"""
import asyncio, fractions, json, math, struct, sys, time, urllib.error, urllib.parse, urllib.request

import aioice.ice
from av import AudioFrame, VideoFrame
from aiortc import RTCPeerConnection, RTCSessionDescription, MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpsender import RTCRtpSender

# aioice leaves loopback out of its host candidates; the recorder under test listens on
# 127.0.0.1 only.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

URL, TOKEN, SECONDS = sys.argv[1], sys.argv[2], float(sys.argv[3])
CODEC = sys.argv[4] if len(sys.argv) > 4 else "vp8"


class Video(MediaStreamTrack):
    """A moving test pattern at 30 fps, timestamped on a 90 kHz clock from one start."""
    kind = "video"

    def __init__(self, start):
        super().__init__()
        self.start, self.count = start, 0

    async def recv(self):
        if self.count >= round(SECONDS * 30):
            raise MediaStreamError  # the wanted duration is produced: the track ends
        at = self.start + self.count / 30
        await asyncio.sleep(max(0, at - time.monotonic()))
        frame = VideoFrame(width=320, height=240, format="yuv420p")
        luma = bytearray([(self.count * 4) % 256]) * (320 * 240)
        bar = (self.count * 3) % 240
        luma[bar * 320:(bar + 1) * 320] = b"\xff" * 320
        frame.planes[0].update(bytes(luma))
        frame.planes[1].update(bytes([128]) * (160 * 120))
        frame.planes[2].update(bytes([(self.count * 2) % 256]) * (160 * 120))
        frame.pts, frame.time_base = self.count * 3000, fractions.Fraction(1, 90000)
        self.count += 1
        return frame


class Audio(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames at 48 kHz."""
    kind = "audio"

    def __init__(self, start):
        super().__init__()
        self.start, self.count = start, 0

    async def recv(self):
        if self.count >= round(SECONDS * 50):
            raise MediaStreamError
        at = self.start + self.count * 0.02
        await asyncio.sleep(max(0, at - time.monotonic()))
        first = self.count * 960
        pcm = struct.pack("<960h", *(int(8000 * math.sin(2 * math.pi * 440 * (first + i) / 48000)) for i in range(960)))
        frame = AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.count * 960, fractions.Fraction(1, 48000)
        self.count += 1
        return frame


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http(method, url, body=None, content_type=None):
    """(status, headers, body, the URL that answered): a 307/308 is followed with the same
    method and body, as a WHIP client must (RFC 9725 4.5; urllib only follows GETs)."""
    opener = urllib.request.build_opener(NoRedirect)
    for _ in range(3):
        req = urllib.request.Request(url, data=body, method=method)
        req.add_header("Authorization", f"Bearer {TOKEN}")
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read(), url
        except urllib.error.HTTPError as e:
            if e.code not in (307, 308):
                raise
            url = urllib.parse.urljoin(url, e.headers["Location"])
    raise RuntimeError("too many redirects")


async def main():
    pc = RTCPeerConnection()
    start = time.monotonic() + 1.0
    video, audio = Video(start), Audio(start)
    video_tx = pc.addTransceiver(video, direction="sendonly")
    pc.addTransceiver(audio, direction="sendonly")
    mime = {"vp8": "video/VP8", "h264": "video/H264"}[CODEC]
    video_tx.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == mime])
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, answer, answered_by = await asyncio.get_running_loop().run_in_executor(
        None, http, "POST", URL, pc.localDescription.sdp.encode(), "application/sdp")
    assert status == 201, status
    location = headers.get("Location") or headers.get("location")
    # The session lives where the offer was answered (after any redirect).
    session = urllib.parse.urljoin(answered_by, location)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.decode(), type="answer"))
    # Frames are produced from `start` on; wait until the wanted duration has been produced.
    await asyncio.sleep(max(0, start + SECONDS - time.monotonic()) + 0.5)
    sent_video, sent_audio = video.count, audio.count
    await asyncio.get_running_loop().run_in_executor(None, http, "DELETE", session)
    await pc.close()
    print(json.dumps({"location": location, "answeredBy": answered_by, "videoFrames": sent_video, "audioFrames": sent_audio}))


asyncio.run(main())
