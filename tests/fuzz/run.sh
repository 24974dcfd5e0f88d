#!/usr/bin/env bash
# make fuzz: each libFuzzer target (tests/fuzz/fuzz_*.c) replays the inputs
# that once broke it (tests/fuzz/regress/<target>/, committed with the fix),
# then fuzzes for FUZZ_SECONDS (20) from the seeds tests/fuzz/seeds.c writes.
# The fuzz build (-DFINC_FUZZING) leaves PNG chunk CRCs unchecked, so that
# mutations reach the decoder instead of failing the checksum, and fuzz_png
# links a libpng built with coverage from Debian's source (tests/fuzz/libpng.sh):
# 2325 edges in a minute from the seeds, against 82 of io/png.c alone before.
# New inputs accumulate in build/fuzz/work/<target>, so later runs go deeper.
# A crash, a sanitizer report (leaks too, but in fuzz_http), a hang or a
# refusal without a message fails it; the input is kept as
# build/fuzz/crash-<target>-*.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${BUILD:-build}/fuzz
secs=${FUZZ_SECONDS:-20}
"$out/seeds" "$out/seeds-dir" || exit 1
failed=0
for src in tests/fuzz/fuzz_*.c; do
    t=$(basename "$src" .c)
    t=${t#fuzz_}
    bin=$out/fuzz_$t
    args=(-timeout=10 -rss_limit_mb=2048 -artifact_prefix="$out/crash-$t-")
    # PNG inputs up to 1 MiB, room for a decompression bomb, and each must
    # decode within 2 s (libFuzzer reports a slower one as a timeout).
    [ "$t" = png ] && args=(-timeout=2 -max_len=1048576 -rss_limit_mb=1024 -artifact_prefix="$out/crash-$t-")
    if compgen -G "tests/fuzz/regress/$t/*" >/dev/null; then
        if ! "$bin" "${args[@]}" tests/fuzz/regress/"$t"/* >"$out/$t.regress.log" 2>&1; then
            echo "fuzz_$t: a regression input fails again ($out/$t.regress.log):"
            grep -E 'ERROR|SUMMARY|Running:' "$out/$t.regress.log" | tail -n 5
            failed=1
            continue
        fi
    fi
    mkdir -p "$out/work/$t"
    if "$bin" "${args[@]}" -max_total_time="$secs" -print_final_stats=1 "$out/work/$t" "$out/seeds-dir/$t" \
        >"$out/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log")
        cov=$(grep -o 'cov: [0-9]*' "$out/$t.log" | tail -n 1)
        echo "fuzz_$t: ok, ${runs:-?} inputs in ${secs} s, $cov edges, corpus $(find "$out/work/$t" -type f | wc -l)"
    else
        echo "fuzz_$t: FAILED ($out/$t.log):"
        grep -E 'ERROR|SUMMARY|Test unit written' "$out/$t.log" | tail -n 5
        failed=1
    fi
done
[ $failed -eq 0 ] && echo "fuzz: all targets clean" || echo "fuzz: FAILED"
exit $failed
