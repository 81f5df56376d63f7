#!/usr/bin/env bash
# Runs the request benchmark (dist/bench/requests.js, built by `npm run bench:requests`)
# against the PostgreSQL named by PLEDGER_TEST_POSTGRES_URL, or a throwaway one started
# here on 127.0.0.1 and removed at the end; SQLite only when neither is possible.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
if [ -z "${PLEDGER_TEST_POSTGRES_URL:-}" ]; then
  if start_throwaway_postgres; then
    trap stop_throwaway_postgres EXIT
    export PLEDGER_TEST_POSTGRES_URL="$PG_URL"
  else
    echo "no PostgreSQL could be started: SQLite only"
  fi
fi
node dist/bench/requests.js "$@"
