#!/usr/bin/env bash
# Installs the Debian packages finc needs, when any is missing.
set -eu
pkgs=(build-essential pkg-config check libcjson-dev libpng-dev zlib1g-dev libdnnl-dev
      libopenblas-dev libmicrohttpd-dev libuv1-dev libcurl4-openssl-dev
      python3-torch python3-numpy python3-pil fonts-dejavu-core cython3 dataset-fashion-mnist prometheus nginx-light
      clang libclang-rt-dev libomp-dev patch xz-utils podman debootstrap chromium time)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# make test-browser drives the page with puppeteer-core (node >= 18, npm ci). A node
# from elsewhere (NodeSource) is kept: Debian's npm would conflict with the npm it carries.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
