#!/usr/bin/python3
"""make test-hostile: finc serve on loopback under the attacks that once
stalled it or ate its memory, one phase after another, while a prober asks
/healthz every 100 ms on a new connection.

Phases: inflate bombs, slow heads, a full connection pool, request bodies
pressing on the body-memory budget, heavy importance-weighted requests (with
one-image scores sent beside them). Each phase passes when every /healthz
probe answered 200 within 1 s throughout, and the server's resident memory
came back within 20% of its baseline (taken before the first phase) after
the phase ended. Prints a table; exits 1 when a phase fails."""
import argparse
import base64
import json
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"


def png(width, height, rows):
    """A gray 8-bit PNG of the given filtered rows (bytes, filter byte first)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def bomb(inflated):
    """A correct 28x28 PNG whose IDAT stream goes on to inflate to `inflated` zero bytes."""
    z = zlib.compressobj(9)
    parts = [z.compress(bytes(29 * 28))]
    block = bytes(1 << 24)
    for _ in range(inflated >> 24):
        parts.append(z.compress(block))
    parts.append(z.flush())
    return png(28, 28, b"".join(parts))


def image():
    rows = b"".join(b"\x00" + bytes((x * 9 + y * 5) & 0xFF for x in range(28)) for y in range(28))
    return png(28, 28, zlib.compress(rows))


def exchange(port, data, timeout=30.0):
    """Sends one request on a new connection; returns (status, seconds), status 0 when no answer came."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(data)  # no half-close: the server takes one as a hang-up
            got = b""
            while b"\r\n" not in got:
                d = s.recv(4096)
                if not d:
                    break
                got += d
        m = re.match(rb"HTTP/1\.1 (\d{3})", got)
        return (int(m.group(1)) if m else 0), time.monotonic() - t0
    except OSError:
        return 0, time.monotonic() - t0


