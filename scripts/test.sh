#!/usr/bin/env bash
# `cargo test` with a summary of what did not run: tests that cannot run outside
# CI (no substrate binaries, no Envoy, no reference files) record themselves in a
# ledger (tests/common/skip.rs); this script starts an empty one, passes its
# arguments to `cargo test`, prints the ledger, and exits with cargo's status.
# Usage: scripts/test.sh [cargo test arguments...]
set -uo pipefail
cd "$(dirname "$0")/.."
CDCHECK_SKIP_LEDGER="$(mktemp "${TMPDIR:-/tmp}/cdcheck-skipped.XXXXXX")"
export CDCHECK_SKIP_LEDGER
trap 'rm -f "$CDCHECK_SKIP_LEDGER"' EXIT
cargo test "$@"
status=$?
echo
if [[ -s "$CDCHECK_SKIP_LEDGER" ]]; then
  echo "== $(wc -l <"$CDCHECK_SKIP_LEDGER") test(s) did NOT run (they passed as skips; with CI set they fail):"
  sort "$CDCHECK_SKIP_LEDGER" | awk -F'\t' '{ printf "SKIPPED %s: %s\n", $1, $2 }'
else
  echo "== no test was skipped"
fi
exit "$status"
