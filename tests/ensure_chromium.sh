#!/bin/sh
# The UI tests (tests/test_ui.py) drive Debian's chromium through Playwright. Install it when it is
# missing; quick and silent when it is there. Playwright's own browser download is not used.
set -e
CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    SUDO=
elif command -v sudo >/dev/null 2>&1; then
    SUDO=sudo
else
    echo "ensure_chromium: $CHROMIUM is missing: install Debian's chromium (apt-get install chromium) as root" >&2
    exit 1
fi
echo "ensure_chromium: installing chromium (apt-get) for the UI tests" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null
}
[ -x "$CHROMIUM" ] || { echo "ensure_chromium: chromium did not install at $CHROMIUM" >&2; exit 1; }
