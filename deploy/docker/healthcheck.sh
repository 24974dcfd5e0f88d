#!/bin/bash
# The image's HEALTHCHECK: GET /healthz on the local server through bash's
# /dev/tcp, so the runtime image needs neither curl nor wget. Exit 0 on a 200
# status line within the timeout, 1 otherwise. The port and address come from
# FINC_PORT and FINC_HOST, the variables the server itself reads.
port=${FINC_PORT:-8080}
case ${FINC_HOST:-0.0.0.0} in
    0.0.0.0 | "") host=127.0.0.1 ;;
    :: | "[::]") host=::1 ;;
    *) host=$FINC_HOST ;;
esac
timeout=${FINC_HEALTHCHECK_TIMEOUT:-2}

if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    echo "finc-healthcheck: cannot connect to $host:$port" >&2
    exit 1
fi
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS= read -r -t "$timeout" status <&3 || exit 1
case $status in
    "HTTP/1."[01]" 200 "*) exit 0 ;;
esac
echo "finc-healthcheck: /healthz answered: ${status%$'\r'}" >&2
exit 1
