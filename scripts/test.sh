#!/usr/bin/env bash
# The test command: installs what is missing, builds, starts a throwaway PostgreSQL on
# loopback (Debian's, installed when missing and we are root), lints and type-checks the
# tree, runs the whole suite, and ends with one line `tests: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_node_modules || exit 1
if [ "$(id -u)" = 0 ]; then
  ensure_ledger_tools || echo "note: hledger or bean-check could not be installed"
  ensure_debian_packages || echo "note: monitoring-plugins or supervisor could not be installed"
fi
npm run --silent build || { echo "build failed"; echo "tests: 0 passed, 1 failed"; exit 1; }

# The whole suite also lints and type-checks the whole tree (test/ and bench/ included);
# a run narrowed to some files (arguments given) leaves that out. A failed check counts
# as one failure in the closing line.
export PLEDGER_CHECKS_FAILED=0
if [ $# -eq 0 ]; then
  if ! npx eslint .; then echo "eslint failed"; PLEDGER_CHECKS_FAILED=$((PLEDGER_CHECKS_FAILED + 1)); fi
  if ! npx tsc -p tsconfig.json --noEmit; then echo "the type check failed"; PLEDGER_CHECKS_FAILED=$((PLEDGER_CHECKS_FAILED + 1)); fi
fi

export PLEDGER_TEST_POSTGRES_URL="${PLEDGER_TEST_POSTGRES_URL:-}"
if [ -z "$PLEDGER_TEST_POSTGRES_URL" ]; then
  if start_throwaway_postgres; then
    export PLEDGER_TEST_POSTGRES_URL="$PG_URL"
    trap stop_throwaway_postgres EXIT
  elif [ "${CI:-}" = "true" ]; then
    echo "PostgreSQL is required in CI and could not be started"; echo "tests: 0 passed, 1 failed"; exit 1
  else
    echo "note: no PostgreSQL here; the database tests run on SQLite only"
  fi
fi

bash scripts/run-vitest.sh "$@"
