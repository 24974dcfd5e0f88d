#!/usr/bin/env bash
# Validates deploy/, the Dockerfile and the test scripts with the best tools
# Debian has (make test-deploy runs it before tests/deploy/run.sh):
#   yamllint          every YAML file of deploy/
#   docker-compose    `config` validates deploy/compose.yaml against the Compose
#                     schema (no engine needed)
#   promtool          check config of deploy/prometheus/prometheus.yml
#   kubectl kustomize renders deploy/k8s and deploy/k8s/gpu (check_config.py
#                     renders them where kubectl is missing or older than 1.21)
#   check_config.py   the rendered objects against python3-kubernetes' models,
#                     and the cross-file facts (selectors, probes, ports, grace
#                     period, FINC_* names, nginx limits vs the server's); see there
#   make              ./finc built from exactly the docker build context
#                     (.dockerignore applied) with the Dockerfile's ARCH, and
#                     its libraries checked against the cpu stage's packages
#   ShellCheck        the scripts (tests/deploy/*.sh, the health probe)
# Debian has no Dockerfile linter (hadolint) nor Kubernetes schema validator
# (kubeconform, kubeval); check_config.py stands in for both. Missing tools
# are installed when running as root, as tools/deps.sh does.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
PY=${PYTHON:-/usr/bin/python3}

passed=0 failed=0
verdict() { if [ "$2" = 0 ]; then passed=$((passed + 1)); echo "  ok    $1"; else failed=$((failed + 1)); echo "  FAIL  $1"; fi; }
run() {  # DESCRIPTION COMMAND...: output shown only on failure
    local what=$1 out; shift
    out=$("$@" 2>&1); local rc=$?
    verdict "$what" $rc
    [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/        /' | tail -n 40
}
counted() {  # COMMAND...: a check_config.py run, its ok/FAIL lines counted here
    local out rc; out=$("$@" 2>&1); rc=$?
    printf '%s\n' "$out"
    local nok nfail; nok=$(grep -c '^  ok ' <<<"$out"); nfail=$(grep -c '^  FAIL ' <<<"$out")
    passed=$((passed + nok)); failed=$((failed + nfail))
    if [ "$rc" != 0 ] && [ "$nfail" = 0 ]; then failed=$((failed + 1)); echo "  FAIL  $* exited $rc"; fi
}

# tool -> Debian package
# (kubectl is not among them: Debian's, 1.20, predates the kustomize syntax of
# deploy/k8s; the machines here have a current one, else check_config.py renders.)
declare -A pkg=([yamllint]=yamllint [docker-compose]=docker-compose [promtool]=prometheus
                [shellcheck]=shellcheck [nginx]=nginx-light)
missing=()
for t in "${!pkg[@]}"; do command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing+=("${pkg[$t]}"); done
"$PY" -c 'import kubernetes, yaml' 2>/dev/null || missing+=(python3-kubernetes python3-yaml)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "validate: installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "validate: missing ${missing[*]} (apt-get install them, or run as root)" >&2
    fi
fi
[ -x ./finc ] || { echo "validate: build ./finc first (make finc)" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/finc-validate.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "validate: YAML, compose, Prometheus, nginx"
mapfile -t yamls < <(find deploy -name '*.yaml' -o -name '*.yml' | sort)
run "yamllint: ${#yamls[@]} files (deploy/**/*.yaml, *.yml)" \
    yamllint -s -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}' "${yamls[@]}"
run "docker-compose config: deploy/compose.yaml" docker-compose -f deploy/compose.yaml config -q
run "promtool check config: deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
run "promtool check rules: deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml
run "promtool test rules: tests/deploy/alerts_test.yml (FincAnomalyRateHigh)" promtool test rules tests/deploy/alerts_test.yml
mkdir -p "$tmp/nginx"
"$PY" tests/deploy/configs.py nginx deploy/nginx/nginx.conf "$tmp/nginx/nginx.conf" 18080 "$tmp/nginx" 18081 18082 18083
run "nginx -t: deploy/nginx/nginx.conf with loopback upstreams" \
    /usr/sbin/nginx -t -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" -g "pid $tmp/nginx/nginx.pid; error_log $tmp/nginx/error.log;"
counted "$PY" tests/deploy/check_config.py compose

echo "validate: Kubernetes"
if kubectl kustomize deploy/k8s >/dev/null 2>&1; then
    run "kubectl kustomize deploy/k8s ($(kubectl version --client 2>/dev/null | head -n 1))" \
        sh -c "kubectl kustomize deploy/k8s >'$tmp/cpu.yaml'"
    run "kubectl kustomize deploy/k8s/gpu" sh -c "kubectl kustomize deploy/k8s/gpu >'$tmp/gpu.yaml'"
else
    echo "  (no kubectl >= 1.21: deploy/k8s rendered by check_config.py instead)"
    run "render deploy/k8s" "$PY" tests/deploy/check_config.py render deploy/k8s "$tmp/cpu.yaml"
    run "render deploy/k8s/gpu" "$PY" tests/deploy/check_config.py render deploy/k8s/gpu "$tmp/gpu.yaml"
fi
counted "$PY" tests/deploy/check_config.py k8s "$tmp/cpu.yaml" "$tmp/gpu.yaml"

echo "validate: Dockerfile"
counted "$PY" tests/deploy/check_config.py dockerfile
arch=$(sed -nE 's/^ARG ARCH=(.*)$/\1/p' Dockerfile)
"$PY" tests/deploy/check_config.py context "$tmp/ctx"
run "make finc ARCH=$arch CUDA=0 in the docker build context alone" \
    make -C "$tmp/ctx" -j"$(nproc)" finc ARCH="$arch" CUDA=0
if [ -x "$tmp/ctx/finc" ]; then
    strip "$tmp/ctx/finc"
    run "the context-built finc loads the shipped weights" "$tmp/ctx/finc" info weights/fashion-mnist.safetensors
    counted "$PY" tests/deploy/check_config.py runtime-libs "$tmp/ctx/finc"
fi

echo "validate: scripts"
run "shellcheck: tests/deploy/*.sh, tools/image.sh, deploy/docker/healthcheck.sh" shellcheck tests/deploy/*.sh tools/image.sh deploy/docker/healthcheck.sh
run "python: tests/deploy/*.py compile" env PYTHONPYCACHEPREFIX="$tmp/pycache" "$PY" -m py_compile tests/deploy/client.py tests/deploy/configs.py tests/deploy/check_config.py

echo
if [ "$failed" = 0 ]; then echo "validate: PASS"; else echo "validate: FAIL"; fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
