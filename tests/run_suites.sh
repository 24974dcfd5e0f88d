#!/usr/bin/env bash
# Runs each Check suite binary given as an argument; prints one closing line.
# Exit status: 0 only when every suite passed.
set -u
passed=0 failed=0
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -vE '^Running suite' || true
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n 1)
    n=$(sed -nE 's/.*Checks: ([0-9]+).*/\1/p' <<<"$line")
    f=$(sed -nE 's/.*Failures: ([0-9]+), Errors: ([0-9]+).*/\1 \2/p' <<<"$line")
    if [ -z "$n" ]; then
        echo "$t: no summary (exit $rc)"; failed=$((failed + 1)); continue
    fi
    read -r nf ne <<<"$f"
    passed=$((passed + n - nf - ne)); failed=$((failed + nf + ne))
    [ "$rc" -eq 0 ] || { [ $((nf + ne)) -gt 0 ] || failed=$((failed + 1)); }
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
