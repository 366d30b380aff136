// The player page: board, camera, palette, live updates, cooldown.
// Protocol: docs/protocol.md. No build step; configuration comes from the
// template through json_script.
(function () {
  'use strict';

  const config = JSON.parse(document.getElementById('place-config').textContent);
  const boardEl = document.querySelector('[data-role="board"]');
  const view = boardEl.querySelector('canvas.view');
  const reticle = boardEl.querySelector('.reticle');
  const ctx = view.getContext('2d', { alpha: false });
  const statusEl = document.querySelector('[data-role="status"]');
  const onlineEl = document.querySelector('[data-role="online"]');
  const cooldownEl = document.querySelector('[data-role="cooldown"]');
  const coordsEl = document.querySelector('[data-role="coords"]');
  const messageEl = document.querySelector('[data-role="message"]');
  const inspectorEl = document.querySelector('[data-role="inspector"]');
  const resetEl = document.querySelector('[data-role="reset"]');
  const swatches = Array.from(document.querySelectorAll('[data-color]'));
  const api = '/api/canvases/' + encodeURIComponent(config.slug) + '/';
  const baseTitle = document.title;

  // ---- board image: one RGBA pixel per canvas pixel, drawn scaled ----
  let width = config.width;
  let height = config.height;
  const rgba = config.palette.map(hexToAbgr);
  const offscreen = document.createElement('canvas');
  const offctx = offscreen.getContext('2d');
  let image = null;
  let pixels32 = null;
  let dirty = null; // {x0, y0, x1, y1} region of `image` not yet on `offscreen`
  let needsDraw = true;

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
    dirty = { x0: 0, y0: 0, x1: w, y1: h };
  }

  function setPixel(x, y, color) {
    if (x < 0 || y < 0 || x >= width || y >= height || rgba[color] === undefined) return;
    pixels32[y * width + x] = rgba[color];
    if (!dirty) dirty = { x0: x, y0: y, x1: x + 1, y1: y + 1 };
    else {
      dirty.x0 = Math.min(dirty.x0, x); dirty.y0 = Math.min(dirty.y0, y);
      dirty.x1 = Math.max(dirty.x1, x + 1); dirty.y1 = Math.max(dirty.y1, y + 1);
    }
    needsDraw = true;
  }

  // ---- camera: centre (cx, cy) in canvas pixels, zoom z in screen px per pixel ----
  const cam = { cx: width / 2, cy: height / 2, z: 1 };
  const MAX_ZOOM = 64;
  function minZoom() { return Math.min(1, fitZoom() / 2); }
  function fitZoom() {
    const r = boardEl.getBoundingClientRect();
    return Math.max(0.05, Math.min(r.width / width, r.height / height) * 0.95);
  }
  function clampCam() {
    cam.z = Math.min(MAX_ZOOM, Math.max(minZoom(), cam.z));
    cam.cx = Math.min(width, Math.max(0, cam.cx));
    cam.cy = Math.min(height, Math.max(0, cam.cy));
  }
  function screenToCanvas(sx, sy) {
    const r = boardEl.getBoundingClientRect();
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
  function resetView() {
    cam.cx = width / 2; cam.cy = height / 2; cam.z = fitZoom();
    cameraChanged();
  }

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const x = parseFloat(q.get('x')), y = parseFloat(q.get('y')), z = parseFloat(q.get('z'));
    if (!Number.isFinite(x) || !Number.isFinite(y)) return false;
    cam.cx = Math.floor(x) + 0.5; cam.cy = Math.floor(y) + 0.5;
    cam.z = Number.isFinite(z) && z > 0 ? z : 4;
    clampCam();
    return true;
  }
  let urlTimer = null;
  function writeUrl() {
    clearTimeout(urlTimer);
    urlTimer = setTimeout(function () {
      const q = new URLSearchParams(location.search);
      q.set('x', String(Math.floor(cam.cx)));
      q.set('y', String(Math.floor(cam.cy)));
      q.set('z', String(Math.round(cam.z * 100) / 100));
      history.replaceState(null, '', location.pathname + '?' + q.toString());
    }, 150);
  }
  function cameraChanged() { needsDraw = true; writeUrl(); }

  // ---- drawing, once per animation frame at most ----
  function sizeView() {
    const r = boardEl.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    view.width = Math.max(1, Math.round(r.width * dpr));
    view.height = Math.max(1, Math.round(r.height * dpr));
    needsDraw = true;
  }
  function frame() {
    if (dirty && image) {
      offctx.putImageData(image, 0, 0, dirty.x0, dirty.y0, dirty.x1 - dirty.x0, dirty.y1 - dirty.y0);
      dirty = null;
    }
    if (needsDraw) {
      needsDraw = false;
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = '#2a2d33';
      ctx.fillRect(0, 0, view.width, view.height);
      ctx.imageSmoothingEnabled = false;
      const z = cam.z * dpr;
      ctx.setTransform(z, 0, 0, z, view.width / 2 - cam.cx * z, view.height / 2 - cam.cy * z);
      ctx.drawImage(offscreen, 0, 0);
      positionReticle();
    }
    requestAnimationFrame(frame);
  }

  let hover = null;
  function positionReticle() {
    if (!hover || selected === null) { reticle.hidden = true; return; }
    const r = boardEl.getBoundingClientRect();
    const left = (hover.x - cam.cx) * cam.z + r.width / 2;
    const top = (hover.y - cam.cy) * cam.z + r.height / 2;
    reticle.hidden = false;
    reticle.style.left = left + 'px';
    reticle.style.top = top + 'px';
    reticle.style.width = Math.max(cam.z, 4) + 'px';
    reticle.style.height = Math.max(cam.z, 4) + 'px';
  }

  // ---- live state: board snapshot plus the seq-ordered stream ----
  let appliedSeq = -1; // seq the drawn board is at; -1 until a snapshot is in
  let buffer = [];     // updates received while a snapshot loads
  let loading = false;
  let etag = null;

  async function loadBoard() {
    if (loading) return;
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
        }
        for (let i = 0; i < bytes.length; i++) pixels32[i] = rgba[bytes[i]] || rgba[0];
        dirty = { x0: 0, y0: 0, x1: width, y1: height };
        needsDraw = true;
        etag = response.headers.get('ETag');
        appliedSeq = parseInt(response.headers.get('X-Canvas-Seq'), 10);
        performance.mark('place:board-painted');
      } else {
        throw new Error('board request failed: ' + response.status);
      }
    } catch (err) {
      loading = false;
      setTimeout(loadBoard, 1000 + Math.random() * 1000);
      return;
    }
    loading = false;
    const pending = buffer;
    buffer = [];
    applyUpdates(pending);
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

  // ---- cooldown ----
  let cooldownEnds = 0;
  let canPlace = false;
  function setCooldown(seconds) {
    cooldownEnds = Date.now() + Math.max(0, seconds) * 1000;
    tickCooldown();
  }
  function tickCooldown() {
    const left = Math.max(0, cooldownEnds - Date.now());
    if (!canPlace) {
      cooldownEl.textContent = config.requireLogin && !config.player ? 'Log in to place' : 'Watching';
      cooldownEl.classList.remove('ready');
      document.title = baseTitle;
    } else if (left <= 0) {
      cooldownEl.textContent = 'Ready';
      cooldownEl.classList.add('ready');
      document.title = baseTitle;
    } else {
      const s = Math.ceil(left / 1000);
      const text = Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0');
      cooldownEl.textContent = text;
      cooldownEl.classList.remove('ready');
      document.title = '(' + text + ') ' + baseTitle;
    }
  }
  setInterval(tickCooldown, 250);

  // ---- messages ----
  let messageTimer = null;
  function showMessage(text, kind) {
    messageEl.textContent = text;
    messageEl.className = 'toast' + (kind ? ' ' + kind : '');
    messageEl.hidden = false;
    clearTimeout(messageTimer);
    messageTimer = setTimeout(function () { messageEl.hidden = true; }, 4000);
  }

  // ---- socket with reconnect (exponential backoff, jitter) ----
  let socket = null;
  let attempts = 0;
  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    socket = new WebSocket(scheme + location.host + '/ws/canvases/' + encodeURIComponent(config.slug) + '/');
    statusEl.textContent = 'connecting…';
    statusEl.classList.remove('live');
    socket.onmessage = function (event) { onMessage(JSON.parse(event.data)); };
    socket.onclose = function () {
      statusEl.textContent = 'offline, reconnecting…';
      statusEl.classList.remove('live');
      const delay = Math.min(30000, 500 * Math.pow(2, attempts)) * (0.5 + Math.random());
      attempts += 1;
      setTimeout(connect, delay);
    };
  }

  function onMessage(msg) {
    switch (msg.type) {
      case 'hello':
        attempts = 0;
        statusEl.textContent = 'live';
        statusEl.classList.add('live');
        canPlace = msg.can_place;
        setCooldown(msg.cooldown_remaining);
        // After a reconnect anything may have been missed: resync from a snapshot.
        buffer = [];
        loadBoard();
        break;
      case 'pixels':
        applyUpdates(msg.updates);
        break;
      case 'accepted':
        setCooldown(msg.cooldown_remaining);
        break;
      case 'rejected':
        if (msg.retry_after !== null && msg.code === 'cooldown') setCooldown(msg.retry_after);
        showMessage(msg.message);
        break;
      case 'online':
        onlineEl.textContent = msg.count + ' online';
        break;
      case 'canvas':
        if (!msg.open) showMessage('The canvas is paused by the moderators.', 'info');
        break;
      default:
        break; // unknown types are for newer clients
    }
  }

  function place(x, y) {
    if (selected === null) return;
    if (!canPlace) {
      showMessage(config.requireLogin ? 'Log in or sign up to place pixels.' : 'Connecting…', 'info');
      return;
    }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showMessage('Not connected; reconnecting…', 'info');
      return;
    }
    socket.send(JSON.stringify({ type: 'place', x: x, y: y, color: selected }));
  }

  async function inspect(x, y) {
    try {
      const info = await (await fetch(api + 'pixels/' + x + '/' + y)).json();
      const who = info.placed_by ? info.placed_by : 'nobody yet';
      const when = info.placed_at ? new Date(info.placed_at).toLocaleString() : '';
      inspectorEl.textContent = '(' + x + ', ' + y + '): ' + (config.paletteNames[info.color] || info.color) +
        ', placed by ' + who + (when ? ' at ' + when : '');
      inspectorEl.hidden = false;
    } catch (err) { /* ignore: the inspector is best-effort */ }
  }

  // ---- palette ----
  let selected = null;
  function select(index) {
    selected = selected === index ? null : index;
    swatches.forEach(function (b) {
      b.setAttribute('aria-pressed', String(Number(b.dataset.color) === selected));
    });
    needsDraw = true;
  }
  swatches.forEach(function (b) {
    b.addEventListener('click', function () { select(Number(b.dataset.color)); });
  });

  // ---- pointer input: a click places, a drag pans, two fingers pinch ----
  const pointers = new Map();
  let dragged = false;
  let downAt = null;
  let pinchDistance = 0;
  const DRAG_THRESHOLD = 6;

  boardEl.addEventListener('pointerdown', function (e) {
    boardEl.setPointerCapture(e.pointerId);
    pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (pointers.size === 1) { dragged = false; downAt = { x: e.clientX, y: e.clientY }; }
    if (pointers.size === 2) { dragged = true; pinchDistance = distance(); }
  });
  boardEl.addEventListener('pointermove', function (e) {
    const p = screenToCanvas(e.clientX, e.clientY);
    hover = { x: Math.floor(p.x), y: Math.floor(p.y) };
    if (hover.x >= 0 && hover.y >= 0 && hover.x < width && hover.y < height) {
      coordsEl.textContent = '(' + hover.x + ', ' + hover.y + ')';
    } else { hover = null; }
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
    if (!dragged && Math.hypot(e.clientX - downAt.x, e.clientY - downAt.y) > DRAG_THRESHOLD) {
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
  function pointerEnd(e) {
    if (!pointers.has(e.pointerId)) return;
    pointers.delete(e.pointerId);
    boardEl.classList.remove('dragging');
    if (pointers.size === 0 && !dragged && e.type === 'pointerup') {
      const p = screenToCanvas(e.clientX, e.clientY);
      const x = Math.floor(p.x), y = Math.floor(p.y);
      if (x >= 0 && y >= 0 && x < width && y < height) {
        if (selected !== null) place(x, y); else inspect(x, y);
      }
    }
    if (pointers.size < 2) pinchDistance = 0;
  }
  boardEl.addEventListener('pointerup', pointerEnd);
  boardEl.addEventListener('pointercancel', pointerEnd);
  boardEl.addEventListener('wheel', function (e) {
    e.preventDefault();
    zoomAt(e.clientX, e.clientY, Math.exp(-e.deltaY * 0.0015));
  }, { passive: false });
  function distance() {
    const [a, b] = Array.from(pointers.values());
    return Math.hypot(a.x - b.x, a.y - b.y);
  }
  function midpoint() {
    const [a, b] = Array.from(pointers.values());
    return { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
  }

  // ---- keyboard: arrows pan, + and - zoom, digits pick colours, Enter places ----
  boardEl.addEventListener('keydown', function (e) {
    const step = 40 / cam.z;
    const r = boardEl.getBoundingClientRect();
    const keys = {
      ArrowLeft: function () { cam.cx -= step; }, ArrowRight: function () { cam.cx += step; },
      ArrowUp: function () { cam.cy -= step; }, ArrowDown: function () { cam.cy += step; },
      '+': function () { zoomAt(r.left + r.width / 2, r.top + r.height / 2, 1.5); },
      '=': function () { zoomAt(r.left + r.width / 2, r.top + r.height / 2, 1.5); },
      '-': function () { zoomAt(r.left + r.width / 2, r.top + r.height / 2, 1 / 1.5); },
      Enter: function () { place(Math.floor(cam.cx), Math.floor(cam.cy)); },
    };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); clampCam(); cameraChanged(); }
  });
  resetEl.addEventListener('click', resetView);
  window.addEventListener('resize', function () { sizeView(); clampCam(); });

  // ---- start ----
  resizeBoard(width, height);
  sizeView();
  if (!readUrl()) { cam.cx = width / 2; cam.cy = height / 2; cam.z = fitZoom(); }
  writeUrl();
  tickCooldown();
  requestAnimationFrame(frame);
  connect();
  // Exposed for debugging in the console only; tests read the screen.
  window.place = { cam: cam, get seq() { return appliedSeq; } };
})();
