#!/usr/bin/env bash
# Make a headless Chromium available for the report test (tests/test_report.py): Debian's `chromium`
# package, from the system's package index. Never a browser downloaded by playwright or puppeteer.
set -euo pipefail
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium: $(command -v "$name")"
    exit 0
  fi
done
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "chromium is not installed and this user cannot install packages: run 'apt-get install -y chromium' as root" >&2
      exit 1
    fi
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
  echo "chromium: $(command -v chromium)"
  exit 0
fi
echo "could not install chromium: install Debian's (or your distribution's) chromium package" >&2
exit 1
