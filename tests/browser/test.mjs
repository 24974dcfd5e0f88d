// The page at / in headless Chromium against real `finc serve` processes on
// loopback (tests/browser/run.sh sets it up; make test-browser):
//   node tests/browser/test.mjs --finc ./finc --weights W [--chromium PATH] [--screenshots DIR]
// Every figure the page shows is checked against the CLI or the API on the same input.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import puppeteer from 'puppeteer-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? acc.concat([[a.slice(2), all[i + 1]]]) : acc), []));
const FINC = path.resolve(args.finc || './finc');
const WEIGHTS = path.resolve(args.weights || 'weights/fashion-mnist.safetensors');
const CHROMIUM = args.chromium || ['/usr/lib/chromium/chromium', '/usr/bin/chromium'].find((p) => fs.existsSync(p));
const SHOTS = args.screenshots ? path.resolve(args.screenshots) : null;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'finc-browser-'));

// ---- PNG, for pixels decoded independently of the browser -------------------------

function pngDecode(buf) {
  if (buf.readUInt32BE(0) !== 0x89504e47) throw new Error('not a PNG');
  let off = 8, w = 0, h = 0, depth = 0, type = 0;
  const idat = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off), kind = buf.toString('latin1', off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (kind === 'IHDR') [w, h, depth, type] = [data.readUInt32BE(0), data.readUInt32BE(4), data[8], data[9]];
    if (kind === 'IDAT') idat.push(data);
    off += 12 + len;
  }
  const ch = { 0: 1, 2: 3 }[type];
  if (depth !== 8 || !ch) throw new Error(`PNG type ${type} depth ${depth}: not one finc writes`);
  const raw = zlib.inflateSync(Buffer.concat(idat));
  const stride = w * ch, out = Buffer.alloc(h * stride);
  for (let y = 0; y < h; y++) {
    const f = raw[y * (stride + 1)], line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= ch ? out[y * stride + x - ch] : 0, b = y ? out[(y - 1) * stride + x] : 0;
      const c = x >= ch && y ? out[(y - 1) * stride + x - ch] : 0;
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][f];
      out[y * stride + x] = (line[x] + pred) & 255;
    }
  }
  return { w, h, ch, pixels: out };
}

const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b) {
  let c = 0xffffffff;
  for (const x of b) c = CRC[(c ^ x) & 255] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function pngEncodeGray(w, h, pix) {
  const chunk = (kind, data) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(kind, 4, 'latin1');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  const raw = Buffer.alloc(h * (w + 1));
  for (let y = 0; y < h; y++) pix.copy(raw, y * (w + 1) + 1, y * w, (y + 1) * w);
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 13, 10, 26, 10]), chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

// ---- servers ---------------------------------------------------------------------------

// The weights without their anomaly block: the same model, uncalibrated.
function stripCalibration(from, to) {
  const buf = fs.readFileSync(from);
  const n = Number(buf.readBigUInt64LE(0));
  const head = JSON.parse(buf.toString('utf8', 8, 8 + n));
  delete head.__metadata__.anomaly;
  let text = JSON.stringify(head);
  text += ' '.repeat((8 - (Buffer.byteLength(text) % 8)) % 8);  // the data stays 8-byte aligned
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  fs.writeFileSync(to, Buffer.concat([len, Buffer.from(text), buf.subarray(8 + n)]));
}

