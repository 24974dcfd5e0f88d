// The page at / (server/ui.c): the model card, samples, scores with anomaly
// verdicts and live figures, through the public API only (api/README.md).
'use strict';

const $ = (id) => document.getElementById(id);
const KEY = 'finc-api-key';
const MAX_SEED = 9007199254740991; // the server's limit: 2^53 - 1
let model = null;   // /v1/models: models[0]
let limits = null;  // /v1/models: limits
const scored = [];  // {li, result} per scored image, for α changes

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function key() {
  return sessionStorage.getItem(KEY) || '';
}

// fetch with the bearer token when one was entered; JSON answers parsed,
// error answers thrown with the server's own message.
async function api(path, init = {}) {
  const headers = Object.assign({}, init.headers || {});
  if (key()) headers.Authorization = 'Bearer ' + key();
  let res;
  try {
    res = await fetch(path, Object.assign({}, init, { headers, cache: 'no-store' }));
  } catch (e) {
    throw new ApiError(0, 'cannot reach the server (' + e.message + ')');
  }
  const type = res.headers.get('Content-Type') || '';
  const body = type.startsWith('application/json') ? await res.json().catch(() => null) : await res.text();
  if (res.ok) return body;
  const msg = body && body.error ? body.error : 'HTTP ' + res.status;
  if (res.status === 401) askKey(key() ? 'The key was refused: ' + msg : 'This server needs an API key: ' + msg);
  throw new ApiError(res.status, msg);
}

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle('error', Boolean(isError));
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function fmt(x, digits) {
  return typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '–';
}

// ---- API key -----------------------------------------------------------------

function askKey(message) {
  $('key').hidden = false;
  $('key-msg').textContent = message;
  $('key-input').focus();
}

$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const v = $('key-input').value.trim();
  if (!v) return;
  sessionStorage.setItem(KEY, v);
  $('key-input').value = '';
  $('key').hidden = true;
  loadModel();
});

// ---- model card ----------------------------------------------------------------

async function loadModel() {
  setStatus($('card-status'), 'Loading the model card…');
  let body;
  try {
    body = await api('/v1/models');
  } catch (e) {
    if (e.status === 503) {  // loading: the card comes once the model is ready
      setStatus($('card-status'), e.message + '; trying again…');
      setTimeout(loadModel, 1000);
      return;
    }
    setStatus($('card-status'), e.status === 401 ? 'Enter the API key above to see the model.' : e.message, true);
    return;
  }
  model = body.models[0];
  limits = body.limits;
  const cfg = model.config || {};
  const img = model.image;
  const an = model.anomaly || {};
  const rows = [
    ['Name', model.id],
    ['Image', img.channels + ' × ' + img.height + ' × ' + img.width + ' (' + (img.channels === 1 ? 'gray' : img.channels === 3 ? 'RGB' : img.channels + ' channels') + ')'],
    ['Levels', cfg.levels],
    ['Steps', Array.isArray(cfg.steps) ? cfg.steps.join(', ') + ' per level' : cfg.steps],
    ['Kernel', cfg.kernel ? cfg.kernel + ' × ' + cfg.kernel : undefined],
    ['Coupling width', cfg.coupling_width],
    ['Parameters', model.parameters.toLocaleString('en-US')],
    ['Test bits/dim', model.test_bits_per_dim === null ? 'not recorded' : fmt(model.test_bits_per_dim, 3)],
    ['Backend', model.backend],
    ['Calibration', an.calibrated
      ? 'calibrated on ' + an.data + ' (' + an.fit_images + ' fit, ' + an.calibration_images + ' calibration images); default α ' + an.default_alpha
      : 'not calibrated: scores have no anomaly verdicts (finc calibrate)'],
    ['Server', 'finc ' + body.version],
  ];
  const dl = $('card-list');
  dl.replaceChildren();
  for (const [k, v] of rows) {
    if (v === undefined || v === null) continue;
    const pair = el('div', k === 'Calibration' ? 'wide' : '');
    pair.append(el('dt', '', k), el('dd', '', String(v)));
    dl.append(pair);
  }
  dl.hidden = false;
  $('card-status').textContent = '';
  $('card-status').hidden = true;

  $('sample-n').max = String(limits.max_n);
  $('score-shape').textContent = 'PNGs of ' + img.width + ' × ' + img.height + ' pixels, ' +
    (img.channels === 1 ? 'gray' : 'RGB') + '; up to ' + limits.max_images + ' files.';
  $('alpha-row').hidden = !an.calibrated;
  if (an.calibrated) {
    const sel = $('score-alpha');
    const want = String(an.default_alpha);
    if (![...sel.options].some((o) => o.value === want)) sel.add(new Option(want, want), 0);
    sel.value = want;
  }
}

