#!/usr/bin/env bash
# make image: the CPU image (the Dockerfile's `cpu` target, unchanged) as finc:cpu,
# with docker when a Docker engine answers, else with podman.
#
# Where no registry serves base images (this project's machines reach only Debian's
# package archive), the Dockerfile's bases debian:bookworm and debian:bookworm-slim
# are made first with debootstrap (--variant=minbase) and imported under those
# names (both tags one tree, trimmed as Debian's slim image is); the root filesystem
# is cached in $FINC_IMAGE_CACHE (/var/cache/finc-image)
# and so are the packages the build's apt-get downloads, so a second build on the
# same machine downloads nothing but apt's lists.
#
#   tools/image.sh            env: IMAGE (finc:cpu), FINC_IMAGE_CACHE, DEBIAN_MIRROR
# Prints the image's size and layers at the end. podman builds in the docker format,
# which keeps the HEALTHCHECK (the OCI format drops it).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-finc:cpu}
cache=${FINC_IMAGE_CACHE:-/var/cache/finc-image}
suite=bookworm

engine=
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
elif command -v podman >/dev/null 2>&1; then engine=podman
else
    echo "image: no container engine: install podman (apt-get install podman) or start a Docker engine" >&2
    exit 1
fi
has_image() { if [ "$engine" = podman ]; then podman image exists "$1"; else docker image inspect "$1" >/dev/null 2>&1; fi; }

t0=$(date +%s)
base=docker.io/library/debian
if ! has_image "$base:$suite" || ! has_image "$base:$suite-slim"; then
    # A registry first, when one answers; else Debian's archive through debootstrap.
    if ! timeout 30 "$engine" pull -q "$base:$suite" >/dev/null 2>&1 || ! timeout 30 "$engine" pull -q "$base:$suite-slim" >/dev/null 2>&1; then
        mkdir -p "$cache"
        if [ ! -s "$cache/rootfs.tar" ]; then
            command -v debootstrap >/dev/null || { echo "image: no registry answers and debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
            mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
            echo "image: no registry answers; making the $suite base with debootstrap from ${mirror:-http://deb.debian.org/debian}"
            rm -rf "$cache/rootfs"
            debootstrap --variant=minbase "$suite" "$cache/rootfs" "${mirror:-http://deb.debian.org/debian}" >"$cache/debootstrap.log" 2>&1 \
                || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
            # As Debian's slim images: no apt lists or package cache inside, and dpkg
            # told to leave out documentation, man pages and translations, so the
            # runtime stage's packages weigh what they would on debian:bookworm-slim.
            rm -rf "$cache"/rootfs/var/lib/apt/lists/* "$cache"/rootfs/var/cache/apt/*.bin
            printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
                'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
                'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/locale/*' \
                'path-include /usr/share/locale/locale.alias' >"$cache/rootfs/etc/dpkg/dpkg.cfg.d/slim"
            find "$cache"/rootfs/usr/share/doc -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
            rm -rf "$cache"/rootfs/usr/share/man/* "$cache"/rootfs/usr/share/info/* "$cache"/rootfs/usr/share/lintian/*
            find "$cache"/rootfs/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
            # and apt keeps no package caches (Debian's images say the same)
            printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$cache/rootfs/etc/apt/apt.conf.d/no-cache"
            tar -C "$cache/rootfs" -c . >"$cache/rootfs.tar.tmp" && mv "$cache/rootfs.tar.tmp" "$cache/rootfs.tar"
            rm -rf "$cache/rootfs"
        fi
        "$engine" import "$cache/rootfs.tar" "$base:$suite" >/dev/null
        "$engine" tag "$base:$suite" "$base:$suite-slim"
        echo "image: $base:$suite and :$suite-slim imported from $cache/rootfs.tar"
    fi
fi

if [ "$engine" = podman ]; then
    mkdir -p "$cache/apt"
    podman build --format docker --pull=never --target cpu -t "$IMAGE" -v "$cache/apt:/var/cache/apt/archives" .
else
    docker build --target cpu -t "$IMAGE" .
fi
echo "image: built $IMAGE with $engine in $(( $(date +%s) - t0 )) s"
"$engine" image inspect "$IMAGE" --format 'image: {{.Id}} {{.Size}} bytes' | awk '{ printf "%s %s, %.0f MB\n", $1, substr($2, 1, 12), $3 / 1e6 }'
"$engine" history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c 1-110
