#!/usr/bin/env bash
# Server benchmark (make bench-server): starts `finc serve` on a weights file,
# drives /log-likelihood and /sample with the open-loop load generator
# (build/loadgen) at several fixed rates, measures closed-loop peak with wrk
# when it is installed, and compares the peak with the engine's offline batch
# throughput (build/bench/bench_engine, same weights, same run). Prints
# markdown for docs/benchmarks.md.
#
#   tools/bench_server.sh [WEIGHTS]
#   env: BACKEND (cpu, cuda or auto; cpu), BUILD (build; a CUDA bundle's
#        directory, build/cuda-bundle, runs its programs: tools/cuda_bundle.sh),
#        PORT (18181), DURATION (10 s per rate), WARMUP (2), MAX_BATCH (64),
#        MAX_DELAY_MS (2), THREADS (engine threads, 0 = all), SCORE_RATES and
#        SAMPLE_RATES (comma lists; default: fractions of the offline rate),
#        WRK_CONNS (32), SAMPLE_N (images per /sample request, 1),
#        QUEUE_SIZE (server --queue-size, 256: four full batches, about a
#        quarter second of work here; past the peak the excess gets fast 503s
#        and the rest waits at most that long. 1024 sustains the same goodput
#        with a p99 of a second),
#        MAX_OUTSTANDING (loadgen's in-flight cap, 2048), GOMP_SPINCOUNT
#        (10000 unless set, the count finc sets for itself (cli/omp_env.c), so the
#        offline bench_engine figure runs as the server does: with libgomp's
#        default spinning, workers collapse to a few percent of their speed
#        when the load generator or anything else wants a core)
#
# The server's --max-connections is set above loadgen's in-flight cap: past
# the limit libmicrohttpd stops accepting, so the extra connections sit in the
# kernel's accept backlog and their requests hang until loadgen's 30 s client
# timeout, which collapses goodput past the peak (a stall, not a 503).
set -euo pipefail
cd "$(dirname "$0")/.."

WEIGHTS=${1:-${WEIGHTS:-weights/fashion-mnist.safetensors}}
PORT=${PORT:-18181}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
MAX_BATCH=${MAX_BATCH:-64}
MAX_DELAY_MS=${MAX_DELAY_MS:-2}
THREADS=${THREADS:-0}
WRK_CONNS=${WRK_CONNS:-32}
SAMPLE_N=${SAMPLE_N:-1}
QUEUE_SIZE=${QUEUE_SIZE:-256}
MAX_OUTSTANDING=${MAX_OUTSTANDING:-2048}
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}
BACKEND=${BACKEND:-cpu}
BUILD=${BUILD:-build}
URL="http://127.0.0.1:$PORT"
FINC=./finc
if [ -f "$BUILD/SOURCES.sha256" ]; then  # a CUDA bundle: its programs and libraries
    env=$(bash tools/cuda_bundle.sh env "$BUILD") || exit 1
    eval "$env"
    FINC=$BUILD/finc
fi

[ -f "$WEIGHTS" ] || { echo "bench_server: no weights file $WEIGHTS" >&2; exit 1; }
[ -x "$FINC" ] && [ -x "$BUILD/loadgen" ] || { echo "bench_server: run 'make bench-server' (builds ./finc and $BUILD/loadgen)" >&2; exit 1; }
# GET a URL's body (curl, or python3 where a GPU host has no curl).
http_get() {
    if command -v curl >/dev/null; then
        curl -sf "$1"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
    fi
}

tmp=$(mktemp -d)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

"$FINC" sample "$WEIGHTS" -n 1 --seed 1 -o "$tmp/img.png" >/dev/null

echo "## finc serve benchmark"
echo
echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- weights: $WEIGHTS; backend $BACKEND; max batch $MAX_BATCH, queue delay ${MAX_DELAY_MS} ms, queue $QUEUE_SIZE images (passes), engine threads $THREADS"
echo "- open loop: $DURATION s per rate after ${WARMUP} s warm-up; latency from each request's intended send time"
echo

# The engine alone, batch 64, same weights: the ceiling the server is measured
# against. Measured before and after the server runs; the higher of each pair
# is the ceiling, so a slow moment of this shared machine cannot flatter the ratio.
offline() {
    local targs=(--backend "$BACKEND") line
    [ "$THREADS" != 0 ] && targs+=(--threads "$THREADS")
    line=$("$BUILD/bench/bench_engine" "${targs[@]}" "$WEIGHTS" 2>/dev/null | grep '"batch": 64' | tail -n 1 || true)
    echo "$(sed -nE 's/.*"encode_img_s": ([0-9.]+).*/\1/p' <<<"$line") $(sed -nE 's/.*"sample_img_s": ([0-9.]+).*/\1/p' <<<"$line")"
}
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "") print b; else if (b == "" || a + 0 >= b + 0) print a; else print b }'; }
offline_score= offline_sample=
if [ -x "$BUILD/bench/bench_engine" ] || make --no-print-directory "$BUILD/bench/bench_engine" >/dev/null 2>&1; then
    read -r offline_score offline_sample <<<"$(offline)"
fi
[ -n "$offline_score" ] && echo "- engine offline, batch 64, before the server runs: score $offline_score images/s, sample $offline_sample images/s" && echo

rates_from() {  # fractions of an offline rate, or a fallback list
    local base=$1 fallback=$2
    if [ -n "$base" ]; then
        awk -v b="$base" 'BEGIN { n = split("0.25 0.5 0.75 0.85 0.9 0.95 1.0 1.1", f, " ");
            for (i = 1; i <= n; i++) { r = b * f[i]; if (r < 1) r = 1; printf "%s%.0f", (i > 1 ? "," : ""), r } }'
    else
        echo "$fallback"
    fi
}
SCORE_RATES=${SCORE_RATES:-$(rates_from "$offline_score" 25,50,100,200)}
SAMPLE_RATES=${SAMPLE_RATES:-$(rates_from "$offline_sample" 5,10,20,40)}