// ---- images on canvases ----------------------------------------------------------

// Draws PNG bytes (a Blob) on a canvas at their own size; CSS scales it up
// with crisp pixels. The decoded pixels are exactly the PNG's.
async function drawPng(canvas, blob) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  canvas.width = bmp.width;
  canvas.height = bmp.height;
  canvas.getContext('2d').drawImage(bmp, 0, 0);
  bmp.close();
}

function base64Blob(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return new Blob([bytes], { type: 'image/png' });
}

// ---- sample ------------------------------------------------------------------------

$('sample-t').addEventListener('input', () => {
  $('sample-t-out').value = Number($('sample-t').value).toFixed(2);
});

function shellQuote(s) {
  return "'" + s.replace(/'/g, "'\\''") + "'";
}

$('sample-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const status = $('sample-status');
  const max = limits ? limits.max_n : 256;
  const n = Number($('sample-n').value);
  if (!Number.isInteger(n) || n < 1 || n > max) {
    setStatus(status, 'Images must be a whole number from 1 to ' + max + '.', true);
    $('sample-n').focus();
    return;
  }
  const t = $('sample-t').value;
  const seedText = $('sample-seed').value.trim();
  if (seedText && (!/^[0-9]{1,16}$/.test(seedText) || Number(seedText) > MAX_SEED)) {
    setStatus(status, 'The seed must be a whole number from 0 to ' + MAX_SEED + ', or empty for a random one.', true);
    $('sample-seed').focus();
    return;
  }
  const req = { n, temperature: Number(t) };
  if (seedText) req.seed = Number(seedText);
  $('sample-go').disabled = true;
  setStatus(status, 'Drawing ' + n + ' image' + (n > 1 ? 's' : '') + '…');
  const t0 = performance.now();
  let body;
  try {
    body = await api('/sample', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(req),
    });
  } catch (e) {
    setStatus(status, e.message, true);
    $('sample-go').disabled = false;
    return;
  }
  const ms = performance.now() - t0;
  const grid = $('sample-grid');
  const tiles = body.images.map((im) => {
    const fig = el('figure', 'tile');
    const c = el('canvas', 'px');
    c.dataset.index = im.index;
    c.dataset.seed = im.seed;
    c.setAttribute('role', 'img');
    c.setAttribute('aria-label', 'sample ' + im.index + ' of seed ' + im.seed);
    fig.append(c, el('figcaption', '', '#' + im.index + ' · seed ' + im.seed));
    return { fig, c, png: im.png };
  });
  await Promise.all(tiles.map((x) => drawPng(x.c, base64Blob(x.png))));
  grid.replaceChildren(...tiles.map((x) => x.fig));
  grid.dataset.seed = body.seed;
  setStatus(status, body.images.length + ' image' + (body.images.length > 1 ? 's' : '') + ' at temperature ' +
    Number(t).toFixed(2) + ', seed ' + body.seed + ', in ' + ms.toFixed(0) + ' ms');
  const json = JSON.stringify({ n, temperature: Number(t), seed: body.seed });
  const auth = key() ? ' -H "Authorization: Bearer $FINC_API_KEY"' : '';
  $('sample-curl').textContent = 'curl -s' + auth + " -H 'Accept: image/png' -d " + shellQuote(json) + ' ' +
    location.origin + '/sample -o grid.png';
  $('sample-cli').textContent = 'finc sample ' + model.id + '.safetensors -n ' + n + ' -t ' + t + ' --seed ' + body.seed +
    ' -o samples/   # samples/00000.png is #0';
  $('sample-repro').hidden = false;
  $('sample-go').disabled = false;
});

// ---- score -------------------------------------------------------------------------

function alpha() {
  return Number($('score-alpha').value);
}

