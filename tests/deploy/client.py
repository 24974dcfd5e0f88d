#!/usr/bin/python3
"""Closed-loop clients for tests/deploy/run.sh: WORKERS threads send a mix of
/sample (JSON and PNG) and /log-likelihood requests through the load balancer
for a bounded time and count, and check every answer against a reference
taken from one replica directly before the load: a seeded sample or a score
is the same whichever replica serves it, so any difference is a garbled or
misrouted answer. Prints one JSON summary line; exit 0 only if every request
got a 200 with the reference body.

  client.py refs URL OUT.json        write the references (from one replica)
  client.py load URL REFS.json SECONDS MAX_REQUESTS WORKERS
"""
import base64
import http.client
import json
import math
import sys
import threading
import time
import urllib.parse

SEEDS = [11, 22, 33, 44, 55, 66, 77, 88]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def requests_of(refs):
    """(name, method, path, headers, body, check) for each request kind."""
    out = []
    for seed in SEEDS:
        n = 1 + seed % 4
        body = json.dumps({"n": n, "temperature": 0.7, "seed": seed}).encode()
        out.append((f"sample-json-{seed}", "/sample", {"Content-Type": "application/json"}, body, "json"))
        body1 = json.dumps({"n": 1, "temperature": 0.7, "seed": seed}).encode()
        out.append((f"sample-png-{seed}", "/sample", {"Content-Type": "application/json", "Accept": "image/png"},
                    body1, "png"))
    if refs is not None:
        for seed in SEEDS[:4]:
            png = base64.b64decode(refs[f"sample-png-{seed}"]["body_b64"])
            out.append((f"score-{seed}", "/log-likelihood", {"Content-Type": "image/png"}, png, "score"))
    return out


def conn_for(url, timeout):
    u = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


def send(conn, path, headers, body):
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.getheader("Content-Type", ""), r.read()


def canonical(kind, ctype, data):
    """What must match the reference: the images of a sample, the PNG bytes,
    the scores (to 1e-9 relative: the same binary on the same thread count)."""
    if kind == "png":
        if not ctype.startswith("image/png") or not data.startswith(PNG_MAGIC):
            raise ValueError(f"not a PNG ({ctype})")
        return base64.b64encode(data).decode()
    doc = json.loads(data)
    if kind == "json":
        imgs = doc["images"]
        if len(imgs) != doc["n"]:
            raise ValueError(f"{len(imgs)} images for n={doc['n']}")
        for im in imgs:
            if not base64.b64decode(im["png"]).startswith(PNG_MAGIC):
                raise ValueError("an image is not a PNG")
        return [[im["index"], im["seed"], im["png"]] for im in imgs]
    res = doc["results"]
    if len(res) != 1 or not all(math.isfinite(r["bits_per_dim"]) for r in res):
        raise ValueError("bad results")
    return [[r["log_likelihood"], r["bits_per_dim"]] for r in res]


def same(kind, got, want):
    if kind != "score":
        return got == want
    return all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
               for g, w in zip(got, want) for a, b in zip(g, w)) and len(got) == len(want)


def make_refs(url, out_path):
    refs = {}
    conn = conn_for(url, 30)
    for rounds in range(2):  # PNG samples first: the scores are of those images
        for name, path, headers, body, kind in requests_of(refs if rounds else None):
            if name in refs:
                continue
            status, ctype, data = send(conn, path, headers, body)
            if status != 200:
                sys.exit(f"refs: {name}: status {status}: {data[:200]!r}")
            refs[name] = {"canonical": canonical(kind, ctype, data),
                          "body_b64": base64.b64encode(data).decode()}
    with open(out_path, "w") as f:
        json.dump(refs, f)
    print(f"refs: {len(refs)} reference answers from {url}")


def load(url, refs_path, seconds, max_requests, workers):
    with open(refs_path) as f:
        refs = json.load(f)
    reqs = requests_of(refs)
    lock = threading.Lock()
    stats = {"sent": 0, "ok": 0, "failed": 0, "by_kind": {}, "status": {}, "failures": []}
    deadline = time.monotonic() + seconds
    counter = iter(range(max_requests))

    def fail(name, why):
        with lock:
            stats["failed"] += 1
            if len(stats["failures"]) < 20:
                stats["failures"].append(f"{time.strftime('%H:%M:%S')} {name}: {why}")

    def worker(w):
        conn = conn_for(url, 30)
        while time.monotonic() < deadline:
            with lock:
                k = next(counter, None)
                if k is None:
                    break
                stats["sent"] += 1
            name, path, headers, body, kind = reqs[(k * 7 + w) % len(reqs)]
            try:
                status, ctype, data = send(conn, path, headers, body)
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = conn_for(url, 30)
                fail(name, f"transport: {e!r}")
                continue
            with lock:
                stats["status"][str(status)] = stats["status"].get(str(status), 0) + 1
            if status != 200:
                fail(name, f"status {status}: {data[:160]!r}")
                continue
            try:
                got = canonical(kind, ctype, data)
            except (ValueError, KeyError, TypeError) as e:
                fail(name, f"invalid body: {e}")
                continue
            if not same(kind, got, refs[name]["canonical"]):
                fail(name, "body differs from the reference")
                continue
            with lock:
                stats["ok"] += 1
                stats["by_kind"][kind] = stats["by_kind"].get(kind, 0) + 1
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 45)
    stats["seconds"] = round(time.monotonic() - t0, 2)
    stats["hung"] = sum(t.is_alive() for t in threads)
    print(json.dumps(stats))
    return 0 if stats["failed"] == 0 and stats["hung"] == 0 and stats["ok"] == stats["sent"] else 1


def main(argv):
    if len(argv) == 3 and argv[0] == "refs":
        make_refs(argv[1], argv[2])
        return 0
    if len(argv) == 6 and argv[0] == "load":
        return load(argv[1], argv[2], float(argv[3]), int(argv[4]), int(argv[5]))
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