const servers = [];
function serve(extra, weights = WEIGHTS) {
  return new Promise((resolve, reject) => {
    const p = spawn(FINC, ['serve', '--host', '127.0.0.1', '--port', '0', '--weights', weights, '--threads', '2',
      '--log', 'off', ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
    servers.push(p);
    let err = '';
    const timer = setTimeout(() => reject(new Error('finc serve not ready in 60 s: ' + err)), 60000);
    p.stderr.on('data', (d) => {
      err += d;
      const m = /ready on port (\d+)/.exec(err);
      if (m) {
        clearTimeout(timer);
        resolve('http://127.0.0.1:' + m[1]);
      }
    });
    p.on('exit', (code) => reject(new Error('finc serve exited ' + code + ': ' + err)));
  });
}

// ---- a small runner ----------------------------------------------------------------------

let passed = 0, failed = 0;
async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    passed++;
    console.log(`  ok    ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`  FAIL  ${name}: ${e.stack || e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function eq(got, want, what) {
  assert(got === want, `${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

// Console errors and CSP violations fail the test that caused them.
function watch(page) {
  const problems = [];
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[01]|status of 413/.test(m.text())) problems.push('console: ' + m.text());
  });
  return problems;
}

async function drawSamples(page, n, t, seed) {
  await page.$eval('#sample-n', (e, v) => { e.value = v; }, String(n));
  await page.$eval('#sample-t', (e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }, String(t));
  await page.$eval('#sample-seed', (e, v) => { e.value = v; }, seed === undefined ? '' : String(seed));
  await page.$eval('#sample-status', (e) => { e.textContent = ''; });
  await page.click('#sample-go');
  await page.waitForFunction(() => /in \d+ ms|HTTP|error|must|Bearer|key/i.test(document.querySelector('#sample-status').textContent));
}

// Drops files on the drop zone as a user's drag would: a DataTransfer of Files.
async function dropFiles(page, files) {
  const before = await page.$$eval('#score-list li', (l) => l.length);
  await page.evaluate((files) => {
    const dt = new DataTransfer();
    for (const f of files) {
      const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
      dt.items.add(new File([bytes], f.name, { type: 'image/png' }));
    }
    const zone = document.querySelector('#drop');
    zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
    zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, files.map((f) => ({ name: f.name, b64: f.bytes.toString('base64') })));
  await page.waitForFunction((n) => {
    const l = [...document.querySelectorAll('#score-list li')];
    return l.length === n && l.every((li) => li.dataset.state !== 'pending');
  }, {}, before + files.length);
  // newest first: the dropped files are the first ones, in order
  return page.$$eval('#score-list li', (l, k) => l.slice(0, k).reverse().map((li) => ({
    name: li.querySelector('.name').textContent,
    state: li.dataset.state,
    bpd: li.dataset.bpd,
    text: li.innerText,
    error: li.querySelector('.error') ? li.querySelector('.error').textContent : null,
    verdict: li.querySelector('.verdict') ? li.querySelector('.verdict').textContent : null,
    hist: li.querySelector('canvas.hist') ? (() => {
      const c = li.querySelector('canvas.hist');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let painted = 0;
      for (let i = 3; i < d.length; i += 4) painted += d[i] > 0;
      return { w: c.width, h: c.height, painted };
    })() : null,
  })), files.length);
}

async function main() {
  console.log(`browser: ${CHROMIUM}, ${execFileSync(CHROMIUM, ['--version']).toString().trim()}`);
  const keyFile = path.join(tmp, 'keys');
  fs.writeFileSync(keyFile, '# the page test\nui-test-key-1\n');
  const uncalibrated = path.join(tmp, 'uncalibrated.safetensors');
  stripCalibration(WEIGHTS, uncalibrated);
  const [base, keyed, plain] = await Promise.all([serve([]), serve(['--api-key-file', keyFile]),
    serve([], uncalibrated)]);
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--force-color-profile=srgb'],
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const problems = watch(page);
    const info = await (await fetch(base + '/v1/models')).json();
    const m = info.models[0];

    await test('the model card shows the model', async () => {
      const res = await page.goto(base + '/', { waitUntil: 'load' });
      eq(res.status(), 200, 'GET /');
      assert(/default-src 'none'/.test(res.headers()['content-security-policy']), 'CSP header');
      await page.waitForSelector('#card-list:not([hidden])');
      const card = Object.fromEntries(await page.$$eval('#card-list dt', (l) =>
        l.map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
      eq(card.Name, m.id, 'name');
      assert(card.Image.startsWith(`${m.image.channels} × ${m.image.height} × ${m.image.width}`), card.Image);
      eq(card.Levels, String(m.config.levels), 'levels');
      eq(card.Steps, m.config.steps.join(', ') + ' per level', 'steps');
      eq(card.Kernel, `${m.config.kernel} × ${m.config.kernel}`, 'kernel');
      eq(card.Parameters, m.parameters.toLocaleString('en-US'), 'parameters');
      eq(card['Test bits/dim'], m.test_bits_per_dim.toFixed(3), 'test bits/dim');
      eq(card.Backend, m.backend, 'backend');
      assert(m.anomaly.calibrated, 'the shipped model is calibrated (finc info: anomaly)');
      assert(card.Calibration.startsWith('calibrated on ' + m.anomaly.data), card.Calibration);
      eq(problems.join('\n'), '', 'console');
    });

    await test('16 samples show 16 images, each with its seed and index, the curl command and the time', async () => {
      await drawSamples(page, 16, 0.7, 42);
      const tiles = await page.$$eval('#sample-grid canvas', (l) => l.map((c) => ({
        w: c.width, h: c.height, seed: c.dataset.seed, index: c.dataset.index,
        caption: c.nextElementSibling.textContent, shown: c.getBoundingClientRect().width,
        rendering: getComputedStyle(c).imageRendering })));
      eq(tiles.length, 16, 'images');
      tiles.forEach((t, i) => {
        eq(`${t.w}x${t.h}`, `${m.image.width}x${m.image.height}`, 'canvas size');
        eq(t.index, String(i), 'index');
        eq(t.seed, '42', 'seed');
        eq(t.caption, `#${i} · seed 42`, 'caption');
        assert(t.shown >= 3 * m.image.width, `image ${i} shown ${t.shown} px wide: too small to see`);
        eq(t.rendering, 'pixelated', 'image-rendering');
      });
      const status = await page.$eval('#sample-status', (e) => e.textContent);
      assert(/^16 images at temperature 0\.70, seed 42, in \d+ ms$/.test(status), status);
      const curl = await page.$eval('#sample-curl', (e) => e.textContent);
      eq(curl, `curl -s -H 'Accept: image/png' -d '{"n":16,"temperature":0.7,"seed":42}' ${base}/sample -o grid.png`, 'curl');
      // the command works as shown, and gives the CLI's grid
      const grid = path.join(tmp, 'curl-grid.png'), cli = path.join(tmp, 'cli-grid.png');
      execFileSync('sh', ['-c', curl.replace(/-o grid\.png$/, `-o '${grid}'`)]);
      execFileSync(FINC, ['sample', WEIGHTS, '-n', '16', '-t', '0.7', '--seed', '42', '-o', cli, '--threads', '2']);
      assert(pngDecode(fs.readFileSync(grid)).pixels.equals(pngDecode(fs.readFileSync(cli)).pixels), 'curl grid != CLI grid');
      eq(problems.join('\n'), '', 'console');
    });

    await test('the same seed gives the CLI\'s pixels (finc sample --seed)', async () => {
      await drawSamples(page, 9, 0.85, 1234567);
      const dir = path.join(tmp, 'cli') + '/';
      execFileSync(FINC, ['sample', WEIGHTS, '-n', '9', '-t', '0.85', '--seed', '1234567', '-o', dir, '--threads', '2']);
      const shown = await page.$$eval('#sample-grid canvas', (l) => l.map((c) =>
        Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)));
      eq(shown.length, 9, 'images');
      for (let i = 0; i < 9; i++) {
        const want = pngDecode(fs.readFileSync(path.join(dir, String(i).padStart(5, '0') + '.png')));
        const rgba = shown[i];
        for (let p = 0; p < want.w * want.h; p++)
          for (let c = 0; c < 3; c++) {
            const w = want.pixels[p * want.ch + (want.ch === 1 ? 0 : c)];
            if (rgba[4 * p + c] !== w) throw new Error(`image ${i} pixel ${p} channel ${c}: page ${rgba[4 * p + c]}, CLI ${w}`);
          }
      }
      // and the seed printed for a random draw reproduces it
      await drawSamples(page, 2, 1.0);
      const seed = await page.$eval('#sample-grid', (e) => e.dataset.seed);
      assert(/^\d+$/.test(seed), 'seed ' + seed);
      const again = path.join(tmp, 'again') + '/';
      execFileSync(FINC, ['sample', WEIGHTS, '-n', '2', '-t', '1.0', '--seed', seed, '-o', again, '--threads', '2']);
      const px = await page.$eval('#sample-grid canvas', (c) => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data));
      const want = pngDecode(fs.readFileSync(path.join(again, '00000.png')));
      for (let p = 0; p < want.w * want.h; p++) assert(px[4 * p] === want.pixels[p * want.ch], `random-seed image, pixel ${p}`);
    });

    const valid = fs.readFileSync(path.join(tmp, 'cli', '00003.png'));
    await test('a dropped PNG shows finc score\'s bits/dim, log-likelihood, p-value, verdict and histogram', async () => {
      const file = path.join(tmp, 'valid.png');
      fs.writeFileSync(file, valid);
      const cli = JSON.parse(execFileSync(FINC, ['score', WEIGHTS, file, '--json', '--threads', '2']).toString().trim());
      const [r] = await dropFiles(page, [{ name: 'valid.png', bytes: valid }]);
      eq(r.state, 'scored', 'state ' + r.text);
      // finc score --json prints 8 decimals
      assert(Math.abs(Number(r.bpd) - cli.bits_per_dim) <= 5e-9, `bits/dim ${r.bpd}, CLI ${cli.bits_per_dim}`);
      assert(r.text.includes(cli.bits_per_dim.toFixed(4)), `shown bits/dim ${cli.bits_per_dim.toFixed(4)}: ${r.text}`);
      assert(r.text.includes(cli.log_likelihood.toFixed(2) + ' nats'), `log-likelihood ${cli.log_likelihood}: ${r.text}`);
      assert(cli.anomaly, 'the shipped model is calibrated: finc score gives an anomaly verdict');
      assert(r.text.includes(cli.anomaly.p_value.toFixed(4)), `p-value ${cli.anomaly.p_value}: ${r.text}`);
      assert(r.text.includes(cli.anomaly.score.toFixed(2)), `anomaly score ${cli.anomaly.score}: ${r.text}`);
      eq(r.verdict, `${cli.anomaly.anomalous ? 'anomalous' : 'typical'} at α = 0.01`, 'verdict');
      assert(r.hist && r.hist.painted > 200, 'histogram drawn: ' + JSON.stringify(r.hist));
    });

    await test('an anomalous image is flagged, and α changes the verdict as p-value <= α', async () => {
      const black = pngEncodeGray(m.image.width, m.image.height, Buffer.alloc(m.image.width * m.image.height));
      const file = path.join(tmp, 'black.png');
      fs.writeFileSync(file, black);
      const cli = JSON.parse(execFileSync(FINC, ['score', WEIGHTS, file, '--json', '--threads', '2']).toString().trim());
      const [r] = await dropFiles(page, [{ name: 'black.png', bytes: black }]);
      eq(r.verdict, `${cli.anomaly.anomalous ? 'anomalous' : 'typical'} at α = 0.01`, 'verdict');
      assert(cli.anomaly.anomalous, 'a flat black image is anomalous for the shipped model');
      await page.select('#score-alpha', '0.001');
      const v = await page.$eval('#score-list li .verdict', (e) => e.textContent);
      eq(v, `${cli.anomaly.p_value <= 0.001 ? 'anomalous' : 'typical'} at α = 0.001`, 'verdict at 0.001');
      await page.select('#score-alpha', '0.01');
    });

    await test('a wrong-size PNG shows the server\'s own error next to the file', async () => {
      const big = pngEncodeGray(32, 32, Buffer.alloc(32 * 32, 128));
      const direct = await (await fetch(base + '/log-likelihood', { method: 'POST', headers: { 'Content-Type': 'image/png' }, body: big })).json();
      assert(/32x32/.test(direct.error), direct.error);
      const res = await dropFiles(page, [{ name: 'big.png', bytes: big }, { name: 'ok.png', bytes: valid }]);
      eq(res[0].name, 'big.png', 'first row');
      eq(res[0].state, 'error', 'state');
      eq(res[0].error, direct.error, 'error shown');
      eq(res[1].state, 'scored', 'the valid file beside it');
    });

    await test('keyboard: every control is reachable with Tab, and the file picker opens from the keyboard', async () => {
      const order = [];
      for (let i = 0; i < 20; i++) {
        await page.keyboard.press('Tab');
        order.push(await page.evaluate(() => document.activeElement.id || document.activeElement.tagName));
      }
      const want = ['sample-n', 'sample-t', 'sample-seed', 'sample-go', 'score-files', 'score-alpha'];
      const from = order.indexOf('sample-n');
      const idx = want.map((id) => order.indexOf(id, from));
      assert(idx.every((i) => i >= 0) && idx.every((v, i) => i === 0 || v > idx[i - 1]), 'tab order ' + order.join(' '));
      const labelled = await page.$$eval('input, select', (l) => l.filter((e) => !e.labels || !e.labels.length).map((e) => e.id));
      eq(labelled.join(','), '', 'inputs without a label');
      await page.focus('#score-files');
      const waiting = page.waitForFileChooser({ timeout: 10000 });
      await new Promise((r) => setTimeout(r, 200));  // the interception is on before the key goes down
      await page.keyboard.press('Enter');
      const chooser = await waiting;
      const pick = path.join(tmp, 'picked.png');
      fs.writeFileSync(pick, valid);
      await chooser.accept([pick]);
      await page.waitForFunction(() => document.querySelector('#score-list li .name').textContent === 'picked.png' &&
        document.querySelector('#score-list li').dataset.state === 'scored');
    });

    await test('live figures come from /metrics: request rate, p50/p99 latency, queue depth', async () => {
      await page.waitForFunction(() => /^\d+\.\d \/s$/.test(document.querySelector('#live-rate').textContent), { timeout: 10000 });
      // a burst of scores between two reads shows as a rate above zero, with its latency
      for (let i = 0; i < 12; i++)
        await fetch(base + '/log-likelihood', { method: 'POST', headers: { 'Content-Type': 'image/png' }, body: valid });
      await page.waitForFunction(() => parseFloat(document.querySelector('#live-rate').textContent) > 0 &&
        /over the last/.test(document.querySelector('#live-note').textContent), { timeout: 10000 });
      const f = await page.$$eval('.figures dd', (l) => l.map((e) => e.textContent));
      assert(/^\d+(\.\d+)? (ms|s)$/.test(f[1]) && /^\d+(\.\d+)? (ms|s)$/.test(f[2]), 'latency ' + f);
      eq(f[3], '0', 'queue depth of an idle server');
    });

    await test('at 360 px wide nothing overflows sideways', async () => {
      await page.setViewport({ width: 360, height: 800 });
      await new Promise((r) => setTimeout(r, 200));
      const sw = await page.evaluate(() => document.documentElement.scrollWidth);
      assert(sw <= 360, 'scroll width ' + sw);
      const out = await page.$$eval('body *', (l) => l.filter((e) => e.getBoundingClientRect().right > innerWidth + 0.5)
        .map((e) => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right.toFixed(0)));
      eq(out.join(', '), '', 'elements past the right edge');
      await page.setViewport({ width: 1280, height: 900 });
    });

    if (SHOTS) {
      // one typical image, one anomalous, one refused; 16 samples wide, 9 narrow
      await page.$$eval('#score-list li', (l) => l.forEach((e) => e.remove()));
      const black = pngEncodeGray(m.image.width, m.image.height, Buffer.alloc(m.image.width * m.image.height));
      await dropFiles(page, [{ name: 'big.png', bytes: pngEncodeGray(32, 32, Buffer.alloc(32 * 32, 128)) },
        { name: 'black.png', bytes: black }, { name: 'sample-3.png', bytes: valid }]);
      for (const [w, n, name] of [[1280, 16, 'ui-1280.png'], [360, 9, 'ui-360.png']]) {
        await page.setViewport({ width: w, height: 800 });
        await drawSamples(page, n, 0.7, 42);
        await page.evaluate(() => { document.activeElement.blur(); window.scrollTo(0, 0); });
        await new Promise((r) => setTimeout(r, 300));
        await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
      }
      await page.setViewport({ width: 1280, height: 900 });
    }

    await test('with an API key: the page asks for it, fails clearly without it, works with it', async () => {
      const p2 = await browser.newPage();
      const probs = watch(p2);
      await p2.goto(keyed + '/', { waitUntil: 'load' });
      await p2.waitForSelector('#key:not([hidden])');
      const msg = await p2.$eval('#key-msg', (e) => e.textContent);
      assert(/needs an API key/.test(msg) && /Bearer/.test(msg), msg);
      eq(await p2.$eval('#card-status', (e) => e.textContent), 'Enter the API key above to see the model.', 'card');
      await drawSamples(p2, 1, 0.7, 1);
      const st = await p2.$eval('#sample-status', (e) => [e.textContent, e.className]);
      assert(/Bearer/.test(st[0]) && /error/.test(st[1]), 'sample without a key: ' + st);
      // a wrong key is refused and said so
      await p2.type('#key-input', 'wrong-key');
      await p2.keyboard.press('Enter');
      await p2.waitForFunction(() => /refused/.test(document.querySelector('#key-msg').textContent) &&
        !document.querySelector('#key').hidden);
      await p2.type('#key-input', 'ui-test-key-1');
      await p2.keyboard.press('Enter');
      await p2.waitForSelector('#card-list:not([hidden])');
      assert((await p2.$eval('#key', (e) => e.hidden)), 'key panel hidden once the key works');
      await drawSamples(p2, 4, 0.7, 5);
      eq(await p2.$$eval('#sample-grid canvas', (l) => l.length), 4, 'samples with the key');
      const curl = await p2.$eval('#sample-curl', (e) => e.textContent);
      assert(curl.includes('Authorization: Bearer $FINC_API_KEY') && !curl.includes('ui-test-key-1'), curl);
      const stored = await p2.evaluate(() => [sessionStorage.getItem('finc-api-key'), localStorage.length, document.cookie]);
      eq(JSON.stringify(stored), JSON.stringify(['ui-test-key-1', 0, '']), 'session storage only');
      const [r] = await dropFiles(p2, [{ name: 'valid.png', bytes: valid }]);
      eq(r.state, 'scored', 'score with the key');
      eq(probs.join('\n'), '', 'console');
      await p2.close();
    });
    await test('an uncalibrated model: the card says so, scores have bits/dim and no verdict', async () => {
      const p3 = await browser.newPage();
      const probs = watch(p3);
      await p3.goto(plain + '/', { waitUntil: 'load' });
      await p3.waitForSelector('#card-list:not([hidden])');
      const cal = await p3.$$eval('#card-list dt', (l) => l.find((dt) => dt.textContent === 'Calibration').nextElementSibling.textContent);
      assert(cal.startsWith('not calibrated'), cal);
      assert(await p3.$eval('#alpha-row', (e) => e.hidden), 'no α without a calibration');
      const file = path.join(tmp, 'valid-plain.png');
      fs.writeFileSync(file, valid);
      const cli = JSON.parse(execFileSync(FINC, ['score', uncalibrated, file, '--json', '--threads', '2']).toString().trim());
      assert(!cli.anomaly, 'finc score gives no verdict for the stripped model');
      const [r] = await dropFiles(p3, [{ name: 'valid.png', bytes: valid }]);
      eq(r.state, 'scored', 'state ' + r.text);
      assert(r.text.includes(cli.bits_per_dim.toFixed(4)), `bits/dim ${cli.bits_per_dim}: ${r.text}`);
      eq(r.verdict, null, 'verdict');
      eq(r.hist, null, 'histogram');
      eq(probs.join('\n'), '', 'console');
      await p3.close();
    });
    eq(problems.join('\n'), '', 'console (whole run)');
  } finally {
    await browser.close();
  }
}

const t0 = Date.now();
main().catch((e) => {
  failed++;
  console.log('  FAIL  ' + (e.stack || e));
}).finally(() => {
  for (const p of servers) p.kill('SIGTERM');
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(`browser: ${passed} passed, ${failed} failed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  process.exit(failed || !passed ? 1 : 0);
});