"$FINC" serve --backend "$BACKEND" --weights "$WEIGHTS" --host 127.0.0.1 --port "$PORT" --log off --max-batch "$MAX_BATCH" \
    --max-delay-ms "$MAX_DELAY_MS" --threads "$THREADS" --queue-size "$QUEUE_SIZE" --max-samples 1 --timeout-ms 60000 \
    --max-connections $((2 * MAX_OUTSTANDING + 2 * WRK_CONNS + 64)) \
    2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 1 600); do
    http_get "$URL/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; exit 1; }
    sleep 0.1
done

echo "### Open loop"
echo
"$BUILD/loadgen" --url "$URL" --endpoint score --png "$tmp/img.png" --rates "$SCORE_RATES" \
    --duration "$DURATION" --warmup "$WARMUP" --max-outstanding "$MAX_OUTSTANDING" --json >"$tmp/score.jsonl"
"$BUILD/loadgen" --url "$URL" --endpoint sample --n "$SAMPLE_N" --rates "$SAMPLE_RATES" \
    --duration "$DURATION" --warmup "$WARMUP" --max-outstanding "$MAX_OUTSTANDING" --json >"$tmp/sample.jsonl"
echo "| endpoint | offered req/s | achieved req/s | images/s | p50 ms | p90 ms | p99 ms | non-200 | mean batch |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
cat "$tmp/score.jsonl" "$tmp/sample.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = {k: float("nan") if v is None else v for k, v in json.loads(line).items()}
    print("| {endpoint} | {offered_rps:.0f} | {achieved_rps:.1f} | {images_per_s:.1f} | {p50_ms:.1f} | {p90_ms:.1f} | "
          "{p99_ms:.1f} | {non200} | {mean_batch:.1f} |".format(**r))
'
echo

# Peak goodput: the most images/s answered 200 at any offered rate (past the
# peak the excess gets fast 503s, so this is what the server sustains), with
# the offered rate, p99 and the share of requests refused there; and the
# highest rate served with no errors at all.
peak_of() { python3 -c '
import json, sys
rows = [{k: float("nan") if v is None else v for k, v in json.loads(l).items()} for l in open(sys.argv[1])]
best = max(rows, key=lambda r: r["images_per_s"])
clean = max((r["images_per_s"] for r in rows if r["non200"] == 0), default=0.0)
refused = best["non200"] / max(best["sent"], 1)
print("%.1f %.0f %.0f %.0f %.1f" % (best["images_per_s"], best["offered_rps"], best["p99_ms"], 100 * refused, clean))' "$1"; }
read -r peak_score at_score p99_score refused_score clean_score <<<"$(peak_of "$tmp/score.jsonl")"
read -r peak_sample at_sample p99_sample refused_sample clean_sample <<<"$(peak_of "$tmp/sample.jsonl")"

if command -v wrk >/dev/null 2>&1; then
    echo "### Closed loop (wrk, $WRK_CONNS connections, ${DURATION} s)"
    echo
    cat >"$tmp/score.lua" <<EOF
local f = io.open("$tmp/img.png", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/png"
EOF
    cat >"$tmp/sample.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"n": $SAMPLE_N}'
wrk.headers["Content-Type"] = "application/json"
EOF
    echo "| endpoint | requests/s | p50 ms | p90 ms | p99 ms | non-2xx |"
    echo "|---|---:|---:|---:|---:|---:|"
    for ep in score sample; do
        path=/log-likelihood
        [ $ep = sample ] && path=/sample
        out=$(wrk -t2 -c"$WRK_CONNS" -d"${DURATION}s" --latency --timeout 60s -s "$tmp/$ep.lua" "$URL$path" 2>&1)
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        pcts=$(awk '$1 == "50%" || $1 == "90%" || $1 == "99%" {v = $2; if (v ~ /ms$/) v = v + 0; else if (v ~ /us$/) v = v / 1000;
                    else if (v ~ /s$/) v = v * 1000; printf "%.1f ", v}' <<<"$out")
        non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        read -r p50 p90 p99 <<<"$pcts"
        echo "| $ep | $rps | $p50 | $p90 | $p99 | ${non2xx:-0} |"
    done
    echo
else
    echo "(wrk not installed: apt-get install -y wrk for the closed-loop figures)"
    echo
fi

batch_totals=$(http_get "$URL/metrics" | grep -E '^finc_batch_size_(sum|count)' | tr '\n' ' ')
kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
server_pid=
if [ -n "$offline_score" ]; then
    read -r after_score after_sample <<<"$(offline)"
    echo "- engine offline, batch 64, after the server ran: score $after_score images/s, sample $after_sample images/s"
    echo
    offline_score=$(max_of "$offline_score" "$after_score")
    offline_sample=$(max_of "$offline_sample" "$after_sample")
fi

echo "### Peak against the engine alone"
echo
echo "| endpoint | peak goodput images/s | at offered req/s | p99 ms there | refused there | highest images/s with no errors | engine offline images/s | peak / offline |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
ratio() { [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f%%", 100 * a / b }' || echo "n/a"; }
echo "| score | $peak_score | $at_score | $p99_score | $refused_score% | $clean_score | ${offline_score:-n/a} | $(ratio "$peak_score" "$offline_score") |"
echo "| sample | $peak_sample | $at_sample | $p99_sample | $refused_sample% | $clean_sample | ${offline_sample:-n/a} | $(ratio "$peak_sample" "$offline_sample") |"
echo
echo "Batch sizes: $batch_totals"
