#!/usr/bin/env bash
# The test command: installs what is missing, builds, starts a throwaway PostgreSQL on
# loopback (Debian's, installed when missing and we are root), runs the whole suite,
# and ends with one line `tests: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_node_modules || exit 1
if [ "$(id -u)" = 0 ]; then
  ensure_ledger_tools || echo "note: hledger or bean-check could not be installed"
  ensure_debian_packages || echo "note: monitoring-plugins or supervisor could not be installed"
fi
npm run --silent build || { echo "build failed"; echo "tests: 0 passed, 1 failed"; exit 1; }

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

report=$(mktemp -d)/vitest.json
npx vitest run --reporter=default --reporter=json --outputFile="$report" "$@"
status=$?
node scripts/test-summary.mjs "$report" || echo "tests: 0 passed, 1 failed"
exit $status
