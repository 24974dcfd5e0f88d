#!/usr/bin/env bash
# make probes: the out-of-distribution probe sets of docs/anomaly.md, as IDX
# files in build/probes/ (tools/make_probes.py). The photographs come from
# Debian's python3-skimage: used where it is installed, else its package is
# fetched with apt-get download and unpacked into build/probes/ (nothing is
# installed). make ood then measures the shipped model against every set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
out=build/probes
mkdir -p "$out"
data=/usr/lib/python3/dist-packages/skimage/data
if [ ! -f "$data/camera.png" ]; then
    data=$out/skimage/usr/lib/python3/dist-packages/skimage/data
    if [ ! -f "$data/camera.png" ]; then
        (cd "$out" && rm -f python3-skimage_*.deb && apt-get download python3-skimage >/dev/null)
        dpkg-deb -x "$out"/python3-skimage_*.deb "$out/skimage"
    fi
fi
"$PY" tools/make_probes.py --out "$out" --skimage "$data"
