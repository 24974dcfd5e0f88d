#!/usr/bin/env bash
# A prebuilt CUDA build for a GPU host that has the NVIDIA driver and CUDA 13's
# cuBLAS but not this project's build dependencies (oneDNN, cJSON, libpng,
# libmicrohttpd, libuv): a cloud GPU image, say.
#
#   tools/cuda_bundle.sh pack      (make cuda-bundle) builds finc and its
#       CUDA module, test_backend_ops, cuda_bench, bench_engine and loadgen, for any x86-64 CPU
#       with AVX2 (build/cuda-bundle.obj), and packs them with
#       every shared library they load here, except glibc and the C++ runtime
#       (the host's must be glibc 2.35 and GCC 11 or newer: Ubuntu 22.04,
#       Debian 12), the driver and cuBLAS (600 MB; the host's are used),
#       into build/cuda-bundle.tar.gz, with a checksum of the sources. Then it
#       unpacks the archive and runs each program from it, here, with only the
#       libraries a GPU host is assumed to have.
#   tools/cuda_bundle.sh env DIR   checks that the bundle unpacked in DIR
#       matches the sources of this checkout and that its programs find every
#       library, then prints the shell line that points the loader at them.
#
# On the GPU host, in a copy of the same sources:
#   tar xzf build/cuda-bundle.tar.gz -C build
#   bash tools/cuda_check.sh                             # picks build/cuda-bundle
#   BUILD=build/cuda-bundle BACKEND=cuda bash tools/bench_server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Sources whose change makes a bundle stale.
sources() {
    ls Makefile engine/*.[ch] io/*.[ch] server/*.[ch] cli/*.[ch] bench/*.[ch] tests/testmodel.[ch] tests/testpng.[ch] \
        tests/cuda/*.[ch] kernels/*.cu kernels/*.h
}
# Libraries every glibc host has (the C++ runtime too: CUDA's compiler needs
# it), and the ones the CUDA host brings. The host's C++ runtime rather than
# this machine's keeps the floor at glibc 2.35 (Ubuntu 22.04) instead of 2.36.
host_lib() {
    case "$1" in
    linux-vdso.so.* | ld-linux-*.so.* | libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | \
        libresolv.so.* | libstdc++.so.* | libgcc_s.so.* | libcuda.so.* | libcublas.so.* | libcublasLt.so.*) return 0 ;;
    *) return 1 ;;
    esac
}
# A directory holding the host's libcublas.so.13: the CUDA toolkit's, or the
# one pip's nvidia-cublas package installs beside a Python framework.
cublas_dir() {
    local d nvcc
    nvcc=$(command -v nvcc || true)
    for d in ${CUDA_HOME:+"$CUDA_HOME/lib64"} ${nvcc:+"$(dirname "$(readlink -f "$nvcc")")/../lib64"} \
        /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/lib/x86_64-linux-gnu; do
        [ -e "$d/libcublas.so.13" ] && { readlink -f "$d"; return 0; }
    done
    d=$(find /usr /opt -maxdepth 9 -name libcublas.so.13 -print -quit 2>/dev/null || true)
    [ -n "$d" ] && dirname "$d"
}
# finc finds the CUDA module beside itself.
PROGRAMS="finc libfinc-cuda.so loadgen tests/cuda/test_backend_ops bench/cuda_bench bench/bench_engine"
# The loader path for a bundle unpacked in DIR: its lib/, then the host's cuBLAS.
loader_path() {  # DIR
    local cb
    cb=$(cublas_dir || true)
    echo "$(readlink -f "$1/lib")${cb:+:$cb}"
}

env_line() {  # DIR
    local dir=$1 lib p missing changed
    [ -f "$dir/SOURCES.sha256" ] || { echo "cuda_bundle: $dir is not an unpacked bundle (no SOURCES.sha256)" >&2; return 2; }
    if ! changed=$(sha256sum --quiet -c "$dir/SOURCES.sha256" 2>&1); then
        echo "cuda_bundle: $dir was built from other sources; changed here:" >&2
        echo "$changed" | sed 's/^/  /' >&2
        return 2
    fi
    lib=$(loader_path "$dir")
    missing=$(for p in $PROGRAMS; do LD_LIBRARY_PATH=$lib ldd "$dir/$p" | grep 'not found' || true; done | sort -u)
    if [ -n "$missing" ]; then
        echo "cuda_bundle: libraries not found (cuBLAS: $(cublas_dir || echo "no libcublas.so.13 found; set CUDA_HOME")):" >&2
        echo "$missing" >&2
        return 2
    fi
    echo "export LD_LIBRARY_PATH=$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
}

pack() {
    command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] ||
        { echo "cuda_bundle: no nvcc: the bundle is a CUDA build" >&2; exit 2; }
    # Built apart from build/, for any x86-64 CPU with AVX2 rather than this one.
    local obj=build/cuda-bundle.obj stage=build/cuda-bundle.stage dir p
    # shellcheck disable=SC2046
    make -s -j"$(nproc)" CUDA=1 BUILD=$obj ARCH=-march=x86-64-v3 $(for p in $PROGRAMS; do echo "$obj/$p"; done)
    dir=$stage/cuda-bundle
    rm -rf "$stage"
    mkdir -p "$dir/lib" "$dir/bench" "$dir/tests/cuda"
    for p in $PROGRAMS; do cp "$obj/$p" "$dir/$p"; done
    for p in $PROGRAMS; do
        ldd "$dir/$p" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | while read -r name path; do
            host_lib "$name" || cp -L "$path" "$dir/lib/$name"
        done
    done
    # shellcheck disable=SC2046
    sha256sum $(sources) >"$dir/SOURCES.sha256"
    tar czf build/cuda-bundle.tar.gz -C "$stage" cuda-bundle
    echo "cuda_bundle: build/cuda-bundle.tar.gz, $(du -h build/cuda-bundle.tar.gz | cut -f1):" \
        "$(ls "$dir/lib" | tr '\n' ' ')"

    # Run it as a GPU host would: unpacked elsewhere, loading from the bundle
    # everything but glibc and cuBLAS; with no GPU here, the check program
    # must get as far as asking the driver for a device.
    rm -rf "$stage"
    mkdir -p "$stage"
    tar xzf build/cuda-bundle.tar.gz -C "$stage"
    local only bundled outside out rc=0
    only=$(loader_path "$stage/cuda-bundle")
    bundled=$(readlink -f "$stage/cuda-bundle/lib")
    for p in $PROGRAMS; do
        outside=$(LD_LIBRARY_PATH=$only ldd "$stage/cuda-bundle/$p" | awk '$2 == "=>" { print $1, $3 }' |
            while read -r name path; do
                [ "$(dirname "$path")" = "$bundled" ] || host_lib "$name" || echo "  $name => $path"
            done)
        if [ -n "$outside" ]; then
            printf 'cuda_bundle: %s loads these from outside the bundle:\n%s\n' "$p" "$outside" >&2
            exit 1
        fi
    done
    for p in tests/cuda/test_backend_ops bench/cuda_bench; do
        rc=0
        out=$(LD_LIBRARY_PATH=$only "$stage/cuda-bundle/$p" --quick 2>&1) || rc=$?
        if [ $rc -ne 2 ] || ! grep -q 'no usable CUDA device' <<<"$out"; then
            echo "cuda_bundle: the bundled $p did not stop at asking for a device (exit $rc): $out" >&2
            exit 1
        fi
    done
    # The bundled finc finds its module: it loads and sees a device, or sees no
    # device, or (no driver here) names the module it would load.
    out=$(LD_LIBRARY_PATH=$only "$stage/cuda-bundle/finc" --version)
    grep -q 'backends: cpu, cuda\|cuda: not available: no usable CUDA device\|the CUDA module [^ ]*cuda-bundle/[^ ]*libfinc-cuda.so has the CUDA' <<<"$out" ||
        { echo "cuda_bundle: the bundled finc does not load its CUDA module: $out" >&2; exit 1; }
    rm -rf "$stage"
    echo "cuda_bundle: the unpacked bundle's programs load their libraries from it"
}

case "${1:-}" in
pack) pack ;;
env)
    [ $# -eq 2 ] || { echo "usage: tools/cuda_bundle.sh env DIR" >&2; exit 2; }
    env_line "$2"
    ;;
*)
    echo "usage: tools/cuda_bundle.sh pack | env DIR" >&2
    exit 2
    ;;
esac
