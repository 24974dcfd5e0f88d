# syntax=docker/dockerfile:1
#
# finc serve images (docs/deploy.md):
#   docker build --target cpu  -t finc:cpu  .    # Debian slim, the CPU engine (the default target)
#   docker build --target cuda -t finc:cuda .    # NVIDIA CUDA base + cuBLAS, --backend auto
#   docker run --rm -p 8080:8080 finc:cpu
#
# Both run `finc serve` as an unprivileged user, with the shipped Fashion-MNIST
# model at /opt/finc/weights/fashion-mnist.safetensors (FINC_WEIGHTS points at
# it; mount another file and set FINC_WEIGHTS to serve that one). Every flag of
# `finc serve --help` is also a FINC_* variable, so configuration is by
# environment; arguments after the image name replace `serve` (e.g. `info`).

# A portable x86-64 target: the GEMMs go through oneDNN, which picks AVX2 or
# AVX-512 kernels at run time whatever this says; it only limits what the
# compiler may use in finc's own loops. x86-64-v3 (AVX2, FMA) is a fair choice
# for a fleet known to be Haswell or newer.
ARG ARCH=-march=x86-64-v2
ARG CUDA_VERSION=12.8.1
ARG CUDA_UBUNTU=22.04

# ---------------------------------------------------------------- CPU build
FROM debian:bookworm AS build-cpu
# The C build's packages from tools/deps.sh (not the Python, test or benchmark
# ones). Versions are those of the bookworm snapshot the image is built from;
# pinning them would break on every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libcjson-dev libpng-dev zlib1g-dev libdnnl-dev \
        libmicrohttpd-dev libuv1-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG ARCH
RUN make -j"$(nproc)" finc ARCH="$ARCH" CUDA=0 \
 && install -D -s -m 0755 finc /out/finc

# --------------------------------------------------------------- CUDA build
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${CUDA_UBUNTU} AS build-cuda
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config libcjson-dev libpng-dev zlib1g-dev libdnnl-dev \
        libmicrohttpd-dev libuv1-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG ARCH
# Empty: the Makefile's GPU targets (sm_90 plus compute_90 PTX). For other GPUs,
# e.g. --build-arg CUDA_ARCH="-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=[sm_90,compute_90]".
ARG CUDA_ARCH=
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The runtime stage installs the packages that own the libraries this binary
# links, found here with ldd and dpkg -S, rather than a list of Ubuntu package
# names kept by hand next to the Debian one.
# finc links no CUDA library: the CUDA backend is its module, libfinc-cuda.so,
# which it finds beside itself.
RUN if [ -n "$CUDA_ARCH" ]; then set -- CUDA_ARCH="$CUDA_ARCH"; fi \
 && make -j"$(nproc)" finc build/libfinc-cuda.so ARCH="$ARCH" CUDA=1 "$@" \
 && install -D -s -m 0755 finc /out/finc \
 && install -D -s -m 0755 build/libfinc-cuda.so /out/libfinc-cuda.so \
 && for lib in $(ldd /out/finc /out/libfinc-cuda.so | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u); do \
        real=$(readlink -f "$lib"); pkg=; \
        for path in "$real" "$lib" "${real#/usr}" "/usr$lib"; do \
            pkg=$(dpkg -S "$path" 2>/dev/null | head -n 1 | cut -d: -f1) && [ -n "$pkg" ] && break; \
        done; \
        if [ -z "$pkg" ]; then echo "no package owns $lib" >&2; exit 1; fi; \
        echo "$pkg"; \
    done | grep -vx libc6 | sort -u > /out/runtime-packages \
 && grep -q '^libcublas' /out/runtime-packages \
 && cat /out/runtime-packages

# --------------------------------------------------------------- CUDA image
# The CUDA base image (driver interface and cudart) plus cuBLAS from NVIDIA's
# apt repository it already lists: about a third of the "runtime" image, which
# carries every CUDA math library.
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${CUDA_UBUNTU} AS cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build-cuda /out/runtime-packages /tmp/runtime-packages
# hadolint ignore=DL3008
RUN apt-get update \
 && xargs -a /tmp/runtime-packages env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
 && groupadd --gid 10001 finc \
 && useradd --uid 10001 --gid finc --home-dir /opt/finc --no-create-home \
        --shell /usr/sbin/nologin finc
COPY --from=build-cuda /out/finc /out/libfinc-cuda.so /usr/local/bin/
COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/finc-healthcheck
COPY weights/fashion-mnist.safetensors /opt/finc/weights/fashion-mnist.safetensors
RUN if ldd /usr/local/bin/finc /usr/local/bin/libfinc-cuda.so | grep 'not found'; then exit 1; fi \
 && finc info /opt/finc/weights/fashion-mnist.safetensors
# auto: the GPU when the container is given one (--gpus, nvidia.com/gpu), else
# the CPU engine, so the same image also starts on a CPU node.
ENV FINC_HOST=0.0.0.0 \
    FINC_PORT=8080 \
    FINC_WEIGHTS=/opt/finc/weights/fashion-mnist.safetensors \
    FINC_BACKEND=auto \
    FINC_LOG=json
WORKDIR /opt/finc
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/finc-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/finc"]
CMD ["serve"]

# ---------------------------------------------------------------- CPU image
# Last, so that a plain `docker build .` builds this one.
FROM debian:bookworm-slim AS cpu
# Only the shared libraries ./finc links (ldd). The ldd check below fails the
# build if this list ever falls short of the binary.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libcjson1 libpng16-16 zlib1g libmicrohttpd12 libuv1 libdnnl2 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 finc \
 && useradd --uid 10001 --gid finc --home-dir /opt/finc --no-create-home \
        --shell /usr/sbin/nologin finc
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build-cpu /out/finc /usr/local/bin/finc
COPY --chmod=0755 deploy/docker/healthcheck.sh /usr/local/bin/finc-healthcheck
COPY weights/fashion-mnist.safetensors /opt/finc/weights/fashion-mnist.safetensors
# Fail the build, not the first start, on a missing library or a bad weights file.
RUN if ldd /usr/local/bin/finc | grep 'not found'; then exit 1; fi \
 && finc info /opt/finc/weights/fashion-mnist.safetensors
ENV FINC_HOST=0.0.0.0 \
    FINC_PORT=8080 \
    FINC_WEIGHTS=/opt/finc/weights/fashion-mnist.safetensors \
    FINC_BACKEND=cpu \
    FINC_LOG=json
WORKDIR /opt/finc
USER 10001:10001
EXPOSE 8080
# Liveness only; readiness (/readyz) is for load balancers and Kubernetes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/finc-healthcheck"]
# SIGTERM drains (FINC_DRAIN_TIMEOUT, 30 s by default): give `docker stop` more
# than that (--stop-timeout 40, compose stop_grace_period) or it is cut short.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/finc"]
CMD ["serve"]
