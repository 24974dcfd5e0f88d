#!/usr/bin/env bash
# finc serve on the CUDA backend, its device code run on the CPU by the
# emulated runtime (build/emu/finc, built by kernels/emu/check.sh):
#  - scores and samples answer 200 and the scores equal the CPU engine's;
#  - a file that is no module: finc --version says it does not load;
#  - a driver older than the runtime: finc --version and --backend auto name
#    it and the driver the runtime needs;
#  - the graphs are captured before ready; a capture that fails (injected) is
#    logged, counted in /metrics, and /v1/models says graphs are not in use;
#  - a batch whose device work fails with a non-sticky error (a fault injected
#    by the emulator through EMU_FAULT_FILE) fails only its own requests: each
#    gets a 500 with a JSON message naming the CUDA error, the request queued
#    behind that batch answers 200, and the server stays ready and counts the
#    failed images;
#  - two such failed batches in a row (--unhealthy-after 2) turn /healthz and
#    /readyz to 503 with the error, and the next good batch turns them back;
#  - a sticky error (an illegal address) turns /healthz and /readyz to 503
#    "dead" at once, the log says why, and every later request fails.
# Prints one line per check and exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-build/emu/finc}
WEIGHTS=tests/vectors/l2_1x8x12.safetensors
[ -x "$BIN" ] || { echo "serve_check: no $BIN (kernels/emu/check.sh builds it)" >&2; exit 2; }

tmp=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
failed=0
verdict() {  # DESCRIPTION STATUS
    if [ "$2" = 0 ]; then echo "ok   $1"; else echo "FAIL $1"; failed=1; fi
}

verdict "finc --version lists the device: $("$BIN" --version | tail -n 1 | cut -c1-60)" \
    "$("$BIN" --version | grep -q '^cuda: device 0: EMU' && echo 0 || echo 1)"

# A file that is no module: its loader's message (the real build, with no
# driver installed, says so before it tries the module).
echo junk > "$tmp/junk.so"
verdict "a module that does not load says so" \
    "$(FINC_CUDA_MODULE=$tmp/junk.so "$BIN" --version | grep -q 'cuda: not available: the CUDA module .* does not load' && echo 0 || echo 1)"

old=$(EMU_DRIVER_VERSION=12080 "$BIN" --version | tail -n 1)
verdict "a driver older than the runtime: $old" \
    "$(echo "$old" | grep -q 'supports CUDA 12.8, older than .*CUDA 13.0 runtime, which needs driver R580' && echo 0 || echo 1)"
EMU_DRIVER_VERSION=12080 "$BIN" sample "$WEIGHTS" --backend auto -n 1 -o "$tmp/auto.png" >/dev/null 2>"$tmp/auto.err" || true
verdict "--backend auto falls back saying why: $(head -c 150 "$tmp/auto.err")" \
    "$(grep -q 'backend auto: the CPU (.*needs driver R580' "$tmp/auto.err" && echo 0 || echo 1)"

for i in 0 1 2; do "$BIN" sample "$WEIGHTS" --backend cpu -n 1 --seed $((i + 7)) -o "$tmp/img$i.png" >/dev/null; done

# Batches of two, formed at once when full; a lone request waits a second for company.
# The first graph capture of the warm-up fails.
echo "1 capture" >"$tmp/fault"
EMU_FAULT_FILE=$tmp/fault "$BIN" serve --weights "$WEIGHTS" --backend cuda --host 127.0.0.1 --port 0 \
    --max-batch 2 --max-delay-ms 1000 --threads 1 --http-threads 4 --unhealthy-after 2 --log off >"$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q 'ready on port' "$tmp/server.log" && break; sleep 0.1; done