// The calibration scores' histogram (from /v1/models), the bins above its
// 99th percentile as one last bar, and this image's score as a line.
function drawHistogram(canvas, hist, score) {
  const w = canvas.clientWidth || 320;
  const h = canvas.clientHeight || 72;
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.scale(dpr, dpr);
  const css = getComputedStyle(document.documentElement);
  const bar = css.getPropertyValue('--bar').trim();
  const mark = css.getPropertyValue('--mark').trim();
  const muted = css.getPropertyValue('--muted').trim();
  const counts = hist.counts.concat([hist.over]);
  const bins = hist.counts.length;
  const gap = 6;                       // between the bins and the tail bar
  const bw = (w - gap) / (bins + 1);
  const top = Math.max(...counts, 1);
  const base = h - 14;
  g.fillStyle = bar;
  counts.forEach((c, i) => {
    const bh = (c / top) * (base - 4);
    const x = i * bw + (i === bins ? gap : 0);
    g.fillRect(x + 0.5, base - bh, bw - 1, bh);
  });
  g.fillStyle = muted;
  g.font = '10px system-ui, sans-serif';
  g.textBaseline = 'bottom';
  g.fillText(fmt(hist.lo, 0), 0, h);
  g.textAlign = 'right';
  g.fillText(fmt(hist.hi, 0) + ' | tail', w, h);
  let x;
  if (score > hist.hi) x = bins * bw + gap + bw / 2;
  else x = Math.max(0, Math.min(bins * bw, ((score - hist.lo) / (hist.hi - hist.lo || 1)) * bins * bw));
  g.fillStyle = mark;
  g.fillRect(Math.min(x, w - 2), 0, 2, base);
}

function verdictText(p, a) {
  return p <= a ? 'anomalous' : 'typical';
}

function renderVerdict(item) {
  const an = item.result.anomaly;
  if (!an) return;
  const a = alpha();
  const v = item.li.querySelector('.verdict');
  v.textContent = verdictText(an.p_value, a) + ' at α = ' + a;
  v.className = 'verdict ' + (an.p_value <= a ? 'bad' : 'ok');
}

$('score-alpha').addEventListener('change', () => scored.forEach(renderVerdict));

// Histograms are drawn at their shown size: again when that changes.
let resizeTimer = 0;
window.addEventListener('resize', () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    for (const item of scored)
      if (item.hist && item.hist.isConnected) drawHistogram(item.hist, model.anomaly.calibration_histogram, item.result.anomaly.score);
  }, 100);
});

function addRow(dl, k, v) {
  dl.append(el('dt', '', k), el('dd', 'num', v));
}

async function scoreFile(file, li) {
  const msg = li.querySelector('.msg');
  const calibrated = model && model.anomaly && model.anomaly.calibrated;
  const path = '/log-likelihood' + (calibrated ? '?alpha=' + encodeURIComponent($('score-alpha').value) : '');
  let body;
  try {
    body = await api(path, { method: 'POST', headers: { 'Content-Type': 'image/png' }, body: file });
  } catch (e) {
    msg.className = 'msg error';
    msg.textContent = e.message;
    li.dataset.state = 'error';
    return;
  }
  const r = body.results[0];
  msg.remove();
  const dl = el('dl');
  addRow(dl, 'bits/dim', fmt(r.bits_per_dim, 4));
  addRow(dl, 'log-likelihood', fmt(r.log_likelihood, 2) + ' nats');
  if (r.anomaly) {
    addRow(dl, 'anomaly score', fmt(r.anomaly.score, 2));
    addRow(dl, 'p-value', fmt(r.anomaly.p_value, 4));
    const dd = el('dd');
    dd.append(el('span', 'verdict'));
    dl.append(el('dt', '', 'verdict'), dd);
  }
  li.querySelector('.body').append(dl);
  li.dataset.state = 'scored';
  li.dataset.bpd = String(r.bits_per_dim);
  const item = { li, result: r };
  if (r.anomaly) {
    scored.push(item);
    renderVerdict(item);
    const hist = model.anomaly.calibration_histogram;
    if (hist) {
      const c = el('canvas', 'hist');
      c.setAttribute('role', 'img');
      c.setAttribute('aria-label', 'Histogram of the calibration images\' anomaly scores, from ' + fmt(hist.lo, 1) +
        ' to ' + fmt(hist.hi, 1) + ' and a tail of ' + hist.over + ' above; this image\'s score, ' +
        fmt(r.anomaly.score, 1) + ', is marked');
      const cap = el('p', 'hint hist-cap', 'Anomaly scores of the ' + model.anomaly.calibration_images.toLocaleString('en-US') +
        ' calibration images, ' + fmt(hist.lo, 0) + ' to ' + fmt(hist.hi, 0) + ' (99th percentile), then the tail; the line is this image.');
      li.append(c, cap);
      item.hist = c;
      drawHistogram(c, hist, r.anomaly.score);
    }
  }
}