def post(path, ctype, body, extra=b""):
    return (b"POST %s HTTP/1.1\r\nHost: h\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n"
            % (path.encode(), ctype.encode(), len(body), extra)) + body


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Prober(threading.Thread):
    """/healthz every 100 ms; keeps the slowest answer and the failures of the current phase."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.lock = port, False, threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.worst, self.failures, self.count = 0.0, 0, 0

    def run(self):
        while not self.stop:
            status, secs = exchange(self.port, HEALTH, timeout=2.0)
            with self.lock:
                self.count += 1
                self.worst = max(self.worst, secs)
                if status != 200 or secs > 1.0:
                    self.failures += 1
            time.sleep(0.1)


def hold(port, n, head, body_bytes=0, every=None, byte=b"a", duration=10.0):
    """Opens n connections that send `head` (and body_bytes of body), then either
    stay silent or, with `every`, send one more byte per `every` seconds each;
    a connection the server closes is opened again. For `duration` seconds."""
    sel = selectors.DefaultSelector()
    conns = {}

    def open_one():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head)
            left = body_bytes
            chunk = b"x" * 65536
            while left > 0:
                k = min(left, len(chunk))
                s.sendall(chunk[:k])
                left -= k
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            conns[s] = time.monotonic()
        except OSError:
            pass

    for _ in range(n):
        open_one()
    end = time.monotonic() + duration
    reopened = 0
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                del conns[s]
                open_one()
                reopened += 1
        if every:
            now = time.monotonic()
            for s, last in list(conns.items()):
                if now - last >= every:
                    try:
                        s.send(byte)
                    except OSError:
                        pass
                    conns[s] = now
    for s in list(conns):
        s.close()
    return f"{n} held, {reopened} closed by the server and opened again"


def bombs(port, duration=10.0):
    data = post("/log-likelihood", "image/png", bomb(1 << 30))
    results = []

    def worker():
        end = time.monotonic() + duration
        while time.monotonic() < end:
            results.append(exchange(port, data))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted({r[0] for r in results})
    slowest = max(r[1] for r in results)
    ok = codes == [400]
    return f"{len(results)} bombs of {len(data) >> 10} KiB (1 GiB inflated), answers {codes}, slowest {slowest:.3f} s", ok


def heavy(port, duration_cap=120.0):
    img = base64.b64encode(image()).decode()
    big = json.dumps({"images": [img] * 256, "samples": 64, "seed": 1}).encode()
    light = post("/log-likelihood", "image/png", image())
    heavy_results, light_results = [], []

    def heavy_worker():
        heavy_results.append(exchange(port, post("/log-likelihood", "application/json", big), timeout=duration_cap))

    threads = [threading.Thread(target=heavy_worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    while any(t.is_alive() for t in threads):
        light_results.append(exchange(port, light))
        time.sleep(0.2)
    for t in threads:
        t.join()
    codes = sorted(r[0] for r in heavy_results)
    worst_light = max(r[1] for r in light_results) if light_results else 0.0
    light_ok = all(r[0] == 200 for r in light_results)
    ok = light_ok and all(c in (200, 503) for c in codes) and 200 in codes and worst_light < 2.0
    bad_light = sorted({r[0] for r in light_results if r[0] != 200})
    return (f"4 requests of 256 images x 64 draws: {codes}; {len(light_results)} one-image scores beside them, "
            f"slowest {worst_light:.3f} s" + (f", answers other than 200: {bad_light}" if bad_light else "")), ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--finc", default="./finc")
    ap.add_argument("--weights", default="weights/fashion-mnist.safetensors")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each timed phase")
    a = ap.parse_args()
    cmd = [a.finc, "serve", "--host", "127.0.0.1", "--port", "0", "--weights", a.weights, "--log", "off",
           "--max-connections", "512", "--head-timeout", "5"]
    srv = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    port = None
    for line in srv.stderr:
        m = re.search(r"ready on port (\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if not port:
        print("hostile: finc serve did not start")
        return 1
    threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()
    for _ in range(20):  # warm: the engine, the PNG paths, the answer buffers
        exchange(port, post("/log-likelihood", "image/png", image()))
        exchange(port, post("/sample", "application/json", b'{"n": 16}'))
    # and the engine's buffers at a full batch (--max-batch 64), which stay in use
    # once touched: the baseline is the server's working size, not its size unused
    full = json.dumps({"images": [base64.b64encode(image()).decode()] * 64}).encode()
    exchange(port, post("/log-likelihood", "application/json", full))
    exchange(port, post("/sample", "application/json", b'{"n": 64}'))
    time.sleep(1.5)
    base = rss(srv.pid)
    prober = Prober(port)
    prober.start()
    s = a.seconds
    post_head = (b"POST /log-likelihood HTTP/1.1\r\nHost: h\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 4194304\r\n\r\n")
    phases = [
        ("inflate bombs", lambda: bombs(port, s)),
        ("slow heads", lambda: (hold(port, 1500, b"GET /healthz HTTP/1.1\r\nX-A: ", every=2.0, duration=s), True)),
        ("full connection pool", lambda: (hold(port, 512, post_head, duration=s) + ", plus " +
                                          hold(port, 1000, b"", duration=1.0), True)),
        ("body memory", lambda: (hold(port, 150, post_head, body_bytes=(4 << 20) - 1, duration=3.0), True)),
        ("heavy importance-weighted", lambda: heavy(port)),
    ]
    failed = 0
    print(f"finc serve pid {srv.pid}, port {port}; resident memory at the start {base >> 20} MiB")
    print(f"{'phase':<28} {'/healthz':>10} {'worst':>8} {'RSS peak':>9} {'RSS after':>10}  result")
    for name, run in phases:
        prober.reset()
        peak = [base]
        done = threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], rss(srv.pid))
                time.sleep(0.05)

        w = threading.Thread(target=watch, daemon=True)
        w.start()
        what, ok = run()
        done.set()
        w.join()
        after = rss(srv.pid)
        for _ in range(100):
            if after <= base * 1.2:
                break
            time.sleep(0.1)
            after = rss(srv.pid)
        with prober.lock:
            worst, failures, count = prober.worst, prober.failures, prober.count
        good = ok and failures == 0 and count > 0 and after <= base * 1.2 and srv.poll() is None
        failed += not good
        print(f"{name:<28} {count - failures:>4}/{count:<5} {worst:>7.3f}s {peak[0] >> 20:>7}MiB {after >> 20:>8}MiB  "
              f"{'ok' if good else 'FAILED'}: {what}")
        sys.stdout.flush()
    prober.stop = True
    srv.terminate()
    rc = srv.wait(timeout=60)
    print(f"finc serve exited {rc} on SIGTERM")
    if rc != 0:
        failed += 1
    print("hostile: all phases passed" if not failed else f"hostile: {failed} phase(s) FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
