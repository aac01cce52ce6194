#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, types, and every pytest test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p reports
echo "== ruff"; ruff check src tests deploys bench
echo "== mypy"; mypy
echo "== pytest"
set +e
python -m pytest -p no:cacheprovider --junitxml=reports/junit.xml "$@"
rc=$?
set -e
if [[ $rc == 5 ]]; then
  echo "test: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit $rc
