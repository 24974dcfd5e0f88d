#!/usr/bin/env bash
# make test-image: the CPU image (make image) run for real and checked.
#   - it runs as uid 10001, not root;
#   - it serves with a read-only root filesystem (--read-only, a tmpfs on /tmp);
#   - the image's HEALTHCHECK command passes inside the running container;
#   - /readyz answers, and /sample (PNG) and /log-likelihood answer byte for byte
#     what the same source built on the host with the image's flags answers;
#   - podman stop (SIGTERM) drains and the container exits 0 within its grace period.
# How the container runs here: tests/deploy/podman.sh.
#   tests/deploy/image.sh        env: IMAGE (finc:cpu), KEEP=1 keeps logs
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
IMAGE=${IMAGE:-finc:cpu}
PY=${PYTHON:-/usr/bin/python3}
# The Dockerfile's ARCH, so the host build compiles what the image's does.
ARCH_FLAGS=$(sed -n 's/^ARG ARCH=//p' Dockerfile)
# shellcheck source=tests/deploy/podman.sh
. tests/deploy/podman.sh

passed=0 failed=0
ok()  { passed=$((passed + 1)); echo "  ok    $*"; }
bad() { failed=$((failed + 1)); echo "  FAIL  $*"; }
verdict() { if [ "$2" = 0 ]; then ok "$1"; else bad "$1"; fi; }
command -v podman >/dev/null || { echo "image: podman not found (make deps)"; exit 1; }
podman image exists "$IMAGE" || { echo "image: no $IMAGE (make image)"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/finc-image.XXXXXX")
name=finc-test-$$
host_pid=
cleanup() {
    podman rm -f "$name" >/dev/null 2>&1
    [ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then echo "image: logs kept in $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
wait_ready() {  # URL: up to 30 s
    for _ in $(seq 1 300); do curl -sf "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}

echo "image: $IMAGE, $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{ printf "%.0f MB", $1 / 1e6 }')"
user=$(podman run --rm "${RUN_FLAGS[@]}" --entrypoint id "$IMAGE" -u 2>/dev/null)
[ "$user" = 10001 ]; verdict "runs as uid $user, not root" $?

port=$(free_port)
podman run -d --name "$name" "${RUN_FLAGS[@]}" --read-only --tmpfs /tmp -e FINC_HOST=127.0.0.1 -e FINC_PORT="$port" \
    "$IMAGE" >/dev/null 2>"$tmp/run.err" || { cat "$tmp/run.err"; bad "podman run"; }
url=http://127.0.0.1:$port
wait_ready "$url"; verdict "ready with a read-only root filesystem, on 127.0.0.1:$port" $?
podman healthcheck run "$name" >"$tmp/health.out" 2>&1; st=$?
verdict "the image's HEALTHCHECK command passes inside the container" $st

# The same source built on the host with the image's flags, answering the same requests.
make -s BUILD=build/image-host ARCH="$ARCH_FLAGS" CUDA=0 build/image-host/finc >/dev/null \
    || bad "host build with ARCH=$ARCH_FLAGS"
hport=$(free_port)
build/image-host/finc serve --host 127.0.0.1 --port "$hport" --weights weights/fashion-mnist.safetensors --log off \
    2>"$tmp/host.log" &
host_pid=$!
wait_ready "http://127.0.0.1:$hport" || bad "the host build did not start"
./finc sample weights/fashion-mnist.safetensors -n 1 --seed 7 -o "$tmp/one.png" >/dev/null
same() {  # PATH WHAT CURL-ARGS...: the container's and the host's answers, byte for byte
    local path=$1 what=$2; shift 2
    rm -f "$tmp/c.out" "$tmp/h.out"
    curl -sf -o "$tmp/c.out" "$@" "$url$path" && curl -sf -o "$tmp/h.out" "$@" "http://127.0.0.1:$hport$path" \
        && cmp -s "$tmp/c.out" "$tmp/h.out"
    verdict "$what: the container's answer equals the host build's ($(stat -c %s "$tmp/c.out" 2>/dev/null) bytes)" $?
}
same /readyz "/readyz"
same /sample "/sample, a PNG grid of 16 at seed 42" -H 'Accept: image/png' -d '{"n": 16, "temperature": 0.7, "seed": 42}'
head -c 8 "$tmp/c.out" | od -An -c | grep -q 'P   N   G'; verdict "/sample answered a PNG" $?
same '/log-likelihood?samples=4&seed=1' "/log-likelihood, a PNG, importance-weighted" \
    -H 'Content-Type: image/png' --data-binary @"$tmp/one.png"
grep -q '"anomaly"' "$tmp/c.out"; verdict "/log-likelihood answered with anomaly verdicts" $?

t0=$(date +%s.%N)
podman stop -t 40 "$name" >/dev/null 2>&1
stop_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
code=$(podman inspect "$name" --format '{{.State.ExitCode}}')
podman logs "$name" >"$tmp/container.log" 2>&1
[ "$code" = 0 ] && grep -q 'drained, exiting' "$tmp/container.log"; st=$?
verdict "podman stop (SIGTERM): drained and exited $code in $stop_s s (grace 40 s)" $st

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
