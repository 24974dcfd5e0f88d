#!/usr/bin/env bash
# Ships the best Fashion-MNIST checkpoint as weights/fashion-mnist.safetensors:
# exports it, measures test bits/dim with the C engine (all 10,000 test images,
# midpoint and importance-weighted, and the 256-image subset the regression test
# checks), records the figures in the file's metadata, calibrates its anomaly
# score on the 5,000 validation images, and draws the sample grids shown in the README.
#   tools/ship.sh [CHECKPOINT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
S=${SAMPLES:-16}
out=weights/fashion-mnist.safetensors
tmp=build/ship.safetensors
mkdir -p build weights docs
# A frozen copy: training may write a new best checkpoint while this runs.
cp "${1:-tools/checkpoints/fmnist.best.pt}" build/ship.pt
ck="--checkpoint build/ship.pt"
make -s finc
$PY tools/export.py $ck --out "$tmp" --no-calibrate
field() { $PY -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }
mid=$(./finc eval "$tmp" --data test --json)
iw=$(./finc eval "$tmp" --data test --samples "$S" --seed 1 --json)
sub=$(./finc eval "$tmp" --data test --limit 256 --json)
echo "test, midpoint:            $mid"
echo "test, importance-weighted: $iw"
echo "first 256 test images:     $sub"
$PY tools/export.py $ck --out "$out" --test-bpd "$(field bits_per_dim <<<"$mid")" \
    --meta "test_bpd_stderr=$(field stderr <<<"$mid")" \
    --meta "test_bpd_iw$S=$(field bits_per_dim <<<"$iw")" \
    --meta "test_subset256_bpd=$(field bits_per_dim <<<"$sub")"
rm -f "$tmp" build/ship.pt
# (export.py fitted and calibrated the anomaly score on the validation images: docs/anomaly.md)
./finc eval "$out" --data test | tail -n 2
./finc sample "$out" -n 64 -t 0.7 --seed 1 -o docs/samples-t0.7.png
./finc sample "$out" -n 64 -t 1.0 --seed 1 -o docs/samples-t1.0.png
./finc info "$out"
