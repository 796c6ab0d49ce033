// A browser publisher in a Janus VideoRoom: Debian's chromium (headless, fake camera and
// microphone, through playwright-core) loads Janus' own JavaScript API (Debian's
// libjs-janus-gateway) from a page served here on loopback, joins the room as a publisher and
// publishes VP8 + Opus for `seconds`. Prints one JSON line when published ({"published": id})
// and one when done ({"done": true, stats}); tests/media/janus.rs drives the rest.
//
//   node janus-publish.mjs <config.json>
//   config: { janus: "http://127.0.0.1:PORT/janus", room, display, seconds, chromium? }
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');
const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const files = {
  '/janus.js': '/usr/share/javascript/janus-gateway/janus.js',
  '/adapter.js': '/usr/share/javascript/webrtc-adapter/adapter.js',
};
const page = `<!doctype html><meta charset="utf-8"><title>publisher</title>
<script src="/adapter.js"></script><script src="/janus.js"></script>
<script>
window.publish = (server, room, display) => new Promise((resolve, reject) => {
  Janus.init({ debug: false, callback: () => {
    const janus = new Janus({ server, iceServers: [], error: reject, success: () => {
      janus.attach({ plugin: 'janus.plugin.videoroom', error: reject,
        success: (handle) => {
          window.handle = handle;
          handle.send({ message: { request: 'join', room, ptype: 'publisher', display } });
        },
        onmessage: (msg, jsep) => {
          if (msg.videoroom === 'joined') {
            window.publisherId = msg.id;
            handle.createOffer({
              tracks: [{ type: 'audio', capture: true, recv: false }, { type: 'video', capture: { width: 640, height: 480 }, recv: false }],
              success: (offer) => handle.send({ message: { request: 'configure', audio: true, video: true }, jsep: offer }),
              error: reject,
            });
          }
          if (jsep) handle.handleRemoteJsep({ jsep });
          if (msg.error) reject(new Error(msg.error));
        },
        webrtcState: (up) => { if (up) resolve(window.publisherId); },
      });
    }});
  }});
});
</script>`;

const server = createServer((req, res) => {
  if (files[req.url]) {
    res.writeHead(200, { 'content-type': 'text/javascript' });
    res.end(readFileSync(files[req.url]));
  } else {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
  }
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
  ],
});
try {
  const context = await browser.newContext();
  const tab = await context.newPage();
  const errors = [];
  tab.on('pageerror', (e) => errors.push(String(e)));
  await tab.goto(`http://127.0.0.1:${server.address().port}/`);
  const id = await tab.evaluate(({ janus, room, display }) => window.publish(janus, room, display),
    { janus: config.janus, room: config.room, display: config.display || 'agent' });
  say({ published: id });
  const stats = () => tab.evaluate(async () => {
    const pc = window.handle.webrtcStuff.pc;
    const out = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp') out[s.kind] = { packetsSent: s.packetsSent, framesEncoded: s.framesEncoded, keyFramesEncoded: s.keyFramesEncoded, pliCount: s.pliCount, firCount: s.firCount };
    });
    return out;
  });
  // The encoder's counters every second: the test sees when the recorder's keyframe requests
  // (relayed by Janus as PLI) made Chromium encode a keyframe.
  const end = Date.now() + (config.seconds || 10) * 1000;
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, Math.min(1000, end - Date.now())));
    say({ stats: await stats() });
  }
  say({ done: true, stats: await stats(), errors });
} catch (e) {
  say({ error: String(e && e.stack || e) });
} finally {
  await browser.close();
  server.close();
}
