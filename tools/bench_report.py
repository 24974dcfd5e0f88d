#!/usr/bin/python3
"""Turns the JSON lines of tools/bench.sh into the markdown tables of docs/benchmarks.md."""
import json
import sys

# The public FInC Flow code on this machine's CPU, 2 threads, MNIST shape (F=512):
# figures given with the benchmark's brief, not re-measured here.
PUBLIC = {"encode_b1_ms": 58.0, "sample_b1_ms": 69.0, "encode_b64_img_s": 30.0}


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    machine = next(r for r in rows if r["bench"] == "machine")
    sgemm = next(r for r in rows if r["bench"] == "sgemm")
    print(f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, "
          f"load average before the run {machine['loadavg']}, {machine['date']}. "
          f"Measured sgemm (oneDNN, 512x25088x512): {sgemm['gflops']:.0f} GFLOP/s.\n")
    print("| model | batch | finc encode | PyTorch encode | ratio | finc sample | PyTorch sample | ratio "
          "| finc sample / encode | finc GFLOP/s (encode) | of sgemm |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["bench"] != "engine":
            continue
        name = r["model"].split("/")[-1].replace(".safetensors", "")
        t = next(x for x in rows if x["bench"] == "torch" and x["model"] == r["model"])
        b = r["batch"]
        te, ts = t[f"encode_b{b}_ms"], t[f"sample_b{b}_ms"]
        print(f"| {name} ({r['params'] / 1e6:.2f}M) | {b} "
              f"| {r['encode_ms']:.2f} ms, {r['encode_img_s']:.0f} img/s "
              f"| {te:.2f} ms, {t[f'encode_b{b}_img_s']:.0f} img/s | {te / r['encode_ms']:.2f}x "
              f"| {r['sample_ms']:.2f} ms, {r['sample_img_s']:.0f} img/s "
              f"| {ts:.2f} ms, {t[f'sample_b{b}_img_s']:.0f} img/s | {ts / r['sample_ms']:.2f}x "
              f"| {r['sample_over_encode']:.2f} | {r['encode_gflops']:.0f} "
              f"| {r['encode_gflops'] / sgemm['gflops']:.0%} |")
    f512 = [r for r in rows if r["bench"] == "engine" and "f512" in r["model"]]
    if f512:
        b1 = next(r for r in f512 if r["batch"] == 1)
        b64 = next(r for r in f512 if r["batch"] == 64)
        print("\nAgainst the public FInC Flow code's figures on this machine (MNIST shape, F=512, 2 threads):\n")
        print("| figure | public code | finc | ratio | aim |")
        print("|---|---|---|---|---|")
        print(f"| encode, batch 64 | {PUBLIC['encode_b64_img_s']:.0f} img/s | {b64['encode_img_s']:.0f} img/s "
              f"| {b64['encode_img_s'] / PUBLIC['encode_b64_img_s']:.1f}x | >= 1.5x |")
        print(f"| encode, batch 1 | {PUBLIC['encode_b1_ms']:.0f} ms | {b1['encode_ms']:.1f} ms "
              f"| {PUBLIC['encode_b1_ms'] / b1['encode_ms']:.1f}x | |")
        print(f"| sample, batch 1 | {PUBLIC['sample_b1_ms']:.0f} ms | {b1['sample_ms']:.1f} ms "
              f"| {PUBLIC['sample_b1_ms'] / b1['sample_ms']:.1f}x | >= 2x |")
        print(f"| sample / encode time, batch 1 and 64 | | {b1['sample_over_encode']:.2f}, "
              f"{b64['sample_over_encode']:.2f} | | <= 1.2 |")
    print("\nFInC inverse of one unit (12 channels, batch 1): anti-diagonal wavefront and whole "
          "(quarter, image) pairs per thread, against a raster-order solve of the same unit:\n")
    print("| size | k | forward | wavefront | per pair | raster | raster / wavefront | raster / per pair |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["bench"] == "finc_inverse":
            print(f"| {r['size']}x{r['size']} | {r['k']} | {r['forward_ms']:.3f} ms | {r['wavefront_ms']:.3f} ms "
                  f"| {r['units_ms']:.3f} ms | {r['raster_ms']:.3f} ms | {r['raster_over_wavefront']:.2f}x "
                  f"| {r['raster_over_units']:.2f}x |")
    anomaly = [r for r in rows if r["bench"] == "anomaly"]
    if anomaly:
        print("\nScoring the shipped model with the anomaly fields (finc_score_anomaly) against the plain midpoint "
              "score (finc_encode), alternating runs, median of 21:\n")
        print("| batch | score | score + anomaly | throughput with / without (aim >= 0.95) |")
        print("|---|---|---|---|")
        for r in anomaly:
            print(f"| {r['batch']} | {r['score_ms']:.2f} ms | {r['score_anomaly_ms']:.2f} ms "
                  f"| {r['throughput_ratio']:.3f} |")

    startup = [r for r in rows if r["bench"] == "startup"]
    if startup:
        print("\nStart-up (tools/bench_startup.py): whole processes, median wall time and largest peak RSS of "
              "7 runs; \"cuda build\" is the default build where nvcc exists, run here without a GPU:\n")
        print("| build | model | command | wall | peak RSS |")
        print("|---|---|---|---|---|")
        for r in startup:
            print(f"| {r['build']} | {r['model']} | `{r['command']}` | {r['wall_ms']:.0f} ms | {r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main(sys.argv[1])
