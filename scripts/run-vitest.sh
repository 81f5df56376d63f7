#!/usr/bin/env bash
# Runs vitest with the given arguments and ends with the closing line
# `tests: N passed, N failed`; its exit status is 0 exactly when that line says 0 failed.
# scripts/test.sh calls it once everything the suite needs is ready.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
counts=$(mktemp /tmp/pledger-test-counts.XXXXXX)
trap 'rm -f "$counts"' EXIT
PLEDGER_TEST_COUNTS="$counts" npx vitest run --reporter=default --reporter="$here/summary-reporter.mjs" "$@"
status=$?
node "$here/test-summary.mjs" "$counts" "$status"
