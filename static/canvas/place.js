// The player page: board, camera, palette, live updates, cooldown.
// Protocol: docs/protocol.md; controls: docs/player.md. No build step;
// configuration comes from the template through json_script.
(function () {
  'use strict';

  const config = JSON.parse(document.getElementById('place-config').textContent);
  const $ = function (role) { return document.querySelector('[data-role="' + role + '"]'); };
  const boardEl = $('board');
  const view = boardEl.querySelector('canvas.view');
  const reticle = boardEl.querySelector('.reticle');
  const ctx = view.getContext('2d', { alpha: false });
  const statusEl = $('status');
  const onlineEl = $('online');
  const cooldownEl = $('cooldown');
  const coordsEl = $('coords');
  const selectedEl = $('selected');
  const messageEl = $('message');
  const inspectorEl = $('inspector');
  const notifyEl = $('notify');
  const announceEl = $('announce');
  const whyEl = $('cooldown-why');
  const swatches = Array.from(document.querySelectorAll('[data-color]'));
  const nextLinks = Array.from(document.querySelectorAll('a[href*="next="]'));
  const api = '/api/canvases/' + encodeURIComponent(config.slug) + '/';
  const baseTitle = document.title;
  const names = config.paletteNames || [];

  // ---- board image: one RGBA pixel per canvas pixel, drawn scaled ----
  let width = config.width;
  let height = config.height;
  const rgba = config.palette.map(hexToAbgr);
  const offscreen = document.createElement('canvas');
  const offctx = offscreen.getContext('2d');
  let image = null;
  let pixels32 = null;
  let fullUpload = false; // the whole image must go to `offscreen`
  let changed = [];       // pixel indices changed since the last frame
  let needsDraw = true;
  let painted = false;    // the first full board has been drawn

  function hexToAbgr(hex) {
    const n = parseInt(hex.slice(1), 16);
    return (0xff << 24) | ((n & 0xff) << 16) | (n & 0xff00) | ((n >> 16) & 0xff);
  }

  function resizeBoard(w, h) {
    width = w; height = h;
    offscreen.width = w; offscreen.height = h;
    image = offctx.createImageData(w, h);
    pixels32 = new Uint32Array(image.data.buffer);
    pixels32.fill(rgba[0]);
    fullUpload = true;
  }

  function setPixel(x, y, color) {
    if (x < 0 || y < 0 || x >= width || y >= height || rgba[color] === undefined) return;
    pixels32[y * width + x] = rgba[color];
    if (!fullUpload) changed.push(y * width + x);
  }

  // Copy changed pixels to the offscreen canvas: a few one by one, many at once.
  function upload() {
    if (!fullUpload && changed.length > 4096) fullUpload = true;
    if (fullUpload) {
      offctx.putImageData(image, 0, 0);
    } else {
      for (let i = 0; i < changed.length; i++) {
        const idx = changed[i];
        const x = idx % width;
        offctx.putImageData(image, 0, 0, x, (idx - x) / width, 1, 1);
      }
    }
    fullUpload = false;
    changed = [];
    needsDraw = true;
  }

  // ---- camera: centre (cx, cy) in canvas pixels, zoom z in screen px per pixel ----
  const cam = { cx: width / 2, cy: height / 2, z: 1 };
  const MAX_ZOOM = 64;
  let interacting = false; // a drag or pinch is in progress
  function boardRect() { return boardEl.getBoundingClientRect(); }
  // The whole board, clear of the top bar and the toolbar that float over it;
  // never past the maximum, so a tiny canvas opens (and resets) at a zoom that
  // "+" only keeps and the address reproduces.
  function fitZoom() {
    const r = boardRect();
    const top = document.querySelector('.topbar').getBoundingClientRect().height;
    const bottom = r.bottom - document.querySelector('.toolbar').getBoundingClientRect().top;
    const usableH = r.height - 2 * Math.max(top, bottom, 0) - 16;
    const usableW = r.width - 16;
    const fit = Math.min(usableW / width, Math.max(usableH, r.height / 3) / height);
    return Math.min(MAX_ZOOM, Math.max(0.05, fit));
  }
  function minZoom() { return Math.min(1, fitZoom() / 2); }
  function clampCam() {
    cam.z = Math.min(MAX_ZOOM, Math.max(minZoom(), cam.z));
    // The centre stays on a pixel of the canvas, so the address always names one.
    cam.cx = Math.min(width - 0.5, Math.max(0.5, cam.cx));
    cam.cy = Math.min(height - 0.5, Math.max(0.5, cam.cy));
  }
  function screenToCanvas(sx, sy) {
    const r = boardRect();
    return {
      x: (sx - r.left - r.width / 2) / cam.z + cam.cx,
      y: (sy - r.top - r.height / 2) / cam.z + cam.cy,
    };
  }
  function zoomAt(sx, sy, factor) {
    const before = screenToCanvas(sx, sy);
    cam.z *= factor;
    clampCam();
    const after = screenToCanvas(sx, sy);
    cam.cx += before.x - after.x;
    cam.cy += before.y - after.y;
    clampCam();
    cameraChanged();
  }
  function zoomCentre(factor) {
    const r = boardRect();
    zoomAt(r.left + r.width / 2, r.top + r.height / 2, factor);
  }
  function resetView() {
    cam.cx = width / 2; cam.cy = height / 2; cam.z = fitZoom();
    clampCam();
    cameraChanged();
  }

  // The address names a pixel and a zoom (contract: ?x=X&y=Y&z=Z). When the
  // camera comes to rest it settles on that pixel's centre, so the address
  // reopens exactly the view the player sees.
  function readUrl() {
    const q = new URLSearchParams(location.search);
    const x = parseFloat(q.get('x')), y = parseFloat(q.get('y')), z = parseFloat(q.get('z'));
    const zoomed = Number.isFinite(z) && z > 0;
    if (!Number.isFinite(x) || !Number.isFinite(y)) {
      if (!zoomed) return false;
      // A zoom alone: the middle of the canvas at that zoom.
      cam.cx = width / 2; cam.cy = height / 2; cam.z = z;
      clampCam();
      return true;
    }
    cam.cx = Math.floor(x) + 0.5; cam.cy = Math.floor(y) + 0.5;
    cam.z = zoomed ? z : 4;
    clampCam();
    return true;
  }
  let settleTimer = null;
  let settleTarget = null;
  function cameraChanged() {
    needsDraw = true;
    settleTarget = null;
    clearTimeout(settleTimer);
    settleTimer = setTimeout(settle, 150);
  }
  // The view the address can name: centred on a pixel, the zoom to two
  // decimals (rounded up rather than below the minimum).
  function restingView() {
    let z = Math.round(cam.z * 100) / 100;
    if (z < minZoom()) z = Math.ceil(cam.z * 100) / 100;
    return { cx: Math.floor(cam.cx) + 0.5, cy: Math.floor(cam.cy) + 0.5, z: Math.min(MAX_ZOOM, z) };
  }
  function settle() {
    if (interacting) { settleTimer = setTimeout(settle, 150); return; }
    settleTarget = restingView();
    needsDraw = true;
  }
  function stepSettle() {
    const t = settleTarget;
    const dx = t.cx - cam.cx, dy = t.cy - cam.cy, dz = t.z - cam.z;
    if (Math.abs(dx * cam.z) < 0.5 && Math.abs(dy * cam.z) < 0.5 && Math.abs(dz) < 0.01) {
      cam.cx = t.cx; cam.cy = t.cy; cam.z = t.z;
      settleTarget = null;
      writeUrl();
    } else {
      cam.cx += dx * 0.4; cam.cy += dy * 0.4; cam.z += dz * 0.4;
    }
    needsDraw = true;
  }
  function writeUrl() {
    const q = new URLSearchParams(location.search);
    q.set('x', String(Math.floor(cam.cx)));
    q.set('y', String(Math.floor(cam.cy)));
    q.set('z', String(Math.round(cam.z * 100) / 100));
    history.replaceState(null, '', location.pathname + '?' + q.toString());
    // Log in and sign up come back to this very view.
    nextLinks.forEach(function (a) {
      const url = new URL(a.href);
      url.searchParams.set('next', location.pathname + location.search);
      a.href = url.pathname + url.search;
    });
  }

  // ---- drawing, once per animation frame at most ----
  function sizeView() {
    const r = boardRect();
    const dpr = window.devicePixelRatio || 1;
    view.width = Math.max(1, Math.round(r.width * dpr));
    view.height = Math.max(1, Math.round(r.height * dpr));
    needsDraw = true;
  }
  function frame() {
    if (settleTarget) stepSettle();
    if (fullUpload || changed.length) upload();
    if (needsDraw) {
      needsDraw = false;
      draw();
      if (!painted && appliedSeq >= 0) {
        painted = true;
        // Marked in the next frame, once this one has reached the screen.
        requestAnimationFrame(function () {
          performance.mark('place:first-paint');
          performance.measure('place:first-paint', { start: 0, end: 'place:first-paint' });
        });
      }
    }
    requestAnimationFrame(frame);
  }
  function draw() {
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#2a2d33';
    ctx.fillRect(0, 0, view.width, view.height);
    ctx.imageSmoothingEnabled = false; // crisp pixels at every zoom
    const z = cam.z * dpr;
    ctx.setTransform(z, 0, 0, z, view.width / 2 - cam.cx * z, view.height / 2 - cam.cy * z);
    ctx.drawImage(offscreen, 0, 0);
    // The camera may have moved under a still mouse (a wheel zoom, the settle):
    // the reticle names the pixel a click there would place, not the old one.
    if (mouseAt) hover = pixelAt(mouseAt.x, mouseAt.y);
    positionReticle();
    showCoords();
  }

  // The reticle marks the pixel a click would act on: under the mouse, or the
  // centre pixel for keyboard and touch players.
  let hover = null;
  let mouseAt = null;      // the mouse's last position over the board
  let tapped = null;       // a tap's pixel, marked briefly: touch has no hover
  let keyboardCursor = false;
  function target() {
    if (hover) return hover;
    if (tapped && tapped.until > Date.now()) return tapped;
    if (keyboardCursor) return { x: Math.floor(cam.cx), y: Math.floor(cam.cy) };
    return null;
  }
  function positionReticle() {
    const t = target();
    if (!t) { reticle.hidden = true; return; }
    const r = boardRect();
    const size = Math.max(cam.z, 4) + 6; // a frame around the pixel
    reticle.hidden = false;
    reticle.style.transform = 'translate(' +
      ((t.x + 0.5 - cam.cx) * cam.z + r.width / 2 - size / 2) + 'px,' +
      ((t.y + 0.5 - cam.cy) * cam.z + r.height / 2 - size / 2) + 'px)';
    reticle.style.width = size + 'px';
    reticle.style.height = size + 'px';
    // A tap's mark shows where it landed, not a colour that may have been refused.
    const preview = selected === null || t === tapped ? 'transparent' : config.palette[selected];
    reticle.style.setProperty('--preview', preview);
  }
  function showCoords() {
    const t = target() || { x: Math.floor(cam.cx), y: Math.floor(cam.cy) };
    coordsEl.textContent = '(' + t.x + ', ' + t.y + ')  ×' + (Math.round(cam.z * 10) / 10);
  }

  // ---- live state: board snapshot plus the seq-ordered stream ----
  let appliedSeq = -1; // seq the drawn board is at; -1 until a snapshot is in
  let buffer = [];     // updates received while a snapshot loads
  let loading = false;
  let reloadAfter = false; // a fetch was asked for while one was in flight
  let etag = null;
  let helloSeq = -1;   // the stream runs from the last hello's seq + 1
  let hellos = 0;      // hellos received: after the first, a reconnect

  async function loadBoard(again) {
    if (loading) {
      // The fetch in flight may predate what asked for this one (a resize
      // moves no seq, so nothing else would ask again): repeat it after.
      if (again) reloadAfter = true;
      return;
    }
    loading = true;
    try {
      const headers = etag && appliedSeq >= 0 ? { 'If-None-Match': etag } : {};
      const response = await fetch(api + 'board', { headers: headers, cache: 'no-store' });
      if (response.status === 304) {
        // Our board is already at least this new; keep it and replay buffered.
      } else if (response.ok) {
        const bytes = new Uint8Array(await response.arrayBuffer());
        if (bytes.length !== width * height) {
          const meta = await (await fetch(api, { cache: 'no-store' })).json();
          resizeBoard(meta.width, meta.height);
          clampCam();
        }
        for (let i = 0; i < bytes.length; i++) pixels32[i] = rgba[bytes[i]] || rgba[0];
        fullUpload = true;
        changed = [];
        etag = response.headers.get('ETag');
        appliedSeq = parseInt(response.headers.get('X-Canvas-Seq'), 10);
        if (!painted) performance.mark('place:board-decoded');
      } else {
        throw new Error('board request failed: ' + response.status);
      }
    } catch (err) {
      loading = false;
      setTimeout(loadBoard, 1000 + Math.random() * 1000);
      return;
    }
    loading = false;
    if (reloadAfter) {
      reloadAfter = false;
      etag = null;
      loadBoard();
      return;
    }
    const pending = buffer;
    buffer = [];
    applyUpdates(pending);
    // A snapshot older than the hello (fetched in parallel with the socket):
    // the changes between them come in no frame, so fetch it again.
    if (!loading && appliedSeq < helloSeq) {
      etag = null;
      loadBoard();
    }
  }

  function applyUpdates(updates) {
    if (loading || appliedSeq < 0) { buffer.push.apply(buffer, updates); return; }
    for (let i = 0; i < updates.length; i++) {
      const u = updates[i];
      if (u[0] <= appliedSeq) continue;
      if (u[0] !== appliedSeq + 1) {
        // A gap: something was missed. Refetch, keeping what is still to come.
        buffer = updates.slice(i);
        etag = null;
        loadBoard();
        return;
      }
      setPixel(u[1], u[2], u[3]);
      appliedSeq = u[0];
    }
  }

  // ---- cooldown, with an opt-in notification and beep when it ends ----
  let cooldownEnds = 0;
  // `banned` and `paused` only change what the page shows: clicks still go to
  // the server, which decides (a ban may have ended, a resume crossed a refusal).
  let identified = false; // hello named a player (signed in, or anonymous play)
  let banned = false;     // a `banned` message or refusal, until `until`, `unbanned` or an accept
  let paused = false;     // a `canvas` message or refusal, until open again or an accept
  let connected = false;  // hello received, socket still open
  let bannedTimer = null;
  let banWhy = '';        // the ban's end and reason, kept on the cooldown
  let wasWaiting = false;
  const PAUSED_WHY = 'The canvas is paused by the moderators; you can place again when they reopen it.';
  const COOLDOWN_TITLE = cooldownEl.title;
  function setCooldown(seconds) {
    cooldownEnds = Date.now() + Math.max(0, seconds) * 1000;
    tickCooldown();
  }
  function clock(ms) {
    const s = Math.ceil(ms / 1000);
    return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
  }
  function tickCooldown() {
    const left = Math.max(0, cooldownEnds - Date.now());
    const free = identified && !banned && !paused && connected;
    cooldownEl.classList.toggle('ready', free && left <= 0);
    if (!free) {
      if (!identified) cooldownEl.textContent = config.requireLogin && !config.player ? 'Log in to place' : 'Watching';
      else if (!connected) cooldownEl.textContent = 'Offline';
      else cooldownEl.textContent = banned ? 'Banned' : 'Paused';
      document.title = baseTitle;
    } else if (left <= 0) {
      cooldownEl.textContent = 'Ready';
      document.title = baseTitle;
      if (wasWaiting) cooldownEnded();
    } else {
      cooldownEl.textContent = clock(left);
      document.title = '(' + clock(left) + ') ' + baseTitle;
    }
    wasWaiting = free && left > 0;
    // The reason outlives its message: a tooltip and an accessible description.
    const why = !identified || !connected ? '' : banned ? banWhy : paused ? PAUSED_WHY : '';
    cooldownEl.title = why || COOLDOWN_TITLE;
    if (whyEl.textContent !== why) whyEl.textContent = why;
  }
  setInterval(tickCooldown, 250);
  // "until 3/4/2026, 5:06:07 PM EST" (the time zone said), or "for good".
  function banEnd(until) {
    if (until.getUTCFullYear() >= 9999) return 'for good';
    return 'until ' + until.toLocaleString(undefined, { timeZoneName: 'short' });
  }
  function setBanned(on, until, why) {
    banned = on;
    banWhy = on ? why || banWhy : '';
    clearTimeout(bannedTimer);
    const ms = on && until ? until.getTime() - Date.now() : -1;
    // The ban ends by itself (setTimeout cannot wait past about 24 days).
    if (ms > 0 && ms < 2147483647) bannedTimer = setTimeout(() => setBanned(false), ms);
    tickCooldown();
  }

  let alerts = localStorage.getItem('place:alerts') === 'on';
  let audio = null;
  function showAlerts() {
    notifyEl.setAttribute('aria-pressed', String(alerts));
    notifyEl.textContent = alerts ? 'Alert: on' : 'Alert me';
  }
  notifyEl.addEventListener('click', function () {
    alerts = !alerts;
    localStorage.setItem('place:alerts', alerts ? 'on' : 'off');
    showAlerts();
    if (!alerts) return;
    // Both need this user gesture: the audio context and the permission prompt.
    if (!audio && window.AudioContext) audio = new AudioContext();
    if (audio && audio.state === 'suspended') audio.resume();
    if ('Notification' in window && Notification.permission === 'default') {
      Notification.requestPermission();
    }
    showMessage('You will hear a beep' +
      ('Notification' in window ? ' and get a notification' : '') +
      ' when you can place again.', 'info');
  });
  function announce(text) {
    announceEl.textContent = text;
    setTimeout(function () { if (announceEl.textContent === text) announceEl.textContent = ''; }, 3000);
  }
  function cooldownEnded() {
    // The countdown itself is not a live region (it would be read every second).
    announce('You can place again.');
    if (!alerts) return;
    beep();
    if ('Notification' in window && Notification.permission === 'granted' && document.hidden) {
      try {
        new Notification(baseTitle, { body: 'You can place a pixel again.', tag: 'place-cooldown' });
      } catch (err) { /* some browsers allow notifications only from a service worker */ }
    }
  }
  function beep() {
    if (!audio) return;
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.0001, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.2, audio.currentTime + 0.01);
    gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.25);
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.3);
  }

  // ---- messages ----
  let messageTimer = null;
  function showMessage(text, kind) {
    messageEl.textContent = text;
    messageEl.className = 'toast' + (kind ? ' ' + kind : '');
    messageEl.hidden = false;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(function () { messageEl.hidden = true; }, 4000);
  }
  function rejection(msg) {
    if (msg.code === 'cooldown' && msg.retry_after !== null) {
      return 'Not yet: you can place again in ' + clock(msg.retry_after * 1000) + '.';
    }
    if (msg.code === 'login_required') return 'Log in or sign up to place pixels.';
    return msg.message || ('Refused: ' + msg.code);
  }

  // ---- socket with reconnect (exponential backoff, jitter) ----
  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let retryAt = 0;
  // The status is not a live region (its retry countdown changes every
  // second); going offline and coming back are announced once each. Offline,
  // it is a button: click, Enter or Space reconnects now.
  function setStatus(text, state) {
    if (state === 'offline' && statusEl.dataset.state !== 'offline') {
      announce('Connection lost; reconnecting.');
    }
    if (state === 'live' && attempts > 0) announce('Live again.');
    statusEl.textContent = text;
    statusEl.dataset.state = state;
    statusEl.classList.toggle('live', state === 'live');
    const offline = state === 'offline';
    statusEl.setAttribute('role', offline ? 'button' : 'status');
    statusEl.tabIndex = offline ? 0 : -1;
  }
  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    socket = new WebSocket(scheme + location.host + '/ws/canvases/' + encodeURIComponent(config.slug) + '/');
    setStatus(attempts ? 'reconnecting…' : 'connecting…', 'connecting');
    socket.onmessage = function (event) { onMessage(JSON.parse(event.data)); };
    socket.onclose = function () {
      connected = false;
      onlineEl.textContent = ''; // not known until we are back
      tickCooldown();
      const delay = Math.min(15000, 500 * Math.pow(2, attempts)) * (0.5 + Math.random());
      attempts += 1;
      retryAt = Date.now() + delay;
      retryTimer = setTimeout(connect, delay);
      showRetry();
    };
  }
  function showRetry() {
    if (retryTimer === null) return;
    const s = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
    setStatus('offline, retrying in ' + s + ' s', 'offline');
  }
  setInterval(showRetry, 1000);
  // Back on the network, or back to the tab: try now rather than at the backoff's end.
  function retryNow() { if (retryTimer !== null) connect(); }
  window.addEventListener('online', retryNow);
  document.addEventListener('visibilitychange', function () {
    if (!document.hidden) retryNow();
  });
  statusEl.addEventListener('click', retryNow);
  statusEl.addEventListener('keydown', function (e) {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); retryNow(); }
  });

  // Other tabs of this browser are the same player: share the cooldown.
  const tabs = window.BroadcastChannel ? new BroadcastChannel('place:' + config.slug) : null;
  let me = null; // the player hello named
  if (tabs) {
    tabs.onmessage = function (event) {
      const m = event.data || {};
      if (m.user !== null && m.user === me && m.until > cooldownEnds) {
        cooldownEnds = m.until;
        tickCooldown();
      }
    };
  }

  function onMessage(msg) {
    switch (msg.type) {
      case 'hello':
        setStatus('live', 'live');
        attempts = 0;
        connected = true;
        // can_place false with a user: a `banned` or `canvas` message says why.
        identified = msg.user !== null;
        me = msg.user;
        setBanned(false); paused = false;
        setCooldown(msg.cooldown_remaining);
        helloSeq = msg.seq;
        if (hellos++ > 0) {
          // After a reconnect anything may have been missed: resync from a snapshot.
          buffer = [];
          loadBoard();
        } else if (!loading && appliedSeq < helloSeq) {
          // The first snapshot, fetched while the socket opened, is older
          // than the hello (or failed): fetch it again. One still loading is
          // checked when it arrives.
          etag = null;
          loadBoard();
        }
        break;
      case 'pixels':
        applyUpdates(msg.updates);
        break;
      case 'accepted':
        setBanned(false); paused = false;
        setCooldown(msg.cooldown_remaining);
        if (tabs) tabs.postMessage({ user: me, until: cooldownEnds });
        break;
      case 'rejected':
        lastPlace = null; // refused: the same click again is a new try
        if (msg.retry_after !== null && msg.code === 'cooldown') setCooldown(msg.retry_after);
        if (msg.code === 'banned' && !banned) setBanned(true, null, msg.message);
        if (msg.code === 'canvas_closed') { paused = true; tickCooldown(); }
        showMessage(rejection(msg));
        break;
      case 'online':
        onlineEl.textContent = msg.count + ' online';
        break;
      case 'canvas':
        if (msg.open === false && !paused) {
          showMessage('The canvas is paused by the moderators.', 'info');
        } else if (msg.open === true && paused) {
          showMessage('The canvas is open again.', 'info');
        }
        if (msg.open !== undefined) paused = !msg.open;
        tickCooldown();
        if (msg.width !== undefined && (msg.width !== width || msg.height !== height)) {
          // Resized: take the new shape now (a same-area resize has the same
          // byte count, so the fetch alone would not notice), then fetch it whole.
          resizeBoard(msg.width, msg.height);
          clampCam();
          etag = null;
          loadBoard(true);
        }
        break;
      case 'banned': {
        const until = new Date(msg.until);
        setBanned(true, until, 'Banned ' + banEnd(until) +
          (msg.reason ? '. Reason: ' + msg.reason + '.' : '.'));
        showMessage('You are banned from placing pixels ' + banEnd(until) +
          (msg.reason ? ' (' + msg.reason + ').' : '.'));
        break;
      }
      case 'unbanned':
        setBanned(false);
        showMessage('Your ban has been lifted.', 'info');
        break;
      default:
        break; // unknown types are for newer clients
    }
  }

  const REPEAT_MS = 1000; // a second click of the same pixel within this is a repeat
  let lastPlace = null;
  function place(x, y) {
    if (selected === null) { showMessage('Pick a colour first.', 'info'); return; }
    if (!identified) {
      showMessage(config.requireLogin ? 'Log in or sign up to place pixels.' : 'Connecting…', 'info');
      return;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showMessage('Not connected; reconnecting…', 'info');
      return;
    }
    // A double click or tap asks once: the second of the same pixel and
    // colour within a second repeats the request rather than making a new one,
    // so it is dropped quietly instead of drawing a cooldown refusal.
    const now = Date.now();
    if (lastPlace && lastPlace.x === x && lastPlace.y === y &&
        lastPlace.color === selected && now - lastPlace.at < REPEAT_MS) return;
    const left = cooldownEnds - now;
    if (left > 0) { showMessage('Not yet: you can place again in ' + clock(left) + '.'); return; }
    lastPlace = { x: x, y: y, color: selected, at: now };
    socket.send(JSON.stringify({ type: 'place', x: x, y: y, color: selected }));
  }

  // ---- pixel inspector: who placed a pixel, and when ----
  function ago(date) {
    const s = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' days ago';
  }
  async function inspect(x, y) {
    let info;
    try {
      const response = await fetch(api + 'pixels/' + x + '/' + y, { cache: 'no-store' });
      if (!response.ok) return;
      info = await response.json();
    } catch (err) { return; } // best-effort: offline, say
    const body = inspectorEl.querySelector('.body');
    body.replaceChildren();
    const swatch = document.createElement('span');
    swatch.className = 'chip';
    swatch.style.background = config.palette[info.color] || '#000';
    const line = document.createElement('strong');
    line.textContent = '(' + x + ', ' + y + ') ' + (names[info.color] || 'colour ' + info.color);
    const who = document.createElement('div');
    if (info.placed_by) {
      const when = new Date(info.placed_at);
      who.textContent = 'placed by ' + info.placed_by + ', ' + ago(when);
      who.title = when.toLocaleString();
    } else {
      who.textContent = 'never placed';
    }
    body.append(swatch, line, who);
    inspectorEl.hidden = false;
  }
  inspectorEl.querySelector('.close').addEventListener('click', function () {
    inspectorEl.hidden = true;
  });
  // On a phone the inspector sits just above the toolbar, whose height varies
  // (the join hint for visitors, a wrapped readout): CSS reads it from here.
  const toolbarEl = document.querySelector('.toolbar');
  function measureToolbar() {
    const h = toolbarEl.getBoundingClientRect().height;
    document.documentElement.style.setProperty('--toolbar-height', h + 'px');
  }
  if (window.ResizeObserver) new ResizeObserver(measureToolbar).observe(toolbarEl);
  measureToolbar();

  // ---- palette: a radio group of colour buttons, one tab stop (roving
  // tabindex); arrow keys, Home and End move between them, Space or Enter
  // (the buttons' own click) chooses ----
  let selected = null;
  const paletteEl = $('palette');
  function chosenSwatch() {
    return swatches.find(function (b) { return Number(b.dataset.color) === selected; }) || swatches[0];
  }
  function tabStop(button) {
    swatches.forEach(function (b) { b.tabIndex = b === button ? 0 : -1; });
  }
  function select(index) {
    selected = selected === index ? null : index;
    swatches.forEach(function (b) {
      b.setAttribute('aria-checked', String(Number(b.dataset.color) === selected));
    });
    tabStop(chosenSwatch());
    selectedEl.textContent = selected === null ? 'No colour: click a pixel to inspect it'
      : 'Colour: ' + (names[selected] || selected);
    needsDraw = true;
  }
  swatches.forEach(function (b, i) {
    b.addEventListener('click', function () { select(Number(b.dataset.color)); });
    b.addEventListener('keydown', function (e) {
      const last = swatches.length - 1;
      const to = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: last }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      const next = swatches[(to + swatches.length) % swatches.length];
      tabStop(next);
      next.focus();
    });
  });
  // Tabbing back into the palette lands on the chosen colour.
  paletteEl.addEventListener('focusout', function (e) {
    if (!paletteEl.contains(e.relatedTarget)) tabStop(chosenSwatch());
  });

  // ---- pointer input: a click places, a drag pans, two fingers pinch ----
  const pointers = new Map();
  let dragged = false;
  let downAt = null;
  let downPixel = null;
  let pinchDistance = 0;
  // How far a press may move and still be a click: a finger or a pen drifts
  // further than a mouse while tapping.
  const DRAG_THRESHOLD = { mouse: 6, touch: 12, pen: 12 };
  let dragThreshold = DRAG_THRESHOLD.mouse;

  function pixelAt(sx, sy) {
    const p = screenToCanvas(sx, sy);
    const x = Math.floor(p.x), y = Math.floor(p.y);
    return x >= 0 && y >= 0 && x < width && y < height ? { x: x, y: y } : null;
  }
  boardEl.addEventListener('pointerdown', function (e) {
    if (e.button !== undefined && e.button > 0) return;
    boardEl.setPointerCapture(e.pointerId);
    keyboardCursor = false;
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (pointers.size === 1) {
      dragged = false;
      downAt = { x: e.clientX, y: e.clientY };
      dragThreshold = DRAG_THRESHOLD[e.pointerType] || DRAG_THRESHOLD.touch;
      // A click acts where it was pressed, whatever the small slip before release.
      downPixel = pixelAt(e.clientX, e.clientY);
    }
    if (pointers.size === 2) { dragged = true; pinchDistance = distance(); }
    interacting = true;
  });
  boardEl.addEventListener('pointermove', function (e) {
    mouseAt = e.pointerType === 'mouse' ? { x: e.clientX, y: e.clientY } : null;
    hover = mouseAt ? pixelAt(mouseAt.x, mouseAt.y) : null;
    needsDraw = true;
    const prev = pointers.get(e.pointerId);
    if (!prev) return;
    if (pointers.size === 2) {
      pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
      const d = distance();
      const mid = midpoint();
      if (pinchDistance > 0) zoomAt(mid.x, mid.y, d / pinchDistance);
      pinchDistance = d;
      return;
    }
    if (!dragged && Math.hypot(e.clientX - downAt.x, e.clientY - downAt.y) > dragThreshold) {
      dragged = true;
      boardEl.classList.add('dragging');
    }
    if (dragged) {
      cam.cx -= (e.clientX - prev.x) / cam.z;
      cam.cy -= (e.clientY - prev.y) / cam.z;
      clampCam();
      cameraChanged();
    }
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
  });
  boardEl.addEventListener('pointerleave', function () {
    hover = null; mouseAt = null; needsDraw = true;
  });
  function pointerEnd(e) {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    boardEl.classList.remove('dragging');
    if (pointers.size === 0) {
      interacting = false;
      if (!dragged && e.type === 'pointerup') {
        const p = downPixel;
        if (p && e.pointerType !== 'mouse') {
          tapped = { x: p.x, y: p.y, until: Date.now() + 1500 };
          setTimeout(function () { needsDraw = true; }, 1500);
          needsDraw = true;
        }
        if (p && selected !== null) place(p.x, p.y);
        else if (p) inspect(p.x, p.y);
      }
    }
    if (pointers.size < 2) pinchDistance = 0;
  }
  boardEl.addEventListener('pointerup', pointerEnd);
  boardEl.addEventListener('pointercancel', pointerEnd);
  boardEl.addEventListener('wheel', function (e) {
    e.preventDefault();
    const delta = e.deltaMode === 1 ? e.deltaY * 40 : e.deltaY;
    zoomAt(e.clientX, e.clientY, Math.exp(-Math.max(-300, Math.min(300, delta)) * 0.002));
  }, { passive: false });
  function distance() {
    const [a, b] = Array.from(pointers.values());
    return Math.hypot(a.x - b.x, a.y - b.y);
  }
  function midpoint() {
    const [a, b] = Array.from(pointers.values());
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  }

  // ---- keyboard: arrows pan, + and - zoom, Enter places, I inspects ----
  function inspectCentre() { inspect(Math.floor(cam.cx), Math.floor(cam.cy)); }
  boardEl.addEventListener('keydown', function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const step = Math.max(1, Math.round((e.shiftKey ? 160 : 40) / cam.z));
    const keys = {
      ArrowLeft: function () { cam.cx -= step; cameraChanged(); },
      ArrowRight: function () { cam.cx += step; cameraChanged(); },
      ArrowUp: function () { cam.cy -= step; cameraChanged(); },
      ArrowDown: function () { cam.cy += step; cameraChanged(); },
      '+': function () { zoomCentre(1.5); },
      '=': function () { zoomCentre(1.5); },
      '-': function () { zoomCentre(1 / 1.5); },
      '0': resetView,
      Enter: function () { place(Math.floor(cam.cx), Math.floor(cam.cy)); },
      ' ': function () { place(Math.floor(cam.cx), Math.floor(cam.cy)); },
      i: inspectCentre,
      I: inspectCentre,
      Escape: function () { inspectorEl.hidden = true; if (selected !== null) select(selected); },
    };
    if (!keys[e.key]) return;
    e.preventDefault();
    keyboardCursor = true;
    hover = null; mouseAt = null; tapped = null;
    keys[e.key]();
    clampCam();
    needsDraw = true;
  });
  boardEl.addEventListener('blur', function () { keyboardCursor = false; needsDraw = true; });
  $('reset').addEventListener('click', resetView);
  $('zoom-in').addEventListener('click', function () { zoomCentre(2); });
  $('zoom-out').addEventListener('click', function () { zoomCentre(0.5); });
  // A new size may change the zoom limits: settle, so the address follows.
  window.addEventListener('resize', function () { sizeView(); clampCam(); cameraChanged(); });

  // ---- start ----
  resizeBoard(width, height);
  sizeView();
  if (!readUrl()) { cam.cx = width / 2; cam.cy = height / 2; cam.z = fitZoom(); clampCam(); }
  // Open exactly at the view the address names, not a fraction away from it.
  Object.assign(cam, restingView());
  writeUrl();
  select(null);
  showAlerts();
  tickCooldown();
  requestAnimationFrame(frame);
  // The board and the socket at once: updates wait in `buffer` for the snapshot.
  loadBoard();
  connect();
})();
