#!/usr/bin/env bash
# Sets the machine up, then runs every check: ruff, mypy and pytest (extra arguments go to pytest).
# Every check runs even when an earlier one fails; the exit status is non-zero if any failed.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 1

bash scripts/setup.sh || { echo "test: setup failed" >&2; exit 1; }

failed=()
run() {
    local name="$1"
    shift
    echo "test: $name"
    "$@" || failed+=("$name")
}

run "ruff check" .venv/bin/ruff check .
run "mypy" .venv/bin/mypy
run "pytest" .venv/bin/pytest -q --durations=25 "$@"

if [ "${#failed[@]}" -gt 0 ]; then
    echo "test: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test: all checks passed"
