#!/usr/bin/env bash
# The Dockerfile's CPU target without a container engine: its two stages
# replayed in debootstrap chroots of Debian bookworm, with the package lists
# and build flags read from the Dockerfile itself. The build stage installs
# its -dev packages and builds ./finc from exactly the build context
# (.dockerignore applied); the runtime stage installs only its runtime
# packages (with the slim image's dpkg exclusions), copies the binary, the
# health probe and the weights, runs the Dockerfile's own checks (ldd, finc
# info), then serves as uid 10001 with the image's environment: /healthz
# through deploy/docker/healthcheck.sh, one /sample, SIGTERM -> exit 0.
# Prints what the runtime stage adds to the base image.
#
# Needs root, debootstrap and the Debian mirror; a few minutes the first time
# (the base tree is kept in WORK, /tmp/finc-chroot by default). Not part of
# make test-deploy: it downloads packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "chroot_image: needs root (chroot, debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "chroot_image: apt-get install debootstrap" >&2; exit 1; }

WORK=${WORK:-/tmp/finc-chroot}
MIRROR=${MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-/usr/bin/python3}
arch=$(sed -nE 's/^ARG ARCH=(.*)$/\1/p' Dockerfile)
build_pkgs=$("$PY" tests/deploy/check_config.py apt-packages build-cpu)
run_pkgs=$("$PY" tests/deploy/check_config.py apt-packages cpu)
if [ -z "$arch" ] || [ -z "$build_pkgs" ] || [ -z "$run_pkgs" ]; then
    echo "chroot_image: cannot read the Dockerfile" >&2; exit 1
fi

mounted=() server=
cleanup() {
    [ -n "$server" ] && kill -KILL "$server" 2>/dev/null
    for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT
in_root() {  # ROOT COMMAND...: with /proc, /dev/pts and the host's DNS
    local root=$1; shift
    if ! mountpoint -q "$root/proc"; then mount -t proc proc "$root/proc"; mounted+=("$root/proc"); fi
    if ! mountpoint -q "$root/dev/pts"; then mount -t devpts devpts "$root/dev/pts" 2>/dev/null && mounted+=("$root/dev/pts"); fi
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive "$@"
}

if [ ! -x "$WORK/base/bin/bash" ]; then
    echo "chroot_image: debootstrap bookworm (minbase) from $MIRROR"
    rm -rf "$WORK/base"; mkdir -p "$WORK"
    debootstrap --variant=minbase bookworm "$WORK/base" "$MIRROR" >"$WORK/debootstrap.log" 2>&1
fi

echo "chroot_image: stage build-cpu: apt-get install $build_pkgs"
rm -rf "$WORK/build"; cp -a "$WORK/base" "$WORK/build"
in_root "$WORK/build" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $build_pkgs >/dev/null"
"$PY" tests/deploy/check_config.py context "$WORK/build/src"
echo "chroot_image: stage build-cpu: make finc ARCH=$arch CUDA=0 ($(find "$WORK/build/src" -type f | wc -l) files in the context)"
in_root "$WORK/build" sh -c "cd /src && make -j\$(nproc) finc ARCH='$arch' CUDA=0 >/src/make.log 2>&1 && install -D -s -m 0755 finc /out/finc" \
    || { tail -n 30 "$WORK/build/src/make.log"; exit 1; }

echo "chroot_image: stage cpu: apt-get install $run_pkgs"
rm -rf "$WORK/cpu"; cp -a "$WORK/base" "$WORK/cpu"
# What debian:*-slim sets, so that sizes compare.
cat >"$WORK/cpu/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
in_root "$WORK/cpu" sh -c "apt-get update -qq && rm -rf /var/lib/apt/lists/*"
before=$(du -sxk "$WORK/cpu" | cut -f1)
in_root "$WORK/cpu" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $run_pkgs >/dev/null \
    && rm -rf /var/lib/apt/lists/* && groupadd --gid 10001 finc \
    && useradd --uid 10001 --gid finc --home-dir /opt/finc --no-create-home --shell /usr/sbin/nologin finc"
install -D -m 0755 "$WORK/build/out/finc" "$WORK/cpu/usr/local/bin/finc"
install -D -m 0755 deploy/docker/healthcheck.sh "$WORK/cpu/usr/local/bin/finc-healthcheck"
install -D -m 0644 weights/fashion-mnist.safetensors "$WORK/cpu/opt/finc/weights/fashion-mnist.safetensors"
in_root "$WORK/cpu" bash -o pipefail -c "if ldd /usr/local/bin/finc | grep 'not found'; then exit 1; fi \
    && finc info /opt/finc/weights/fashion-mnist.safetensors" | sed 's/^/    /'
after=$(du -sxk "$WORK/cpu" | cut -f1)

port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
envs=(FINC_HOST=0.0.0.0 FINC_PORT="$port" FINC_WEIGHTS=/opt/finc/weights/fashion-mnist.safetensors FINC_BACKEND=cpu FINC_LOG=json)
chroot --userspec=10001:10001 "$WORK/cpu" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin "${envs[@]}" \
    /usr/local/bin/finc serve 2>"$WORK/serve.log" &
server=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
chroot --userspec=10001:10001 "$WORK/cpu" /usr/bin/env -i "${envs[@]}" /usr/local/bin/finc-healthcheck \
    || { cat "$WORK/serve.log"; echo "chroot_image: FAIL: the health probe" >&2; exit 1; }
n=$(curl -sf -d '{"n": 3, "seed": 1}' "http://127.0.0.1:$port/sample" | "$PY" -c 'import json, sys; print(len(json.load(sys.stdin)["images"]))')
[ "$n" = 3 ] || { cat "$WORK/serve.log"; echo "chroot_image: FAIL: /sample" >&2; exit 1; }
kill -TERM "$server"; rc=0; wait "$server" || rc=$?; server=
[ "$rc" = 0 ] || { echo "chroot_image: FAIL: exit status $rc after SIGTERM" >&2; exit 1; }

echo "chroot_image: PASS: built from the context, served as uid 10001 (health probe, /sample of 3 images, SIGTERM -> 0)"
echo "chroot_image: the cpu stage adds $(( (after - before) / 1024 )) MiB to the base; binary $(( $(stat -c %s "$WORK/cpu/usr/local/bin/finc") / 1024 )) KiB, weights $(( $(stat -c %s weights/fashion-mnist.safetensors) / 1024 )) KiB"
