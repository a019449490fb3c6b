#!/usr/bin/env bash
# One-time set-up for the load-balancer test (tests/web-py/test_nginx.py): Debian's nginx.
#
# The test runs its own nginx (`-p <tmpdir> -c <generated conf>`, in the foreground, on
# loopback ports), never the system service: the package's default site on port 80 is not
# used, and on Debian the service is not started inside containers without an init system.
# nginx-light would do too; the plain `nginx` package is what deploy/nginx/bitnet.conf
# documents, so the test runs the same build as a deployment would.
#
# Idempotent: a re-run is a no-op once the binary is present. Needs root (or sudo).
set -euo pipefail

have_all() {
    [[ -x /usr/sbin/nginx ]]
}

if have_all; then
    exit 0
fi

SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
echo "setup-nginx: apt-get update + install nginx" >&2
$SUDO apt-get update -qq
# policy-rc.d 101: keep the package's post-install from starting the system service (on a
# machine with systemd it would otherwise listen on port 80, which the test does not need).
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends nginx >/dev/null

have_all || { echo "setup-nginx: nginx still missing after install" >&2; exit 1; }
echo "setup-nginx: ready ($(/usr/sbin/nginx -v 2>&1))" >&2
