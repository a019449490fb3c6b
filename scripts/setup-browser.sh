#!/usr/bin/env bash
# One-time set-up for the chat page test (tests/web-py/test_chat_page.py): Debian's chromium,
# driven headless over the DevTools protocol, and a font so the screenshot shows text.
#
# No recommends: chromium's recommended packages are desktop integration (a sandbox helper,
# driver stacks for GPUs, upower, ...), none of which a headless page test needs.
# fonts-dejavu-core: a fresh Debian image may have no font at all, and chromium then renders
# every glyph as a blank box.
#
# Idempotent: a re-run is a no-op once the binary and the font are present. Needs root (or sudo).
set -euo pipefail

PKGS=(chromium fonts-dejavu-core)

have_all() {
    command -v chromium >/dev/null && [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]
}

if have_all; then
    exit 0
fi

SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
echo "setup-browser: apt-get update + install ${PKGS[*]}" >&2
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null

have_all || { echo "setup-browser: chromium or its font still missing after install" >&2; exit 1; }
echo "setup-browser: ready ($(chromium --version 2>/dev/null | head -1))" >&2
