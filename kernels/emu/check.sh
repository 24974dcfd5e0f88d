#!/usr/bin/env bash
# Runs the CUDA backend's own code (kernels/*.cu) on the CPU through the
# emulated runtime in kernels/emu, against the CPU engine, with the checks of
# tests/cuda/test_backend_ops.c on the small shapes (and its fault checks,
# which need the emulator's injection). Catches indexing, barrier, launch
# configuration and graph-replay mistakes where no GPU is; says nothing about
# speed or about the GPU's memory model. Then finc serve itself on the
# emulated backend (kernels/emu/serve_check.sh). Builds into build/emu.
#   kernels/emu/check.sh [test_backend_ops arguments]   (default: --small --emu-faults)
#   EMU_SAN=1 adds AddressSanitizer (out-of-bounds kernel accesses).
# The op checks run a second time with every block's threads, and the blocks,
# in reverse order: a thread that reads what another writes with no barrier
# between them then reads other data, and the check fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/emu
mkdir -p "$out/kernels" "$out/obj"
jobs=$(nproc)
san=""
[ "${EMU_SAN:-0}" = 1 ] && san="-fsanitize=address -fno-omit-frame-pointer"
pkgs="libcjson libpng zlib"
cflags="-std=c11 -D_GNU_SOURCE -O1 -g -fopenmp -DFINC_HAVE_CUDA -I. $(pkg-config --cflags $pkgs) $san"
cxxflags="-std=c++17 -O1 -g -fPIC -ffp-contract=off -DFINC_HAVE_CUDA -DFINC_CUDA_EMU -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas \
  -I$out -Ikernels/emu/include -I. $san"

# k<<<cfg>>>(args); becomes EMU_LAUNCH((cfg), k, args); and the dynamic
# shared memory array a pointer to the emulator's.
rewrite() {
    perl -0pe 's/extern __shared__ float smem\[\];/float *smem = (float *)emu_dynamic_smem();/g;
               s/(\w+\[[^\]]*\])<<<(.*?)>>>\((.*?)\);/EMU_LAUNCH_PTR((\2), \1, \3);/gs;
               s/(\w+)<<<(.*?)>>>\((.*?)\);/EMU_LAUNCH((\2), \1, \3);/gs' "$1"
}
rewrite kernels/cuda.h > "$out/kernels/cuda.h"
objs=()
for f in kernels/*.cu; do
    b=$(basename "$f" .cu)
    rewrite "$f" > "$out/kernels/$b.cpp"
    if grep -n '<<<' "$out/kernels/$b.cpp"; then echo "emu: a launch was not rewritten in $f" >&2; exit 2; fi
    objs+=("$out/kernels/$b.cpp")
done
objs+=(kernels/emu/emu.cpp)
printf '%s\n' "${objs[@]}" | xargs -P "$jobs" -I{} sh -c \
    'g++ '"$cxxflags"' -c -o '"$out"'/obj/$(basename {} | sed "s/\.cpp$/.o/") {}'
# The kernels and emulator in obj/, the C library in obj/lib, each program's own in obj/<program>.
compile_c() {  # DIR FILE...
    local d=$1
    shift
    mkdir -p "$d"
    printf '%s\n' "$@" | xargs -P "$jobs" -I{} sh -c \
        'gcc '"$cflags"' -c -o '"$d"'/c_$(echo {} | tr / _ | sed "s/\.c$/.o/") {}'
}
compile_c "$out/obj/lib" engine/*.c io/*.c
compile_c "$out/obj/test_backend_ops" tests/testmodel.c tests/cuda/harness.c tests/cuda/test_backend_ops.c
compile_c "$out/obj/cuda_bench" tests/testmodel.c tests/cuda/harness.c bench/cuda_bench.c
# The page's files, embedded as the Makefile embeds them (make cuda-emu-check passes its output).
ui_assets=${UI_ASSETS:-build/server/ui_assets.c}
[ -f "$ui_assets" ] || { echo "emu: no $ui_assets (make cuda-emu-check makes it)" >&2; exit 2; }
compile_c "$out/obj/finc" server/*.c cli/*.c "$ui_assets"
libs="$(pkg-config --libs $pkgs) -ldnnl -lm -lpthread"
# The emulated kernels as the CUDA module, which finc (and the engine-level checks)
# load with dlopen from beside themselves, as the real build does; test_backend_ops
# and cuda_bench also link them directly for their per-op work.
g++ -shared -Wl,-Bsymbolic $san -o "$out/libfinc-cuda.so" "$out"/obj/*.o -lm -lpthread
# Where the real build puts them, so tools/cuda_check.sh runs them too (CUDA_CHECK_DIR=build/emu).
mkdir -p "$out/tests/cuda" "$out/bench"
g++ -fopenmp $san -rdynamic -o "$out/tests/cuda/test_backend_ops" "$out"/obj/*.o "$out"/obj/lib/*.o \
    "$out"/obj/test_backend_ops/*.o $libs -ldl
g++ -fopenmp $san -rdynamic -o "$out/bench/cuda_bench" "$out"/obj/*.o "$out"/obj/lib/*.o "$out"/obj/cuda_bench/*.o \
    $libs -ldl
g++ -fopenmp $san -rdynamic -o "$out/finc" "$out"/obj/lib/*.o "$out"/obj/finc/*.o $(pkg-config --libs libmicrohttpd libuv) \
    $libs -ldl

args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--small --emu-faults)
echo "== $out/tests/cuda/test_backend_ops ${args[*]} (CUDA emulated on the CPU)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1}
"$out/tests/cuda/test_backend_ops" "${args[@]}"
echo "== the op checks again, blocks and threads run last to first (EMU_ORDER=reverse: finds races)"
EMU_ORDER=reverse "$out/tests/cuda/test_backend_ops" --small --ops-only
echo "== $out/bench/cuda_bench on two small shapes: the timing program's own checks (its figures mean nothing here)"
FINC_BENCH_SMALL=1 "$out/bench/cuda_bench" --quick --no-cpu-time --time-images 3 | grep -E '^  (ok|FAIL)|checks passed'
[ "${PIPESTATUS[0]}" = 0 ]
echo "== kernels/emu/serve_check.sh: finc serve on the emulated CUDA backend"
BIN=$out/finc bash kernels/emu/serve_check.sh
