// A browser WHIP publisher: Debian's chromium (headless, fake camera and microphone, through
// playwright-core) makes the offer in a page served here on loopback; this script POSTs it to
// the recorder's WHIP URL (so the page needs no CORS), hands the answer back, publishes for
// `seconds`, then DELETEs the session. Prints JSON lines: {"published": location}, the sender's
// stats every second ({"stats": {...}}), and {"done": true, stats, errors}.
//
//   node whip-chromium.mjs <config.json>
//   config: { whip, token, seconds, codec?: "VP8"|"VP9"|"AV1"|"H264", simulcast?: bool,
//             scalabilityMode?: e.g. "L3T3_KEY" (VP9/AV1 SVC, one encoding),
//             width?, height?, audio?: bool, rtx?: bool (default true), relay?: bool, chromium? }
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');
const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const page = `<!doctype html><meta charset="utf-8"><title>whip publisher</title>
<script>
window.offer = async ({ codec, simulcast, scalabilityMode, width, height, audio, rtxOff }) => {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { width: { exact: width }, height: { exact: height }, frameRate: 30 }, audio,
  });
  const pc = new RTCPeerConnection({ iceServers: [] });
  window.pc = pc;
  const [video] = stream.getVideoTracks();
  const sendEncodings = simulcast
    ? [{ rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
       { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
       { rid: 'f', maxBitrate: 1500000 }]
    : scalabilityMode ? [{ scalabilityMode }] : undefined;
  const vt = pc.addTransceiver(video, { direction: 'sendonly', sendEncodings });
  if (codec) {
    const all = RTCRtpSender.getCapabilities('video').codecs;
    const wanted = all.filter((c) => c.mimeType.toLowerCase() === 'video/' + codec.toLowerCase());
    if (!wanted.length) throw new Error('chromium cannot send ' + codec);
    // RTX stays offered (as a browser app offers it) unless the test turns it off.
    const rtx = rtxOff ? [] : all.filter((c) => c.mimeType.toLowerCase() === 'video/rtx');
    vt.setCodecPreferences([...wanted, ...rtx]);
  }
  for (const a of stream.getAudioTracks()) pc.addTransceiver(a, { direction: 'sendonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && resolve());
    setTimeout(resolve, 3000);
  });
  return pc.localDescription.sdp;
};
window.answer = async (sdp) => {
  await window.pc.setRemoteDescription({ type: 'answer', sdp });
  await new Promise((resolve, reject) => {
    const check = () => {
      if (window.pc.connectionState === 'connected') resolve();
      if (window.pc.connectionState === 'failed') reject(new Error('connection failed'));
    };
    window.pc.addEventListener('connectionstatechange', check);
    check();
    setTimeout(() => reject(new Error('not connected within 10 s')), 10000);
  });
};
window.stats = async () => {
  const out = { video: [], audio: null };
  (await window.pc.getStats()).forEach((s) => {
    if (s.type !== 'outbound-rtp') return;
    const row = { rid: s.rid || null, scalabilityMode: s.scalabilityMode || null, packetsSent: s.packetsSent, framesEncoded: s.framesEncoded, framesSent: s.framesSent,
      keyFramesEncoded: s.keyFramesEncoded, frameWidth: s.frameWidth, frameHeight: s.frameHeight,
      nackCount: s.nackCount, retransmittedPacketsSent: s.retransmittedPacketsSent, pliCount: s.pliCount };
    if (s.kind === 'video') out.video.push(row); else out.audio = row;
  });
  return out;
};
</script>`;

const server = createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(page);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const browser = await chromium.launch({
  executablePath: config.chromium || '/usr/bin/chromium',
  headless: true,
  timeout: 60_000,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream', '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    ...(process.env.CHROMIUM_ARGS ? process.env.CHROMIUM_ARGS.split(' ') : []),
  ],
});
let location = null;
const headers = (extra) => ({ ...(config.token ? { authorization: 'Bearer ' + config.token } : {}), ...extra });
try {
  const tab = await (await browser.newContext()).newPage();
  const errors = [];
  tab.on('pageerror', (e) => errors.push(String(e)));
  await tab.goto(`http://127.0.0.1:${server.address().port}/`);
  let offer = await tab.evaluate((o) => window.offer(o), {
    codec: config.codec || null, simulcast: !!config.simulcast, scalabilityMode: config.scalabilityMode || null,
    width: config.width || 1280, height: config.height || 720, audio: config.audio !== false,
    rtxOff: config.rtx === false,
  });
  // Through a relay (an impaired path): the recorder learns the browser only as the relay, and
  // the browser reaches the recorder only through it.
  if (config.relay) offer = offer.split('\r\n').filter((l) => !l.startsWith('a=candidate')).join('\r\n');
  const resp = await fetch(config.whip, { method: 'POST', headers: headers({ 'content-type': 'application/sdp' }), body: offer });
  let answer = await resp.text();
  if (resp.status !== 201) throw new Error(`POST answered ${resp.status}: ${answer}`);
  location = new URL(resp.headers.get('location'), config.whip).toString();
  if (config.relay) {
    const cand = answer.split('\r\n').find((l) => l.startsWith('a=candidate'));
    const fields = cand.split(' ');
    say({ candidate: `${fields[4]}:${fields[5]}` });
    const relay = await new Promise((resolve) => {
      let buf = '';
      process.stdin.on('data', (d) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl >= 0) { process.stdin.destroy(); resolve(buf.slice(0, nl).trim()); }
      });
    });
    const [rip, rport] = relay.split(':');
    let first = true;
    answer = answer.split('\r\n').filter((l) => {
      if (!l.startsWith('a=candidate')) return true;
      const keep = first; first = false; return keep;
    }).map((l) => {
      if (!l.startsWith('a=candidate')) return l;
      const f = l.split(' '); f[4] = rip; f[5] = rport; return f.join(' ');
    }).join('\r\n');
  }
  await tab.evaluate((sdp) => window.answer(sdp), answer);
  say({ published: location, offer, answer });
  const end = Date.now() + (config.seconds || 10) * 1000;
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, Math.min(1000, end - Date.now())));
    say({ stats: await tab.evaluate(() => window.stats()) });
  }
  // The camera stops first: the last stats count every frame sent, and the recorder has a
  // second to take the last ones (and their retransmissions) before the session ends.
  await tab.evaluate(() => window.pc.getSenders().forEach((s) => s.track && s.track.stop()));
  await new Promise((r) => setTimeout(r, 1000));
  const stats = await tab.evaluate(() => window.stats());
  const del = await fetch(location, { method: 'DELETE', headers: headers({}) });
  say({ done: true, stats, errors, deleteStatus: del.status });
} catch (e) {
  say({ error: String(e && e.stack || e) });
} finally {
  await browser.close();
  server.close();
}
