// Drives Debian's chromium (headless, through playwright-core) against the review page and
// prints what it saw as one JSON object on stdout; tests/media/review.rs decides pass or fail.
//
//   node review.mjs <mode> <config.json>
//
// config: { url, chromium, outDir, chat?: number, waitSecs? }
// modes:
//   full     the recorded call: plays, seeks from chat lines, screenshots, rrweb replay
//   live     a live instance: the live banner, then waits for the chat to grow (refresh)
//   audio    an audio-only call: the audio player and its waveform
//   tracks   no composition: the per-track files played in step by the page's clock
//   refused  a link that must be refused: the status and the page's message
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const [mode, configPath] = process.argv.slice(2);
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const browser = await chromium.launch({
  executablePath: config.chromium || '/usr/bin/chromium',
  headless: true,
  timeout: 60_000,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--autoplay-policy=no-user-gesture-required', '--mute-audio',
  ],
});
const out = { mode, requests: [], bodies: [], consoleErrors: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  page.on('console', (m) => { if (m.type() === 'error') out.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => out.consoleErrors.push('pageerror: ' + e.message));
  page.on('request', (r) => out.requests.push({ url: r.url(), authorization: r.headers()['authorization'] || null }));
  out.failed = [];
  page.on('response', async (r) => {
    if (r.status() >= 400) out.failed.push(r.status() + ' ' + r.url());
    const type = r.headers()['content-type'] || '';
    if (type.includes('json') || type.includes('html') || type.includes('javascript') || type.includes('css')) {
      try { out.bodies.push((await r.body()).toString('utf8')); } catch (e) { /* streamed away */ }
    }
  });

  const response = await page.goto(config.url, { waitUntil: 'load' });
  out.status = response.status();
  if (mode === 'refused') {
    out.refused = await page.locator('#refused').count();
    out.reason = out.refused ? await page.textContent('#reason') : null;
  } else {
    await page.waitForFunction(() => window.review && window.review.ready, null, { timeout: 30_000 });
    out.data = await page.evaluate(() => window.review.data);
    out.banners = await page.$$eval('#banners .banner', (els) => els.map((e) => ({ class: e.className, text: e.textContent })));
    out.chatLines = await page.locator('#chat li.line').count();
    if (mode === 'live') await live(page);
    if (mode === 'audio') await audio(page);
    if (mode === 'tracks') await tracks(page);
    if (mode === 'full') await full(page);
    out.html = await page.content();
  }
} catch (e) {
  out.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out));

async function live(page) {
  // Tell the test the page is up: it adds a chat line now, and the page must pick it up.
  writeFileSync(join(config.outDir, 'live-ready'), String(out.chatLines));
  const deadline = Date.now() + (config.waitSecs || 20) * 1000;
  out.laterChatLines = out.chatLines;
  while (Date.now() < deadline && out.laterChatLines <= out.chatLines) {
    await sleep(500);
    out.laterChatLines = await page.locator('#chat li.line').count();
  }
  out.playerText = await page.textContent('#player');
}

async function audio(page) {
  await page.waitForFunction(() => {
    const c = document.querySelector('#waveform');
    return c && c.dataset.drawn;
  }, null, { timeout: 30_000 });
  out.audio = await page.locator('audio#main').count();
  out.video = await page.locator('video').count();
  out.waveform = await page.$eval('#waveform', (c) => c.dataset.drawn);
  const box = await page.locator('#waveform').boundingBox();
  out.shots = [{ path: join(config.outDir, 'audio.png'), waveform: box }];
  await page.screenshot({ path: out.shots[0].path });
}

async function full(page) {
  const video = page.locator('video#main');
  await video.waitFor();
  await page.waitForFunction(() => document.querySelector('video#main').readyState >= 2, null, { timeout: 30_000 });
  out.videoDuration = await page.$eval('video#main', (v) => v.duration);

  // It plays: currentTime advances.
  await page.click('#play');
  await sleep(800);
  const t1 = await page.$eval('video#main', (v) => v.currentTime);
  await sleep(1500);
  const t2 = await page.$eval('video#main', (v) => v.currentTime);
  out.played = { t1, t2 };
  await page.click('#play');
  out.pausedAfterToggle = await page.$eval('video#main', (v) => v.paused);

  // A click on each chat line seeks there; the line is highlighted. A screenshot after each.
  out.seeks = [];
  out.shots = [];
  const lines = await page.locator('#chat li.line').count();
  for (let i = 0; i < lines; i++) {
    const seeked = page.$eval('video#main', (v) => new Promise((resolve) => {
      v.addEventListener('seeked', () => resolve(v.currentTime), { once: true });
    }));
    await page.click(`#chat li.line[data-index="${i}"]`);
    const currentTime = await seeked;
    await sleep(700); // the frame is painted and the replay has caught up
    const highlighted = await page.$eval(`#chat li.line[data-index="${i}"]`, (e) => e.classList.contains('current'));
    out.seeks.push({ index: i, t: out.data.chat[i].t, currentTime, highlighted });
    const shot = {
      path: join(config.outDir, `line-${i}.png`),
      video: await video.boundingBox(),
      instance: await page.locator('#lanes .instance').first().boundingBox(),
      line: await page.locator(`#chat li.line[data-index="${i}"]`).boundingBox(),
      replay: await page.locator('#replay').isVisible() ? await page.locator('#replay').boundingBox() : null,
      replayOff: await page.locator('#replay .off').count() ? await page.$eval('#replay .off', (e) => e.hidden) : null,
    };
    shot.replayInfo = await page.evaluate(() => {
      const root = document.querySelector('#replay');
      const frame = root && root.querySelector('iframe');
      const body = frame && frame.contentDocument && frame.contentDocument.body;
      return {
        hidden: root ? root.hidden : null,
        wrapper: root && root.querySelector('.replayer-wrapper') ? root.querySelector('.replayer-wrapper').style.transform : null,
        frame: frame ? [frame.getAttribute('width'), frame.getAttribute('height'), frame.getAttribute('sandbox')] : null,
        body: body ? body.getAttribute('style') : null,
        html: root ? root.innerHTML.slice(0, 400) : null,
        time: window.review.replay ? window.review.replay.replayer.getCurrentTime() : null,
      };
    });
    await page.screenshot({ path: shot.path });
    out.shots.push(shot);
  }
  // Playing highlights the line whose time has come.
  await page.click('#chat li.line[data-index="0"]');
  await page.click('#play');
  const next = out.data.chat[1] ? out.data.chat[1].t : null;
  if (next !== null) {
    await page.waitForFunction((t) => document.querySelector('video#main').currentTime > t + 0.2, next, { timeout: 15_000 });
    out.playingHighlight = await page.$$eval('#chat li.line.current', (els) => els.map((e) => e.dataset.index));
  }
  await page.click('#play');
  out.stereoLink = await page.$eval('#stereo', (a) => !a.hidden && !!a.href);
}

async function tracks(page) {
  out.trackVideos = await page.locator('#player .track video').count();
  out.trackAudios = await page.locator('#player .track audio').count();
  out.mainVideo = await page.locator('video#main').count();
  await page.waitForFunction(() => [...document.querySelectorAll('#player .track video')].every((v) => v.readyState >= 2), null, { timeout: 30_000 });
  await page.click('#play');
  await sleep(2000);
  out.inStep = await page.evaluate(() => {
    const clock = window.review.clock.now();
    const track = window.review.data.instances[0].tracks.find((t) => t.kind === 'VIDEO');
    const video = document.querySelector('#player .track video');
    return { clock, start: track.start, end: track.end, videoTime: video.currentTime, paused: video.paused };
  });
  await page.click('#play');
}
