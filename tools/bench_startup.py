#!/usr/bin/python3
"""Start-up cost of the finc command line: wall time and peak resident memory of whole
processes, the figures a script or a health probe pays on every call.

    tools/bench_startup.py LABEL=FINC [LABEL=FINC ...] --model NAME=WEIGHTS [...] [--runs 7]

For each binary and model: `finc --version`, `finc info W`, `finc sample W -n 1` and
`finc score W` on one image, each run --runs times; the median wall time and the largest
peak RSS (getrusage of the child) are printed as JSON lines, {"bench": "startup", ...}.
Wall time counts everything the user waits for: the dynamic linker, libraries'
initialisers, loading the weights, the work and exit.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def measure(argv, runs):
    walls, rss = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        walls.append(time.perf_counter() - t0)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit("bench_startup: %s failed (%d): %s" % (" ".join(argv), p.returncode, err[-500:]))
        rss = max(rss, usage.ru_maxrss * 1024)
    return statistics.median(walls), rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="+", help="LABEL=path of a finc binary (split at the last =)")
    ap.add_argument("--model", action="append", required=True, help="NAME=weights file")
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="finc-startup-")
    for spec in a.binaries:
        label, finc = spec.rsplit("=", 1)
        wall, rss = measure([finc, "--version"], a.runs)
        print(json.dumps({"bench": "startup", "build": label, "model": "-", "command": "finc --version",
                          "wall_ms": round(wall * 1e3, 1), "peak_rss_mb": round(rss / 1e6, 1)}))
        for mspec in a.model:
            name, weights = mspec.split("=", 1)
            one = os.path.join(tmp, name + ".png")
            subprocess.run([finc, "sample", weights, "-n", "1", "--seed", "1", "-o", one], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for cmd, argv in (("finc info", [finc, "info", weights]),
                              ("finc sample -n 1", [finc, "sample", weights, "-n", "1", "--seed", "2", "-o",
                                                    os.path.join(tmp, "s.png")]),
                              ("finc score (1 image)", [finc, "score", weights, one])):
                wall, rss = measure(argv, a.runs)
                print(json.dumps({"bench": "startup", "build": label, "model": name, "command": cmd,
                                  "wall_ms": round(wall * 1e3, 1), "peak_rss_mb": round(rss / 1e6, 1),
                                  "weights_mb": round(os.path.getsize(weights) / 1e6, 1)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