port=$(sed -nE 's/.*ready on port ([0-9]+).*/\1/p' "$tmp/server.log")
[ -n "$port" ] || { cat "$tmp/server.log" >&2; echo "serve_check: the server did not become ready" >&2; exit 1; }
url=http://127.0.0.1:$port
verdict "the start-up line names the backend: $(grep -o 'ready on port.*' "$tmp/server.log")" \
    "$(grep -q 'ready on port [0-9]*, cuda backend' "$tmp/server.log" && echo 0 || echo 1)"

metric() { curl -s "$url/metrics" | sed -nE "s/^$1 ([0-9.e+]+)\$/\1/p"; }
verdict "the warm-up's failed capture is logged: $(grep -o 'CUDA graph capture.*failed ([A-Za-z]*)' "$tmp/server.log" | head -n 1)" \
    "$(grep -q 'CUDA graph capture of a chain .* failed' "$tmp/server.log" && echo 0 || echo 1)"
verdict "the warm-up is logged: $(grep -o 'cuda graphs warmed up.*' "$tmp/server.log" | head -n 1)" \
    "$(grep -q 'cuda graphs warmed up: 2 batch sizes up to 2' "$tmp/server.log" && echo 0 || echo 1)"
fails=$(metric finc_cuda_graph_capture_failures_total)
models=$(curl -s "$url/v1/models")
inuse=$(echo "$models" | grep -o '"cuda_graphs": *[a-z]*')
verdict "/metrics counts it (finc_cuda_graph_capture_failures_total ${fails:-none}), /v1/models says $inuse, $(echo "$models" | grep -o '"precision": *"[a-z0-9]*"')" \
    "$([ "${fails:-0}" = 1 ] && echo "$inuse" | grep -q false && echo "$models" | grep -q '"precision": *"fp32"' && echo 0 || echo 1)"

score() {  # IMAGE OUT: status code to stdout, body to OUT
    curl -s -o "$2" -w '%{http_code}' -H 'Content-Type: image/png' --data-binary "@$1" "$url/log-likelihood"
}
scores() {  # K: K concurrent requests; their statuses sorted, on one line
    local clients=() i
    for ((i = 0; i < $1; i++)); do
        score "$tmp/img$((i % 3)).png" "$tmp/f$i.json" >"$tmp/f$i.code" &
        clients+=($!)
    done
    wait "${clients[@]}"
    for ((i = 0; i < $1; i++)); do cat "$tmp/f$i.code"; echo; done | sort | tr '\n' ' '
}
probe() { curl -s -o "$tmp/probe.json" -w '%{http_code}' "$url/$1"; }
bpd() { sed -nE 's/.*"bits_per_dim": *([-0-9.eE+]+).*/\1/p' "$1" | head -n 1; }

st=$(score "$tmp/img0.png" "$tmp/a.json")
cpu=$("$BIN" score "$WEIGHTS" --backend cpu --json "$tmp/img0.png" >"$tmp/cpu.json" && bpd "$tmp/cpu.json")
close=$(awk -v a="$(bpd "$tmp/a.json")" -v b="$cpu" 'BEGIN { d = a - b; if (d < 0) d = -d; print (a != "" && d <= 1e-4 * (b < 0 ? -b : b) + 1e-6) ? 0 : 1 }')
verdict "score on the CUDA backend: 200, $(bpd "$tmp/a.json") bits/dim against the CPU engine's $cpu" \
    "$([ "$st" = 200 ] && [ "$close" = 0 ] && echo 0 || echo 1)"
st=$(curl -s -o "$tmp/s.json" -w '%{http_code}' -H 'Content-Type: application/json' -d '{"n": 3, "seed": 5}' "$url/sample")
verdict "sample of 3 on the CUDA backend (two batches): 200" "$([ "$st" = 200 ] && grep -q '"images"' "$tmp/s.json" && echo 0 || echo 1)"

# One fault: the first batch of two fails, the third request runs in the next batch.
echo 1 >"$tmp/fault"
codes=$(scores 3)
verdict "three requests, the first batch of two faulted: statuses $codes(want 200 500 500)" \
    "$([ "$codes" = "200 500 500 " ] && echo 0 || echo 1)"
