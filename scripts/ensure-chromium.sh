#!/usr/bin/env bash
# Make sure a headless Chromium is available for the HTML report test (tests/test_report_html.py).
# A no-op when chromium is already installed. Otherwise installs Debian's chromium package with apt-get
# (as root, or through passwordless sudo). When it cannot, it says so and exits 0: the test then skips
# with a reason instead of failing the whole run.
set -uo pipefail
for name in chromium chromium-browser google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no chromium and no apt-get here; the HTML rendering test will skip" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "ensure-chromium: chromium is missing and installing it needs root; the HTML rendering test will skip" >&2
    exit 0
fi
echo "ensure-chromium: installing Debian's chromium package (headless rendering of the HTML report)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null 2>&1 || true
    $SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
        || echo "ensure-chromium: apt-get could not install chromium; the HTML rendering test will skip" >&2
fi
exit 0
