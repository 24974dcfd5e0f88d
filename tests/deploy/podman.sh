# shellcheck shell=bash
# Sourced by tests/deploy/image.sh and run.sh: how this machine runs containers.
# podman here needs runc and explicit rlimits; the containers use the host's
# network and listen on loopback ports, so no request leaves 127.0.0.1; the
# image's HEALTHCHECK is run by hand (no systemd to time it).
# shellcheck disable=SC2034  # used by the scripts that source this
RUN_FLAGS=(--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --network host --health-interval disable)

# A free loopback port.
free_port() {
    "${PY:-/usr/bin/python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
