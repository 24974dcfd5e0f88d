#!/usr/bin/env bash
# Runs each Check suite binary given as an argument, then the Python tool tests
# (unittest under tools/) unless FINC_SKIP_PY=1; prints one closing line.
# Exit status: 0 only when everything passed.
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
if [ "${FINC_SKIP_PY:-0}" != 1 ]; then
    out=$(${PYTHON:-/usr/bin/python3} -m unittest discover -s tools -p 'test_*.py' 2>&1); rc=$?
    printf '%s\n' "$out" | grep -E '^(FAIL|ERROR|Traceback)|Error' || true
    n=$(sed -nE 's/^Ran ([0-9]+) tests?.*/\1/p' <<<"$out")
    nf=$(sed -nE 's/.*failures=([0-9]+).*/\1/p' <<<"$out"); ne=$(sed -nE 's/.*errors=([0-9]+).*/\1/p' <<<"$out")
    nf=${nf:-0} ne=${ne:-0} n=${n:-0}
    echo "tools (python unittest): $n tests, $((nf + ne)) failed"
    passed=$((passed + n - nf - ne)); failed=$((failed + nf + ne))
    [ "$rc" -eq 0 ] || [ $((nf + ne)) -gt 0 ] || failed=$((failed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
