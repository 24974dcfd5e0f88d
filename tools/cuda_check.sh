#!/usr/bin/env bash
# make cuda-check: the whole GPU run, one script, under 8 minutes on an H200.
#   1. build (nvcc here) or take the unpacked bundle (build/cuda-bundle,
#      tools/cuda_bundle.sh) whose checksum matches these sources;
#   2. pre-flight: finc --version must list a device; otherwise it stops here
#      with finc's reason (no driver, a driver older than the runtime needs);
#   3. parity: tests/cuda/test_backend_ops on every shape, the paper's
#      included (CUDA against CPU, graphs, TF32 drift, batch independence,
#      graph nodes against the launches the ops intend);
#   4. compute-sanitizer memcheck, racecheck and synccheck on the op checks;
#   5. timings: bench/cuda_bench (the engine on MNIST, CIFAR-10 at K = 32 and
#      K = 8, the FInC inverse against the baseline synced and graphed);
#   6. finc serve on the GPU under load (tools/bench_server.sh, short rates).
# The report, ready for docs/benchmarks.md: build/bench/gpu_report.md; the
# logs and JSON lines beside it. Exit status: 0 when every step passed, 2 when
# nothing could run (no build, no device), 1 otherwise.
#   CUDA_CHECK_QUICK=1   fewer repetitions (a first look)
#   CUDA_CHECK_DIR=DIR   run the programs already in DIR (DIR/finc, DIR/tests/cuda/test_backend_ops,
#                        DIR/bench/cuda_bench) and build nothing: e.g. build/emu, the emulator's,
#                        with CUDA_CHECK_ARGS=--small FINC_BENCH_SMALL=1, checks this script's own
#                        steps and report where no GPU is
#   CUDA_CHECK_ARGS      more arguments for test_backend_ops (--small, --only NAME,...)
#   FINC_CUDA_DEVICE     which GPU (default 0)
#   SKIP_SERVER=1        leave out step 6
#   CUDA_CHECK_BUDGET    seconds the steps after the build may take in all (450); each
#                        step's timeout is its own cap or what is left, whichever is less
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/bench
mkdir -p "$out"
report=$out/gpu_report.md
t_start=$(date +%s)
failed=0
step() { echo; echo "== $* ($(($(date +%s) - t_start)) s)"; }
# Each step's time limit: its own cap, or what is left of the 7.5 minutes the whole run may take.
BUDGET=${CUDA_CHECK_BUDGET:-450}
limit() {  # CAP
    local left=$((BUDGET - ($(date +%s) - t_start)))
    [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"
}
note() { echo "$*" | tee -a "$report.body"; }
rm -f "$report.body"

step "1. build"
bundle=build/cuda-bundle
if [ -n "${CUDA_CHECK_DIR:-}" ]; then
    echo "prebuilt: $CUDA_CHECK_DIR (CUDA_CHECK_DIR)"
    dir=$CUDA_CHECK_DIR
elif [ -f "$bundle/SOURCES.sha256" ] && env=$(bash tools/cuda_bundle.sh env "$bundle"); then
    echo "prebuilt: $bundle"
    eval "$env"
    dir=$bundle
else
    nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
    [ -n "$nvcc_path" ] || { echo "cuda-check: no nvcc (PATH, /usr/local/cuda/bin) and no $bundle" >&2; exit 2; }
    "$nvcc_path" --version | tail -n 2
    if ! make -s -j"$(nproc)" CUDA=1 build/tests/cuda/test_backend_ops build/bench/cuda_bench; then
        echo "cuda-check: the build failed (above)" >&2
        exit 2
    fi
    # The server and load generator need the server's libraries; without them step 6 is left out.
    make -s -j"$(nproc)" CUDA=1 build/finc build/loadgen build/bench/bench_engine 2>"$out/server_build.log" ||
        echo "cuda-check: finc serve could not be built here ($out/server_build.log): step 6 is left out"
    dir=build
fi
finc=$dir/finc

step "2. pre-flight"
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total,utilization.gpu --format=csv
if [ -x "$finc" ]; then
    version=$("$finc" --version)
    echo "$version"
    if ! grep -q '^cuda: device' <<<"$version"; then
        echo "cuda-check: stopped before any check: $(grep '^cuda:' <<<"$version")" >&2
        exit 2
    fi
fi
# Without finc built here, test_backend_ops (step 3) asks the runtime itself and
# stops with the same words.
{
    echo "### GPU run (make cuda-check, $(date -u +%Y-%m-%d))"
    echo
    [ -n "${version:-}" ] && echo "$version" | sed 's/^/    /' && echo
} >"$report"

step "3. parity: test_backend_ops"
quick=${CUDA_CHECK_QUICK:+--quick}
# shellcheck disable=SC2086
timeout "$(limit 100)" "$dir/tests/cuda/test_backend_ops" $quick ${CUDA_CHECK_ARGS:-} --json "$out/test_backend_ops.jsonl" | tee "$out/test_backend_ops.txt"
rc=${PIPESTATUS[0]}
[ "$rc" = 2 ] && { echo "cuda-check: no usable device (above)" >&2; exit 2; }
summary=$(grep 'checks passed' "$out/test_backend_ops.txt" || echo "did not finish (exit $rc)")
note "- parity (tests/cuda/test_backend_ops, every shape): $summary"
grep -E 'FAIL' "$out/test_backend_ops.txt" | sed 's/^ */  - /' | tee -a "$report.body"
grep -E 'TF32 log p|alone == inside|graph nodes|warm-up captures' "$out/test_backend_ops.txt" | sed 's/^ *ok  */  - /' \
    >>"$report.body"
if [ "$rc" != 0 ]; then
    failed=1
    echo "== op checks again, synchronised after every op, no graphs (an asynchronous fault then names its op)"
    FINC_CUDA_SYNC=1 FINC_CUDA_GRAPHS=0 timeout "$(limit 40)" "$dir/tests/cuda/test_backend_ops" --small --ops-only 2>&1 |
        grep -E 'FAIL|checks passed|CUDA' | tee -a "$out/test_backend_ops.txt"
fi

step "4. compute-sanitizer on the op checks"
if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck synccheck; do
        log=$out/sanitizer_$tool.txt
        # The op checks of three shapes (k = 3 and 5, one and three levels, both FInC kernels).
        timeout "$(limit 40)" compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
            "$dir/tests/cuda/test_backend_ops" --ops-only --only tiny,k5-4x8,L3-noactnorm >"$log" 2>&1
        src=$?
        errs=$(grep -m1 -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" || echo "no summary (exit $src)")
        note "- compute-sanitizer $tool: exit $src, $errs"
        [ "$src" = 0 ] || failed=1
    done
else
    note "- compute-sanitizer: not installed on this host: not run"
    failed=1
fi

step "5. timings: cuda_bench"
timeout "$(limit 150)" "$dir/bench/cuda_bench" $quick --json "$out/cuda_bench.jsonl" | tee "$out/cuda_bench.txt"
brc=${PIPESTATUS[0]}
[ "$brc" = 0 ] || failed=1
sed -n '/^---- paste into/,/^---- end/p' "$out/cuda_bench.txt" | sed '1d;$d' >"$out/cuda_bench.md"

step "6. finc serve on the GPU under load"
if [ "${SKIP_SERVER:-0}" = 1 ] || [ ! -x "$finc" ] || [ ! -x "$dir/loadgen" ]; then
    note "- finc serve under load: left out (SKIP_SERVER=1, or no finc and loadgen built)"
else
    BUILD=$dir BACKEND=cuda DURATION=3 WARMUP=1 timeout "$(limit 70)" bash tools/bench_server.sh >"$out/server.md" \
        2>"$out/server.log"
    src=$?
    note "- finc serve under load (tools/bench_server.sh, 3 s per rate): exit $src"
    [ "$src" = 0 ] || failed=1
fi

{
    echo "Took $(($(date +%s) - t_start)) s. Checks:"
    echo
    cat "$report.body"
    echo
    cat "$out/cuda_bench.md"
    [ -s "$out/server.md" ] && { echo; echo "#### finc serve on the GPU"; echo; cat "$out/server.md"; }
} >>"$report"
rm -f "$report.body"
echo
echo "cuda-check: $([ $failed = 0 ] && echo passed || echo FAILED) in $(($(date +%s) - t_start)) s; report: $report"
exit $failed
