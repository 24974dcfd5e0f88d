#!/usr/bin/env bash
# make cuda-check: build the engine with CUDA and run bench/cuda_check.c on the
# GPU: every op and the engines against the CPU engine, then the timings
# (about a minute on an H200). The report, ready for docs/benchmarks.md, goes
# to stdout and build/bench/cuda_check.md; JSON lines to build/bench/cuda_check.jsonl.
#   CUDA_CHECK_ARGS  extra arguments, e.g. --quick or --no-cpu-time
#   FINC_CUDA_DEVICE which GPU (default 0)
# Where build/cuda-bundle holds an unpacked bundle of these sources
# (tools/cuda_bundle.sh: for a GPU host without the build dependencies), its
# prebuilt cuda_check runs and nothing is built; a stale one is said and passed over.
# On a failure the op tests run again with FINC_CUDA_SYNC=1 (a sync after every
# op, so an asynchronous fault names its op) and without CUDA graphs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=build/bench
bin=build/bench/cuda_check
mkdir -p "$out"

nvcc_path=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
bundle=build/cuda-bundle
if [ -f "$bundle/SOURCES.sha256" ] && env=$(bash tools/cuda_bundle.sh env "$bundle"); then
    echo "== prebuilt: $bundle"
    eval "$env"
    bin=$bundle/bench/cuda_check
elif [ -n "$nvcc_path" ]; then
    echo "== build (nvcc: $nvcc_path)"
    "$nvcc_path" --version | tail -n 2
    # Only the check program and the library: the server's libraries need not be here.
    if ! make -s -j"$(nproc)" CUDA=1 "$bin"; then
        echo "cuda-check: the build failed (above)" >&2
        exit 2
    fi
elif [ -x "$bin" ]; then
    echo "== no nvcc here; running the $bin already built"
else
    echo "cuda-check: no nvcc (PATH, /usr/local/cuda/bin), no $bin built elsewhere and no $bundle" >&2
    exit 2
fi
if command -v nvidia-smi >/dev/null; then
    echo "== nvidia-smi"
    nvidia-smi --query-gpu=index,name,driver_version,memory.used,memory.total,utilization.gpu --format=csv || true
fi

echo "== run: $bin ${CUDA_CHECK_ARGS:-}"
# shellcheck disable=SC2086
"$bin" --json "$out/cuda_check.jsonl" ${CUDA_CHECK_ARGS:-} | tee "$out/cuda_check.txt"
rc=${PIPESTATUS[0]}
sed -n '/^---- paste into/,/^---- end/p' "$out/cuda_check.txt" | sed '1d;$d' > "$out/cuda_check.md"

if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then
    echo
    echo "== cuda-check failed (exit $rc): op tests again, synchronised after every op, no graphs"
    FINC_CUDA_SYNC=1 FINC_CUDA_GRAPHS=0 "$bin" --ops-only 2>&1 | grep -E 'FAIL|checks passed|CUDA' || true
    if command -v compute-sanitizer >/dev/null; then
        echo "(for memory errors: FINC_CUDA_SYNC=1 compute-sanitizer $bin --ops-only)"
    fi
fi
echo "cuda-check: exit $rc (report: $out/cuda_check.md, JSON: $out/cuda_check.jsonl)"
exit "$rc"
