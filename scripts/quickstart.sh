#!/usr/bin/env bash
# The embedded default on one machine: installs and builds what is missing, then runs
# `pledger quickstart` (a master on SQLite, a node agent, the hello release deployed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
if ! command -v cc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing a C compiler from Debian (the hello release is built from C sources)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi
ensure_node_modules
npm run --silent build
exec node dist/cli/main.js quickstart "$@"
