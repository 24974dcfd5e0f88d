#!/usr/bin/env bash
# make test-browser: the page at / in headless Chromium (Debian's chromium,
# installed by tools/deps.sh) driven with puppeteer-core, pinned in
# package-lock.json and installed here with npm ci, against finc serve
# processes that tests/browser/test.mjs starts on free loopback ports.
#   FINC_SCREENSHOTS=docs/ make test-browser   also writes the page's screenshots
set -euo pipefail
cd "$(dirname "$0")/../.."
WEIGHTS=${WEIGHTS:-weights/fashion-mnist.safetensors}
command -v node >/dev/null || { echo "test-browser: node is missing (tools/deps.sh installs it)" >&2; exit 1; }
[ -x ./finc ] || { echo "test-browser: build ./finc first (make finc)" >&2; exit 1; }
# npm ci only when the lock file changed since the last install
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.finc-lock 2>/dev/null; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
    cp tests/browser/package-lock.json tests/browser/node_modules/.finc-lock
fi
shots=()
[ -n "${FINC_SCREENSHOTS:-}" ] && shots=(--screenshots "$FINC_SCREENSHOTS")
exec node tests/browser/test.mjs --finc ./finc --weights "$WEIGHTS" "${shots[@]}"
