// The review page: the recording, its chat and its co-browse sessions on one timeline.
// Everything is loaded from the page's own URL plus `/data`, with the link's signed query; the
// page holds no key. `window.review` exposes the state (tests and curious reviewers use it).
'use strict';
(function () {
  const query = location.search;
  const dataUrl = location.pathname.replace(/\/+$/, '') + '/data' + query;
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === false || v === null || v === undefined) continue;
      node.setAttribute(k, v === true ? '' : String(v));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(t) {
    t = Math.max(0, t || 0);
    const m = Math.floor(t / 60);
    const s = (t - m * 60).toFixed(3).padStart(6, '0');
    return m + ':' + s;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : '';
  }

  const state = {
    ready: false,
    data: null,
    clock: null,
    mediaKey: '',
    chat: [],
    current: -1,
    replay: null,
    error: null,
  };
  window.review = state;

  // ---- clocks: the composition's media element, or a clock of our own that drives the
  // per-track files placed on the timeline ----
  class MediaClock {
    constructor(media) { this.media = media; }
    now() { return this.media.currentTime; }
    get playing() { return !this.media.paused && !this.media.ended; }
    play() { return this.media.play(); }
    pause() { this.media.pause(); }
    seek(t) { this.media.currentTime = Math.max(0, t); }
    tick() {}
  }

  class SoftClock {
    constructor(duration, elements) {
      this.duration = duration;
      this.elements = elements;
      this.base = 0;
      this.startedAt = null;
    }
    now() {
      if (this.startedAt === null) return this.base;
      return Math.min(this.duration, this.base + (performance.now() - this.startedAt) / 1000);
    }
    get playing() { return this.startedAt !== null; }
    play() {
      const t = this.now();
      this.base = t >= this.duration ? 0 : t;
      this.startedAt = performance.now();
      this.sync(true);
      return Promise.resolve();
    }
    pause() { this.base = this.now(); this.startedAt = null; this.sync(true); }
    seek(t) {
      this.base = Math.max(0, Math.min(this.duration, t));
      if (this.startedAt !== null) this.startedAt = performance.now();
      this.sync(true);
    }
    tick() {
      if (this.playing && this.now() >= this.duration) this.pause();
      else this.sync(false);
    }
    // Each file plays while the clock is inside its span, at the clock's time.
    sync(force) {
      const t = this.now();
      for (const { media, start, end } of this.elements) {
        if (t < start || t >= end) {
          if (!media.paused) media.pause();
          if (force) {
            const edge = t < start ? 0 : Math.max(0, end - start);
            if (Math.abs(media.currentTime - edge) > 0.05) media.currentTime = edge;
          }
          continue;
        }
        const want = t - start;
        if (force || Math.abs(media.currentTime - want) > 0.3) media.currentTime = want;
        if (this.playing && media.paused) media.play().catch(() => {});
        if (!this.playing && !media.paused) media.pause();
      }
    }
  }

  // ---- the player ----
  function mediaKey(d) {
    const c = d.composition;
    const urls = [];
    if (c && c.url) urls.push(c.url);
    else for (const i of d.instances) for (const t of i.tracks) if (t.url) urls.push(t.url);
    return (d.encrypted ? 'enc|' : '') + urls.join('|');
  }

  function buildPlayer(d) {
    const player = $('player');
    player.textContent = '';
    const c = d.composition;
    if (d.encrypted) {
      player.append(el('div', { class: 'empty' },
        "Encrypted with the customer's key: the recorder cannot play it. Download the files through the API and decrypt them with age."));
      return new SoftClock(d.duration, []);
    }
    if (c && c.url) {
      if (c.hasVideo) {
        const video = el('video', { id: 'main', preload: 'auto', playsinline: true });
        video.src = c.url;
        player.append(video);
        return new MediaClock(video);
      }
      const canvas = el('canvas', { id: 'waveform', width: 1200, height: 120 });
      const audio = el('audio', { id: 'main', preload: 'auto', controls: true });
      audio.src = c.url;
      player.append(canvas, audio);
      drawWaveform(canvas, c.url);
      return new MediaClock(audio);
    }
    const grid = el('div', { class: 'tracks' });
    const elements = [];
    for (const instance of d.instances) {
      for (const track of instance.tracks) {
        if (!track.url) continue;
        const box = el('div', { class: 'track', 'data-track': track.trackId });
        const media = el(track.kind === 'VIDEO' ? 'video' : 'audio', { preload: 'auto', playsinline: true });
        media.src = track.url;
        // A phone's picture comes sideways with the turn to apply beside it (RTP orientation).
        if (track.rotation) media.style.transform = 'rotate(' + track.rotation + 'deg)';
        const role = track.role ? ' · ' + track.role.toLowerCase() : '';
        box.append(media, el('span', { class: 'label' },
          track.userId + role + ' · ' + track.streamType + ' ' + track.kind.toLowerCase()));
        grid.append(box);
        elements.push({ media, start: track.start, end: track.end });
      }
    }
    if (elements.length) {
      player.append(grid);
    } else {
      let why = 'No media was recorded.';
      if (d.live) why = 'Recording in progress: the media appears here when the instance stops.';
      else if (c && c.state !== 'failed') why = 'The composition is ' + c.state + '…';
      player.append(el('div', { class: 'empty' }, why));
    }
    return new SoftClock(d.duration, elements);
  }

  // An audio-only call: its waveform, drawn from the decoded file.
  async function drawWaveform(canvas, url) {
    try {
      const bytes = await (await fetch(url)).arrayBuffer();
      const ctx = new OfflineAudioContext(1, 1, 48000);
      const audio = await ctx.decodeAudioData(bytes);
      const samples = audio.getChannelData(0);
      const g = canvas.getContext('2d');
      const { width, height } = canvas;
      g.fillStyle = '#0d1b2a';
      g.fillRect(0, 0, width, height);
      g.fillStyle = '#4fc3f7';
      const step = Math.max(1, Math.floor(samples.length / width));
      const peaks = new Float32Array(width);
      let loudest = 0;
      for (let x = 0; x < width; x++) {
        let peak = 0;
        for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i++) {
          peak = Math.max(peak, Math.abs(samples[i]));
        }
        peaks[x] = peak;
        loudest = Math.max(loudest, peak);
      }
      // Scaled to the loudest moment: a quiet call is still readable.
      for (let x = 0; x < width; x++) {
        const h = Math.max(1, (peaks[x] / (loudest || 1)) * height * 0.9);
        g.fillRect(x, (height - h) / 2, 1, h);
      }
      canvas.dataset.drawn = 'true';
    } catch (e) {
      canvas.dataset.drawn = 'failed';
    }
  }

  // ---- timeline ----
  function total(d) {
    let t = d.duration;
    const clock = state.clock;
    if (clock instanceof MediaClock && isFinite(clock.media.duration)) t = Math.max(t, clock.media.duration);
    return Math.max(t, 0.001);
  }

  function pct(t, d) { return (100 * Math.max(0, t) / total(d)).toFixed(4) + '%'; }

  function renderTimeline(d) {
    const lanes = $('lanes');
    lanes.textContent = '';
    for (const i of d.instances) {
      const cls = ['instance', i.placement];
      if (i.erased || i.erasureRequested) cls.push('erased');
      const bar = el('div', {
        class: cls.join(' '), 'data-id': i.instanceId,
        title: i.instanceId + ' · ' + i.state + ' · ' + fmt(i.offset) + '–' + fmt(i.offset + i.length),
      }, i.state.toLowerCase());
      bar.style.left = pct(i.offset, d);
      bar.style.width = pct(i.length, d);
      lanes.append(bar);
      for (const q of i.silences || []) {
        const span = el('div', {
          class: 'silence',
          title: q.userId + ' (' + q.streamType + ') silent ' + fmt(q.start) + '–' + fmt(q.end) + ': on hold or muted',
        });
        span.style.left = pct(q.start, d);
        span.style.width = pct(q.end - q.start, d);
        lanes.append(span);
      }
      for (const p of i.pauses) {
        const span = el('div', { class: 'pause', title: 'paused ' + fmt(p.start) + '–' + fmt(p.end) });
        span.style.left = pct(p.start, d);
        span.style.width = pct(p.end - p.start, d);
        lanes.append(span);
      }
    }
    for (const g of d.gaps) {
      const mark = el('div', { class: 'gap', title: g.seconds.toFixed(1) + ' s between instances, cut' });
      mark.style.left = pct(g.at, d);
      lanes.append(mark);
    }
    for (const line of d.chat) {
      const tick = el('div', { class: 'chat-tick', title: fmt(line.t) + ' ' + line.userId + ': ' + line.text });
      tick.style.left = pct(line.t, d);
      lanes.append(tick);
    }
    for (const s of d.cobrowse) {
      const span = el('div', { class: 'cobrowse-span', title: 'co-browse ' + s.sessionId });
      span.style.left = pct(s.start, d);
      span.style.width = pct(s.end - s.start, d);
      lanes.append(span);
    }
    $('total').textContent = fmt(total(d));
  }

  function renderInstances(d) {
    const table = el('table');
    const head = el('tr');
    for (const h of ['instance', 'state', 'started', 'stopped', 'on the timeline', 'notes']) head.append(el('th', {}, h));
    table.append(head);
    for (const i of d.instances) {
      const notes = [];
      if (i.recovered) notes.push('recovered ' + when(i.recovered));
      if (i.paused) notes.push('paused now');
      if (i.pauses.length) notes.push(i.pauses.length + ' pause(s)');
      if ((i.silences || []).length) notes.push(i.silences.length + ' hold(s) or mute(s)');
      if (i.stopReason) notes.push('stop reason ' + i.stopReason);
      if (i.error) notes.push(i.error.code + ': ' + i.error.message);
      if (i.erased) notes.push('erased ' + when(i.erased));
      else if (i.erasureRequested) notes.push('being erased');
      const row = el('tr', { 'data-id': i.instanceId });
      for (const v of [i.instanceId, i.state, when(i.started), when(i.stopped),
        fmt(i.offset) + '–' + fmt(i.offset + i.length), notes.join('; ')]) row.append(el('td', {}, v));
      table.append(row);
    }
    $('instances').textContent = '';
    $('instances').append(table);
  }

  function renderBanners(d) {
    const box = $('banners');
    box.textContent = '';
    const add = (cls, text) => box.append(el('div', { class: 'banner ' + cls }, text));
    if (d.encrypted) add('encrypted', "This application's recordings are encrypted with the customer's key (age). The recorder cannot read them: only the timeline is shown.");
    for (const i of d.instances) {
      if (i.placement === 'live') add('live', 'Recording in progress (instance ' + i.instanceId + ', ' + i.state + '): this page refreshes every ' + d.refreshSecs + ' s; its media appears when it stops.');
      if (i.paused) add('paused', 'Recording is paused now (instance ' + i.instanceId + ').');
      if (i.recovered) add('recovered', 'Instance ' + i.instanceId + ' was recovered after the recorder restarted (' + when(i.recovered) + '): media sent while it was down is missing.');
      if (i.state === 'ABORTED') add('aborted', 'Instance ' + i.instanceId + ' was aborted' + (i.error ? ': ' + i.error.message : '') + '. What it recorded before is kept.');
      if (i.state === 'FAILED') add('failed', 'Instance ' + i.instanceId + ' failed' + (i.error ? ': ' + i.error.message : '') + '.');
      if (i.erased) add('erased', 'Instance ' + i.instanceId + ' was erased on ' + when(i.erased) + ': nothing of it is shown.');
      else if (i.erasureRequested) add('erased', 'Instance ' + i.instanceId + ' is being erased (asked ' + when(i.erasureRequested) + ').');
    }
    const c = d.composition;
    const erased = c && c.error && c.error.code === 'ERASED';
    if (c && c.state === 'failed' && !erased) add('failed', 'The composition failed' + (c.error ? ' (' + c.error.message + ')' : '') + '; the per-track files are shown instead.');
    if (c && c.problems && c.problems.length) add('aborted', 'The composition left something out: ' + c.problems.join('; '));
  }

  function renderChat(d) {
    const list = $('chat');
    list.textContent = '';
    state.chat = [];
    state.current = -1;
    if (!d.chat.length) {
      list.append(el('li', { class: 'empty' }, d.encrypted ? 'Encrypted.' : 'No chat.'));
      return;
    }
    d.chat.forEach((line, index) => {
      const item = el('li', { class: 'line', 'data-t': line.t, 'data-index': index, title: when(line.time) });
      item.append(el('span', { class: 'when' }, fmt(line.t)),
        el('span', { class: 'who' }, (line.userDisplayName || line.userId) + ':'),
        el('span', { class: 'text' }, line.text));
      item.addEventListener('click', () => seek(line.t));
      list.append(item);
      state.chat.push({ t: line.t, item });
    });
  }

  function renderCobrowse(d) {
    const box = $('cobrowse');
    box.textContent = '';
    if (!d.cobrowse.length) {
      box.append(el('div', { class: 'empty' }, d.encrypted ? 'Encrypted.' : 'No co-browse session.'));
      return;
    }
    for (const s of d.cobrowse) {
      const item = el('div', { class: 'session', 'data-session': s.sessionId, 'data-rrweb': s.rrweb });
      item.append(el('div', {}, 'Session ' + s.sessionId + ' · ' + s.numEvents + ' events · ' + fmt(s.start) + '–' + fmt(s.end)));
      if (s.rrweb) {
        const button = el('button', { type: 'button', class: 'replay' }, 'Replay with the video');
        button.addEventListener('click', () => openReplay(s));
        item.append(button);
      } else {
        const list = el('ol', { class: 'events' });
        item.append(list);
        listEvents(s, list);
      }
      box.append(item);
    }
    const current = state.replay && d.cobrowse.find((s) => s.sessionId === state.replay.session.sessionId);
    if (current) state.replay.session = current;
    else {
      const first = d.cobrowse.find((s) => s.rrweb);
      if (first && !state.replay) openReplay(first);
    }
  }

  async function listEvents(s, list) {
    try {
      const events = await (await fetch(s.eventsUrl)).json();
      for (const e of events) {
        const t = s.start + (e.timestamp - s.firstTimestamp) / 1000;
        const text = typeof e.payload === 'string' ? e.payload : JSON.stringify(e.payload);
        const item = el('li', { 'data-t': t, title: text }, fmt(t) + ' #' + e.sequenceId + ' ' + text);
        item.addEventListener('click', () => seek(t));
        list.append(item);
      }
    } catch (e) {
      list.append(el('li', {}, 'The events could not be loaded.'));
    }
  }

  // ---- rrweb replay, kept in step with the clock ----
  async function openReplay(s) {
    if (typeof rrwebReplay === 'undefined') return;
    const root = $('replay');
    const events = (await (await fetch(s.eventsUrl)).json())
      .map((e) => e.payload)
      .sort((a, b) => a.timestamp - b.timestamp);
    if (state.replay) {
      try { state.replay.replayer.destroy(); } catch (e) { /* already gone */ }
    }
    root.textContent = '';
    root.hidden = false;
    const replayer = new rrwebReplay.Replayer(events, {
      root, skipInactive: false, showWarning: false, showDebug: false, mouseTail: false, triggerFocus: false,
    });
    const off = el('div', { class: 'off' }, 'Before this co-browse session');
    root.append(off);
    state.replay = { session: s, replayer, off, playing: false, pausedAt: null };
    fitReplay();
    syncReplay(true);
  }

  function fitReplay() {
    const root = $('replay');
    const wrapper = root.querySelector('.replayer-wrapper');
    const frame = root.querySelector('iframe');
    if (!wrapper || !frame) return;
    const width = parseFloat(frame.getAttribute('width')) || frame.offsetWidth || 1024;
    const height = parseFloat(frame.getAttribute('height')) || frame.offsetHeight || 768;
    const scale = root.clientWidth / width;
    wrapper.style.transform = 'scale(' + scale + ')';
    root.style.height = Math.ceil(height * scale) + 'px';
    if (state.replay) state.replay.fitWidth = root.clientWidth;
  }

  function syncReplay(force) {
    const r = state.replay;
    if (!r || !state.clock) return;
    const s = r.session;
    const t = state.clock.now();
    // The page's layout settles after the replay opens (and on resizes): keep it fitted.
    if ($('replay').clientWidth !== r.fitWidth) fitReplay();
    const length = Math.max(0, (s.end - s.start) * 1000);
    const offset = Math.max(0, (t - s.start) * 1000);
    // Past the last event the replay rests on the last state (1 ms after it, so that the last
    // event is applied): no replaying it on every frame.
    const target = Math.min(offset, length + 1);
    const inside = t >= s.start;
    r.off.hidden = inside;
    if (state.clock.playing && inside && offset <= length) {
      if (!r.playing || force || Math.abs(r.replayer.getCurrentTime() - target) > 500) {
        r.replayer.play(target);
        r.playing = true;
      }
    } else if (r.playing || force || r.pausedAt === null || Math.abs(r.pausedAt - target) > 1) {
      r.replayer.pause(target);
      r.playing = false;
      r.pausedAt = target;
    }
  }

  // ---- moving in time ----
  function seek(t) {
    if (!state.clock) return;
    state.clock.seek(t);
    state.lastSeek = t;
    syncReplay(true);
    tick(true);
  }

  function highlight(t, scroll) {
    let index = -1;
    for (let i = 0; i < state.chat.length; i++) {
      if (state.chat[i].t <= t + 0.001) index = i;
      else break;
    }
    if (index === state.current) return;
    if (state.current >= 0 && state.chat[state.current]) state.chat[state.current].item.classList.remove('current');
    state.current = index;
    if (index >= 0) {
      state.chat[index].item.classList.add('current');
      if (scroll) state.chat[index].item.scrollIntoView({ block: 'nearest' });
    }
  }

  function tick(force) {
    const clock = state.clock;
    if (!clock || !state.data) return;
    clock.tick();
    const t = clock.now();
    $('clock').textContent = fmt(t);
    $('playhead').style.left = pct(t, state.data);
    $('play').textContent = clock.playing ? 'Pause' : 'Play';
    highlight(t, clock.playing || force === true);
    if (force !== true) syncReplay(false);
  }

  function loop() {
    tick(false);
    requestAnimationFrame(loop);
  }

  // ---- loading ----
  function render(d) {
    state.data = d;
    const key = mediaKey(d);
    if (key !== state.mediaKey || !state.clock) {
      const at = state.clock ? state.clock.now() : 0;
      state.clock = buildPlayer(d);
      state.mediaKey = key;
      if (at > 0) state.clock.seek(at);
      if (state.clock instanceof MediaClock) {
        state.clock.media.addEventListener('loadedmetadata', () => renderTimeline(state.data));
      }
    }
    renderBanners(d);
    renderTimeline(d);
    renderInstances(d);
    renderChat(d);
    renderCobrowse(d);
    const stereo = $('stereo');
    if (d.composition && d.composition.stereoUrl) {
      stereo.href = d.composition.stereoUrl;
      stereo.hidden = false;
    } else stereo.hidden = true;
    $('status').textContent = (d.live ? 'Live · ' : '') + d.instances.length + ' instance(s) · ' +
      d.chat.length + ' chat line(s) · ' + d.cobrowse.length + ' co-browse session(s) · as of ' + when(d.generated);
    tick(true);
    state.ready = true;
  }

  async function load() {
    let response;
    try {
      response = await fetch(dataUrl, { cache: 'no-store' });
    } catch (e) {
      $('status').textContent = 'The recorder cannot be reached; retrying.';
      setTimeout(load, 5000);
      return;
    }
    if (!response.ok) {
      let message = response.status + '';
      try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
      state.error = { status: response.status, message };
      $('status').textContent = response.status === 403
        ? 'This review link has expired or is not valid: ' + message
        : 'The recording cannot be shown: ' + message;
      return;
    }
    const d = await response.json();
    render(d);
    if (d.live) setTimeout(load, d.refreshSecs * 1000);
  }

  $('play').addEventListener('click', () => {
    if (!state.clock) return;
    if (state.clock.playing) state.clock.pause();
    else state.clock.play().catch(() => {});
    tick(true);
  });
  $('timeline').addEventListener('click', (event) => {
    if (!state.data) return;
    const box = $('timeline').getBoundingClientRect();
    seek(((event.clientX - box.left) / box.width) * total(state.data));
  });
  window.addEventListener('resize', fitReplay);
  load();
  requestAnimationFrame(loop);
})();
