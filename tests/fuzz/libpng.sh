#!/usr/bin/env bash
# libpng for fuzz_png, built from Debian's source package with libFuzzer's
# coverage instrumentation and ASan/UBSan, so that mutations are guided
# through libpng's decoder, not only through io/png.c around it.
#   tests/fuzz/libpng.sh OUT    ->  OUT/libpng.a, OUT/include/{png,pngconf,pnglibconf}.h
# The source comes through apt-get from a private deb-src list (the machine's
# apt configuration is untouched), with Debian's patches applied, and stays
# in OUT/src for later builds. Exits non-zero when it cannot be had; the
# Makefile then builds fuzz_png on the system's libpng and says so.
set -euo pipefail
out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -f "$out/libpng.a" ] && exit 0
src=$out/src
if [ ! -f "$src/png.c" ]; then
    apt_dir=$out/apt
    mkdir -p "$apt_dir/lists/partial"
    uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
    suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    echo "deb-src ${uri:-http://deb.debian.org/debian} $suite main" >"$apt_dir/sources.list"
    apt_opts=(-q -o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o Dir::State::Lists="$apt_dir/lists" -o APT::Sandbox::User=root)
    apt-get "${apt_opts[@]}" update >"$out/apt.log" 2>&1
    (cd "$apt_dir" && apt-get "${apt_opts[@]}" source --download-only libpng1.6 >>"$out/apt.log" 2>&1)
    rm -rf "$src" "$out/unpack"
    mkdir -p "$out/unpack"
    tar -C "$out/unpack" -xzf "$apt_dir"/libpng1.6_*.orig.tar.gz
    mv "$out"/unpack/libpng-* "$src"
    tar -C "$src" -xJf "$apt_dir"/libpng1.6_*.debian.tar.xz
    # Debian's patches, as the library this project links was built with (commented ones stay off)
    grep -v '^#' "$src/debian/patches/series" | while read -r p; do
        [ -n "$p" ] && patch -s -d "$src" -p1 <"$src/debian/patches/$p"
    done
    ls "$apt_dir"/*.dsc | sed 's|.*/||; s|\.dsc$||' >"$out/version"
fi
cp "$src/scripts/pnglibconf.h.prebuilt" "$src/pnglibconf.h"
mkdir -p "$out/include" "$out/obj"
cp "$src/png.h" "$src/pngconf.h" "$src/pnglibconf.h" "$out/include/"
for f in png pngerror pngget pngmem pngpread pngread pngrio pngrtran pngrutil pngset pngtrans pngwio pngwrite \
         pngwtran pngwutil; do
    clang -g -O1 -fsanitize=fuzzer-no-link,address,undefined -I"$src" -c "$src/$f.c" -o "$out/obj/$f.o"
done
ar rcs "$out/libpng.a.tmp" "$out"/obj/*.o
mv "$out/libpng.a.tmp" "$out/libpng.a"
echo "libpng: $(cat "$out/version") built for fuzzing in $out"
