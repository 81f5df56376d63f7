#!/usr/bin/env bash
# The embedded default on one machine: installs and builds what is missing, then runs
# `pledger quickstart` (a master on SQLite, a node agent, the hello release deployed).
# A checkout built since its sources last changed is used as it is, so that running it
# again, or `--down`, starts at once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

down=false
for arg in "$@"; do [ "$arg" = --down ] && down=true; done

# Built, and no source, template or build setting changed since.
up_to_date() {
  [ -f dist/cli/main.js ] && [ -L node_modules -o -d node_modules ] || return 1
  [ -z "$(find protocol master slave cli templates package.json package-lock.json tsconfig.json tsconfig.build.json scripts/generate-validators.mjs \
    -newer dist/cli/main.js ! -name validators.generated.ts -print -quit 2>/dev/null)" ]
}

if ! $down && ! command -v cc >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing a C compiler from Debian (the hello release is built from C sources)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
fi
if ! up_to_date; then
  ensure_node_modules
  npm run --silent build
fi
exec node dist/cli/main.js quickstart "$@"
