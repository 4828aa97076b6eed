#!/usr/bin/env bash
# Debian's chromium for tests/host/test_browser.py. Installed with apt-get when missing and this
# runs as root (CI does); otherwise a note, and the browser test then fails saying why. Never
# downloads a browser of its own (Playwright is pointed at /usr/bin/chromium).
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[browser] installing Debian's chromium (apt-get install chromium)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1
        apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
            || echo "[browser] apt-get could not install chromium: the browser test will fail saying so"
    fi
else
    echo "[browser] chromium is missing and apt-get cannot run here (not root): the browser test will fail saying so"
fi
exit 0