function scoreFiles(files) {
  const list = [...files];
  if (!list.length) return;
  if (!model) {
    setStatus($('score-status'), 'The model card has not loaded yet: enter the API key, or reload.', true);
    return;
  }
  setStatus($('score-status'), 'Scoring ' + list.length + ' file' + (list.length > 1 ? 's' : '') + '…');
  const jobs = list.map((file) => {
    const li = el('li', 'result');
    const thumb = el('canvas', 'px thumb');
    thumb.setAttribute('role', 'img');
    thumb.setAttribute('aria-label', 'thumbnail of ' + file.name);
    const bodyDiv = el('div', 'body');
    bodyDiv.append(el('p', 'name', file.name), el('p', 'msg', 'scoring…'));
    li.append(thumb, bodyDiv);
    li.dataset.state = 'pending';
    $('score-list').prepend(li);
    drawPng(thumb, file).catch(() => {});
    return scoreFile(file, li);
  });
  Promise.all(jobs).then(() => {
    setStatus($('score-status'), 'Scored ' + list.length + ' file' + (list.length > 1 ? 's' : '') + '.');
  });
}

$('score-files').addEventListener('change', (ev) => {
  scoreFiles(ev.target.files);
  ev.target.value = '';
});

const drop = $('drop');
drop.addEventListener('dragover', (ev) => {
  ev.preventDefault();
  ev.dataTransfer.dropEffect = 'copy';
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (ev) => {
  ev.preventDefault();
  drop.classList.remove('over');
  scoreFiles(ev.dataTransfer.files);
});

// ---- live figures from /metrics ------------------------------------------------------

const INFERENCE = new Set(['/sample', '/log-likelihood']);
let last = null;

function parseMetrics(text) {
  const out = { requests: 0, buckets: new Map(), queue: 0 };
  for (const line of text.split('\n')) {
    const m = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of m[2].matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]] = l[2];
    const v = Number(m[3]);
    if (m[1] === 'finc_http_requests_total' && INFERENCE.has(labels.endpoint)) out.requests += v;
    else if (m[1] === 'finc_http_request_duration_seconds_bucket' && INFERENCE.has(labels.endpoint)) {
      const le = labels.le === '+Inf' ? Infinity : Number(labels.le);
      out.buckets.set(le, (out.buckets.get(le) || 0) + v);
    } else if (m[1] === 'finc_queue_depth') out.queue += v;
  }
  return out;
}

// Prometheus' histogram_quantile: linear within the bucket that holds q.
function quantile(q, buckets) {
  const les = [...buckets.keys()].sort((a, b) => a - b);
  const total = buckets.get(Infinity) || 0;
  if (!total) return NaN;
  const rank = q * total;
  let prevLe = 0;
  let prevC = 0;
  for (const le of les) {
    const c = buckets.get(le);
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + (le - prevLe) * ((rank - prevC) / Math.max(c - prevC, 1e-12));
    }
    prevLe = le;
    prevC = c;
  }
  return prevLe;
}

function ms(s) {
  if (!Number.isFinite(s)) return '–';
  return s < 1 ? (s * 1000).toFixed(s < 0.01 ? 2 : 1) + ' ms' : s.toFixed(2) + ' s';
}

async function pollMetrics() {
  if (document.visibilityState === 'hidden') return;
  let text;
  try {
    text = await api('/metrics');
  } catch (e) {
    $('live-note').textContent = '/metrics: ' + e.message;
    return;
  }
  const now = performance.now() / 1000;
  const cur = parseMetrics(text);
  $('live-queue').textContent = String(cur.queue);
  let b = cur.buckets;
  let note = 'since the server started.';
  if (last) {
    const dt = now - last.t;
    $('live-rate').textContent = ((cur.requests - last.m.requests) / dt).toFixed(1) + ' /s';
    const delta = new Map();
    for (const [le, c] of cur.buckets) delta.set(le, c - (last.m.buckets.get(le) || 0));
    if ((delta.get(Infinity) || 0) > 0) {
      b = delta;
      note = 'over the last ' + dt.toFixed(0) + ' s.';
    } else {
      note = 'since the server started (none in the last ' + dt.toFixed(0) + ' s).';
    }
  }
  $('live-p50').textContent = ms(quantile(0.5, b));
  $('live-p99').textContent = ms(quantile(0.99, b));
  $('live-note').textContent = 'From /metrics every 3 s, /sample and /log-likelihood together; latency ' + note;
  last = { t: now, m: cur };
}

loadModel();
pollMetrics();
setInterval(pollMetrics, 3000);
