#!/usr/bin/env bash
# Install the headless browser the dashboard's end-to-end test drives: Debian's `chromium`,
# with apt-get when it is not installed yet (the package lists are updated once first).
# Prints the browser's path. Fails, saying why, when it is missing and cannot be installed.
set -euo pipefail

find_chromium() { command -v chromium || command -v chromium-browser || true; }

path="$(find_chromium)"
if [ -z "$path" ]; then
    if ! command -v apt-get >/dev/null; then
        echo "browser.sh: chromium is not installed and there is no apt-get to install it" >&2
        exit 1
    fi
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "browser.sh: installing chromium with apt-get (once)" >&2
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium >&2
    path="$(find_chromium)"
    if [ -z "$path" ]; then
        echo "browser.sh: apt-get installed chromium but no chromium command is on PATH" >&2
        exit 1
    fi
fi
echo "$path"