ok=1
for i in 0 1 2; do
    if [ "$(cat "$tmp/f$i.code")" = 500 ]; then
        grep -q '"error"' "$tmp/f$i.json" && grep -q 'cudaErrorLaunchOutOfResources' "$tmp/f$i.json" || ok=0
    fi
done
verdict "each failed request has a JSON error naming the CUDA error ($(grep -h -o '"error": *"[^"]*"' "$tmp"/f?.json | head -n 1))" \
    "$([ $ok = 1 ] && echo 0 || echo 1)"

st=$(score "$tmp/img1.png" "$tmp/after.json")
ready=$(probe readyz)
verdict "after the fault: score 200 ($st), readyz 200 ($ready)" "$([ "$st" = 200 ] && [ "$ready" = 200 ] && echo 0 || echo 1)"
dropped=$(curl -s "$url/metrics" | sed -nE 's/^finc_images_dropped_total\{kind="score",reason="failed"\} ([0-9.e+]+)$/\1/p')
verdict "metrics count the two failed images (finc_images_dropped_total reason=failed: ${dropped:-none})" \
    "$([ "${dropped:-0}" = 2 ] && echo 0 || echo 1)"

# Two faults in a row: the engine counts as failing until a batch succeeds.
echo 2 >"$tmp/fault"
codes=$(scores 4)
health=$(probe healthz)
ready=$(probe readyz)
verdict "four requests, both batches faulted: statuses $codes; then healthz $health, readyz $ready (want 503, 503: $(grep -o '"error": *"[^"]*"' "$tmp/probe.json" | cut -c1-80))" \
    "$([ "$codes" = "500 500 500 500 " ] && [ "$health" = 503 ] && [ "$ready" = 503 ] && grep -q '"status": *"failing"' "$tmp/probe.json" && echo 0 || echo 1)"
st=$(score "$tmp/img2.png" "$tmp/after.json")
health=$(probe healthz)
ready=$(probe readyz)
verdict "then a good batch: score $st, healthz $health, readyz $ready (want 200 each)" \
    "$([ "$st" = 200 ] && [ "$health" = 200 ] && [ "$ready" = 200 ] && echo 0 || echo 1)"

# A sticky error: dead at once, whatever --unhealthy-after says.
echo "1 sticky" >"$tmp/fault"
st=$(score "$tmp/img0.png" "$tmp/sticky.json")
health=$(probe healthz)
ready=$(probe readyz)
verdict "a sticky error: score $st, then healthz $health, readyz $ready at once (want 500, 503, 503; $(grep -o '"error": *"[^"]*"' "$tmp/probe.json" | cut -c1-110))" \
    "$([ "$st" = 500 ] && [ "$health" = 503 ] && [ "$ready" = 503 ] && grep -q '"status": *"dead"' "$tmp/probe.json" && grep -q 'cudaErrorIllegalAddress' "$tmp/probe.json" && echo 0 || echo 1)"
verdict "the log says why: $(grep -o 'finc: the engine.s device is in an unrecoverable.*' "$tmp/server.log" | cut -c1-120)" \
    "$(grep -q 'unrecoverable error state: .*cudaErrorIllegalAddress' "$tmp/server.log" && echo 0 || echo 1)"
st=$(score "$tmp/img1.png" "$tmp/after.json")
verdict "every later request fails ($st: $(grep -o '"error": *"[^"]*"' "$tmp/after.json" | cut -c1-90)), and /metrics says finc_engine_dead $(metric finc_engine_dead)" \
    "$([ "$st" = 500 ] && grep -q 'dead' "$tmp/after.json" && [ "$(metric finc_engine_dead)" = 1 ] && echo 0 || echo 1)"

kill -TERM "$pid"
wait "$pid"
st=$?
pid=
verdict "SIGTERM: exit status $st" "$st"
exit $failed
