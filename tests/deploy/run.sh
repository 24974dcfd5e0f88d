#!/usr/bin/env bash
# The deploy/compose.yaml topology (make test-deploy): three replicas, each a
# container of the CPU image (make image) run by podman on a loopback port
# (REPLICAS=processes: three `finc serve` processes instead, where no container
# engine runs), Debian's nginx running the repo's
# deploy/nginx/nginx.conf (only the upstream addresses and the listen port
# replaced) and Debian's Prometheus running deploy/prometheus/prometheus.yml
# (targets replaced, intervals shortened). Clients drive load through nginx
# for LOAD_SECONDS; meanwhile one replica is killed (SIGKILL), another is
# stopped (SIGTERM: it drains and exits) and the killed one is started again
# (a new container on its port). Passes when
# every client request got a 200 with the right body, the drained replica
# exited 0, the restarted one serves again, Prometheus scraped every replica,
# and each replica's /metrics passes `promtool check metrics`.
#
#   tests/deploy/run.sh          env: REPLICAS (containers, or processes), IMAGE (finc:cpu),
#                                FINC (./finc), WEIGHTS, LOAD_SECONDS (20),
#                                WORKERS (8), MAX_REQUESTS (20000), KEEP=1 keeps logs
# How the containers run here: tests/deploy/podman.sh.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

FINC=${FINC:-./finc}
WEIGHTS=${WEIGHTS:-weights/fashion-mnist.safetensors}
LOAD_SECONDS=${LOAD_SECONDS:-20}
WORKERS=${WORKERS:-8}
MAX_REQUESTS=${MAX_REQUESTS:-20000}
PY=${PYTHON:-/usr/bin/python3}
NGINX=${NGINX:-/usr/sbin/nginx}
PROMETHEUS=${PROMETHEUS:-prometheus}
PROMTOOL=${PROMTOOL:-promtool}
DRAIN_TIMEOUT=10   # the SIGTERM'd replica must be gone well within this
REPLICAS=${REPLICAS:-containers}
IMAGE=${IMAGE:-finc:cpu}
# shellcheck source=tests/deploy/podman.sh
. tests/deploy/podman.sh

passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "  ok    $*"; }
bad()  { failed=$((failed + 1)); echo "  FAIL  $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
verdict() { if [ "$2" = 0 ]; then ok "$1"; else bad "$1"; fi; }  # MESSAGE STATUS
die()  { echo "deploy: $*" >&2; bad "$*"; finish; }

for tool in "$FINC" "$NGINX" "$PY" curl "$PROMETHEUS" "$PROMTOOL"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deploy: $tool not found (make finc; tools/deps.sh installs nginx-light and prometheus)" >&2; exit 1; }
done
[ -f "$WEIGHTS" ] || { echo "deploy: no weights file $WEIGHTS" >&2; exit 1; }
if [ "$REPLICAS" = containers ]; then
    if ! command -v podman >/dev/null || ! podman image exists "$IMAGE"; then
        echo "deploy: no podman or no $IMAGE (make image), or run with REPLICAS=processes" >&2; exit 1
    fi
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/finc-deploy.XXXXXX")
chmod 0755 "$tmp"   # nginx workers drop to an unprivileged user when started as root
declare -A pid=()   # name -> pid of every process this script started (a container's: its log follower)
declare -A ctr=()   # replica name -> container name
t_start=$(date +%s.%N)
elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

stop_all() {
    local name
    for name in "${!pid[@]}"; do kill -TERM "${pid[$name]}" 2>/dev/null; done
    for _ in $(seq 1 50); do
        local alive=0
        for name in "${!pid[@]}"; do kill -0 "${pid[$name]}" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for name in "${!pid[@]}"; do kill -KILL "${pid[$name]}" 2>/dev/null; done
    for name in "${!pid[@]}"; do wait "${pid[$name]}" 2>/dev/null; done
    pid=()
    for name in "${!ctr[@]}"; do podman rm -f "${ctr[$name]}" >/dev/null 2>&1; done
    ctr=()
}
finish() {
    trap - EXIT INT TERM
    stop_all
    echo
    if [ "$failed" = 0 ]; then
        echo "deploy: PASS in $(elapsed) s"
    else
        echo "deploy: FAIL in $(elapsed) s; logs:"
        for f in "$tmp"/*.log "$tmp"/nginx/*.log; do
            [ -f "$f" ] && { echo "--- $f (last 15 lines)"; tail -n 15 "$f"; }
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "deploy: logs kept in $tmp"; else rm -rf "$tmp"; fi
    echo "$passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit $?
}
trap finish EXIT
trap 'echo "deploy: interrupted" >&2; failed=$((failed + 1)); finish' INT TERM

wait_for() {  # SECONDS DESCRIPTION COMMAND...: poll every 0.1 s
    local secs=$1 what=$2; shift 2
    local end=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$end" ] && { echo "deploy: timed out waiting for $what" >&2; return 1; }
        sleep 0.1
    done
}

# ------------------------------------------------------------------ replicas
# One engine thread each: three replicas, nginx, Prometheus and the clients
# share two cores. A short batching delay keeps latency low at this load.
declare -A port=()
start_replica() {  # NAME PORT (0: any free one); sets port[NAME], and pid[NAME] or ctr[NAME]
    local name=$1 log="$tmp/$1.log" p=$2
    if [ "$REPLICAS" = containers ]; then
        [ "$p" = 0 ] && p=$(free_port)
        ctr[$name]=finc-deploy-$$-$name
        podman run -d --name "${ctr[$name]}" "${RUN_FLAGS[@]}" -e FINC_HOST=127.0.0.1 -e FINC_PORT="$p" \
            -e FINC_THREADS=1 -e FINC_HTTP_THREADS=2 -e FINC_MAX_DELAY_MS=1 -e FINC_DRAIN_TIMEOUT="$DRAIN_TIMEOUT" \
            -e FINC_TIMEOUT_MS=20000 -e FINC_LOG=json "$IMAGE" >/dev/null 2>"$log.run" || { cat "$log.run" >&2; return 1; }
        podman logs -f "${ctr[$name]}" >"$log" 2>&1 &
    else
        "$FINC" serve --host 127.0.0.1 --port "$p" --weights "$WEIGHTS" --threads 1 --http-threads 2 \
            --max-delay-ms 1 --drain-timeout "$DRAIN_TIMEOUT" --timeout-ms 20000 --log json 2>"$log" &
    fi
    pid[$name]=$!
    wait_for 30 "$name to be ready" grep -q 'ready on port' "$log" || return 1
    port[$name]=$(sed -nE 's/.*ready on port ([0-9]+).*/\1/p' "$log")
}
signal_replica() {  # NAME SIGNAL: SIGKILL it, or SIGTERM (podman stop, which would SIGKILL after the drain)
    if [ "$REPLICAS" = containers ]; then
        if [ "$2" = KILL ]; then podman kill --signal KILL "${ctr[$1]}" >/dev/null
        else podman stop -t $((DRAIN_TIMEOUT + 5)) "${ctr[$1]}" >/dev/null 2>&1 &
        fi
    else
        kill -"$2" "${pid[$1]}"
    fi
}
gone_within() {  # SECONDS NAME: wait for a replica (or the client) to exit; its status in $rc
    local end=$(( $(date +%s) + $1 ))
    if [ -n "${ctr[$2]:-}" ]; then
        while [ "$(podman inspect "${ctr[$2]}" --format '{{.State.Running}}')" = true ]; do
            [ "$(date +%s)" -ge "$end" ] && { rc=timeout; return 1; }
            sleep 0.05
        done
        rc=$(podman inspect "${ctr[$2]}" --format '{{.State.ExitCode}}')
        wait "${pid[$2]}" 2>/dev/null   # its log follower
        unset "pid[$2]"
        return 0
    fi
    while kill -0 "${pid[$2]}" 2>/dev/null; do
        [ "$(date +%s)" -ge "$end" ] && { rc=timeout; return 1; }
        sleep 0.05
    done
    wait "${pid[$2]}"; rc=$?
    unset "pid[$2]"
}
requests_in_log() {  # LOG STATUS [after the line matching PATTERN]
    local log=$1 status=$2 after=${3:-}
    awk -v s="\"status\":$status," -v pat="$after" '
        pat != "" && index($0, pat) { on = 1; next }
        (pat == "" || on) && index($0, "\"path\":\"/sample\"") + index($0, "\"path\":\"/log-likelihood\"") && index($0, s) { n++ }
        END { print n + 0 }' "$log"
}

echo "deploy: starting 3 replicas as $REPLICAS, nginx, prometheus ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
for r in r1 r2 r3; do
    start_replica "$r" 0 || die "replica $r did not start"
done
replicas="127.0.0.1:${port[r1]} 127.0.0.1:${port[r2]} 127.0.0.1:${port[r3]}"

# The image's health probe, against a real server.
FINC_PORT=${port[r1]} bash deploy/docker/healthcheck.sh && ! FINC_PORT=$(free_port) bash deploy/docker/healthcheck.sh 2>/dev/null; st=$?
verdict "deploy/docker/healthcheck.sh: 0 against a live replica, 1 against a closed port" "$st"

# Every replica's exposition format, by Prometheus's own linter.
lint_ok=0
for r in r1 r2 r3; do
    curl -sf "http://127.0.0.1:${port[$r]}/metrics" >"$tmp/metrics-$r.txt" \
        && "$PROMTOOL" check metrics <"$tmp/metrics-$r.txt" >"$tmp/promtool-$r.txt" 2>&1 && lint_ok=$((lint_ok + 1))
done
check "promtool check metrics: $lint_ok/3 replicas clean" [ "$lint_ok" = 3 ]

# --------------------------------------------------------------------- nginx
mkdir -p "$tmp/nginx"
nginx_port=$(free_port)
"$PY" tests/deploy/configs.py nginx deploy/nginx/nginx.conf "$tmp/nginx/nginx.conf" "$nginx_port" "$tmp/nginx" \
    "${port[r1]}" "${port[r2]}" "${port[r3]}" || die "deploy/nginx/nginx.conf: unexpected shape"
"$NGINX" -t -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" -g "pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/error.log;" \
    >"$tmp/nginx/t.log" 2>&1 || { cat "$tmp/nginx/t.log"; die "nginx -t rejected the generated config"; }
ok "nginx -t: the generated config (deploy/nginx/nginx.conf, loopback upstreams)"
"$NGINX" -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" \
    -g "daemon off; pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/error.log notice;" \
    >"$tmp/nginx/access.log" 2>>"$tmp/nginx/error.log" &
pid[nginx]=$!
lb="http://127.0.0.1:$nginx_port"
wait_for 20 nginx curl -sf "$lb/healthz" || die "nginx did not answer"

# ---------------------------------------------------------------- prometheus
prom_port=$(free_port)
# shellcheck disable=SC2086  # three words, one per target
"$PY" tests/deploy/configs.py prometheus deploy/prometheus/prometheus.yml "$tmp/prometheus.yml" $replicas \
    || die "deploy/prometheus/prometheus.yml: unexpected shape"
"$PROMETHEUS" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom-data" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pid[prometheus]=$!
prom="http://127.0.0.1:$prom_port"
promq() {  # QUERY -> "instance value" lines
    curl -sf --get "$prom/api/v1/query" --data-urlencode "query=$1" \
        | "$PY" -c 'import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print(r["metric"].get("instance", "-"), r["value"][1])'
}
# shellcheck disable=SC2317  # called through wait_for
all_up() { [ "$(promq 'up{job="finc"} == 1' | wc -l)" = 3 ]; }
wait_for 40 "prometheus to scrape all 3 replicas" all_up || die "prometheus: not every replica up"
ok "prometheus: 3/3 replicas up before the faults ($(elapsed) s after start)"

# --------------------------------------------------------------------- load
"$PY" tests/deploy/client.py refs "http://127.0.0.1:${port[r3]}" "$tmp/refs.json" || die "reference answers"
echo "deploy: load through nginx for ${LOAD_SECONDS} s, $WORKERS clients; replicas $replicas"
"$PY" tests/deploy/client.py load "$lb" "$tmp/refs.json" "$LOAD_SECONDS" "$MAX_REQUESTS" "$WORKERS" \
    >"$tmp/client.json" 2>"$tmp/client.log" &
pid[client]=$!
t_load=$(date +%s.%N)
at() {  # sleep until S seconds into the load
    local s; s=$(awk -v a="$t_load" -v b="$(date +%s.%N)" -v t="$1" 'BEGIN { d = t - (b - a); print (d > 0 ? d : 0) }')
    sleep "$s"
}

at $(( LOAD_SECONDS / 4 ))
served_r1=$(requests_in_log "$tmp/r1.log" 200)
signal_replica r1 KILL; gone_within 10 r1
echo "deploy: $(elapsed) s: SIGKILL r1 (127.0.0.1:${port[r1]}) after $served_r1 answers"

at $(( LOAD_SECONDS * 9 / 20 ))
t_term=$(date +%s.%N)
signal_replica r2 TERM
echo "deploy: $(elapsed) s: SIGTERM r2 (127.0.0.1:${port[r2]})"
gone_within $((DRAIN_TIMEOUT + 5)) r2; rc_r2=$rc
drain_s=$(awk -v a="$t_term" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
echo "deploy: $(elapsed) s: r2 exited with status $rc_r2 after $drain_s s"

at $(( LOAD_SECONDS * 13 / 20 ))
echo "deploy: $(elapsed) s: restarting r1 on 127.0.0.1:${port[r1]} (as r1b)"
start_replica r1b "${port[r1]}" || bad "r1 did not restart on its port"

gone_within $((LOAD_SECONDS + 60)) client; rc_client=$rc
load=$(cat "$tmp/client.json" 2>/dev/null)

# ------------------------------------------------------------------- verdict
echo "deploy: checks"
summary() { "$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval(sys.argv[2], {}, d))' "$load" "$1" 2>/dev/null; }
sent=$(summary sent) okn=$(summary ok) nfail=$(summary failed)
[ "$rc_client" = 0 ] && [ -n "$sent" ] && [ "$sent" -gt 0 ]; st=$?
verdict "load: $sent requests sent ($(summary 'by_kind')), $okn answered 200 with the reference body, ${nfail:-?} failed, statuses $(summary 'status')" "$st"
[ "$rc_client" = 0 ] || summary 'chr(10).join(failures)' | sed 's/^/        /'
[ -n "$sent" ] && [ "$sent" -ge 100 ]; st=$?
verdict "load: at least 100 requests (enough to meet the faults)" "$st"

check "r1 answered requests before its SIGKILL ($served_r1)" [ "$served_r1" -gt 0 ]
after_term=$(requests_in_log "$tmp/r2.log" 200 'SIGTERM, draining')
refused=$(requests_in_log "$tmp/r2.log" 503 'SIGTERM, draining')
[ "$rc_r2" = 0 ] && grep -q 'drained, exiting' "$tmp/r2.log"; st=$?
verdict "r2 drained after SIGTERM and exited 0 in $drain_s s (answered $after_term accepted requests after it, refused $refused new ones with 503)" "$st"

# The restarted replica gets traffic again once nginx's fail_timeout (5 s) is
# over: a few more requests through nginx, each of which must succeed too.
r1_back() {
    curl -sf -o /dev/null -d '{"n": 1, "seed": 5}' "$lb/sample" || return 2
    [ "$(requests_in_log "$tmp/r1b.log" 200)" -gt 0 ]
}
extra_ok=1
end=$(( $(date +%s) + 15 ))
while :; do
    r1_back; st=$?
    [ $st = 0 ] && break
    [ $st = 2 ] && { extra_ok=0; break; }
    [ "$(date +%s)" -ge "$end" ] && break
    sleep 0.2
done
back=$(requests_in_log "$tmp/r1b.log" 200)
[ "$extra_ok" = 1 ] && [ "$back" -gt 0 ]; st=$?
verdict "restarted r1 serves through nginx again ($back answers)" "$st"

# nginx: what it retried, and that it answered nothing but 200 to the clients.
read -r total non200 retried why < <("$PY" tests/deploy/configs.py nginx-log "$tmp/nginx/access.log")
[ "$non200" = 0 ] && [ "$total" -gt 0 ]; st=$?
verdict "nginx: $total inference requests logged, $non200 answered other than 200, $retried retried on another replica (failed tries by status: $why)" "$st"

# The body limit nginx enforces is the replicas' --max-body (4 MiB): one byte
# over is refused by nginx with a JSON error, exactly 4 MiB reaches a replica
# (which answers 400: it is not a PNG).
head -c 4194305 /dev/zero >"$tmp/big"
over=$(curl -s -o "$tmp/over.json" -w '%{http_code}' -H 'Content-Type: image/png' --data-binary @"$tmp/big" "$lb/log-likelihood")
truncate -s 4194304 "$tmp/big"
at_limit=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: image/png' --data-binary @"$tmp/big" "$lb/log-likelihood")
[ "$over" = 413 ] && "$PY" -c 'import json, sys; json.load(open(sys.argv[1]))["error"]' "$tmp/over.json" && [ "$at_limit" = 400 ]; st=$?
verdict "body limit: 4 MiB + 1 byte -> $over from nginx (JSON), 4 MiB -> $at_limit from a replica" "$st"

# Prometheus: every replica was up and scraped with traffic counted.
sleep 1.5   # one more scrape of the restarted replica
seen_up=$(promq 'max_over_time(up{job="finc"}[10m]) == 1' | wc -l)
with_traffic=$(promq 'max by (instance) (max_over_time(finc_http_requests_total{job="finc",endpoint=~"/sample|/log-likelihood",code="200"}[10m])) > 0' | wc -l)
up_now=$(promq 'up{job="finc"}' | sort | tr '\n' ' ')
[ "$seen_up" = 3 ] && [ "$with_traffic" = 3 ]; st=$?
verdict "prometheus: $seen_up/3 replicas scraped (up == 1), $with_traffic/3 with answered requests counted; up now: $up_now" "$st"

finish
