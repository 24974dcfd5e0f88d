#!/usr/bin/env bash
# make bench: the CPU engine against the PyTorch + Cython baseline on the same
# weights in the same run, and the FInC wavefront inverse against a raster
# solve, and scoring with the anomaly fields against scoring without them
# (the shipped, calibrated model), and the start-up cost of whole CLI processes
# (tools/bench_startup.py). Raw JSON lines go to build/bench/results.jsonl; the tables to stdout
# (docs/benchmarks.md keeps a copy). Time on a quiet machine: the load average
# is printed with the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
# The spin count finc sets for itself (cli/omp_env.c), for both sides.
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}
THREADS=${THREADS:-$(nproc)}
out=build/bench/results.jsonl
mkdir -p build/bench
make -s build/bench/bench_engine
$PY tools/make_bench_models.py >&2
: > "$out"
echo "{\"bench\": \"machine\", \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)\", \"cores\": $(nproc), \"threads\": $THREADS, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"date\": \"$(date -u +%F)\"}" >> "$out"
for m in f128 f512; do
    build/bench/bench_engine --threads "$THREADS" "build/bench/mnist-$m.safetensors" | grep '"engine"' >> "$out"
    $PY tools/bench_torch.py "build/bench/mnist-$m.safetensors" --threads "$THREADS" --json \
        | $PY -c 'import json,sys; d=json.load(sys.stdin); d["bench"]="torch"; print(json.dumps(d))' >> "$out"
done
build/bench/bench_engine --threads "$THREADS" --finc | grep -v '"sgemm"' >> "$out"
build/bench/bench_engine --threads "$THREADS" --anomaly weights/fashion-mnist.safetensors | grep '"anomaly"' >> "$out"
build/bench/bench_engine --threads "$THREADS" | grep '"sgemm"' >> "$out"
# Start-up of whole processes: this build, and where it has CUDA, a CUDA=0 build of the same source.
builds=("$( [ -n "$(make -s -f Makefile --eval 'print-nvcc: ; @echo $(NVCC)' print-nvcc)" ] && echo cuda build || echo cpu-only build)=./finc")
if [ "${builds[0]%%=*}" = "cuda build" ]; then
    make -s BUILD=build/nocuda CUDA=0 build/nocuda/finc
    builds+=("CUDA=0 build=build/nocuda/finc")
fi
$PY tools/bench_startup.py "${builds[@]}" --model shipped=weights/fashion-mnist.safetensors \
    --model 10M=build/bench/mnist-f512.safetensors >> "$out"
$PY tools/bench_report.py "$out"
