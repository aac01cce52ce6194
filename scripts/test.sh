#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, types, every pytest test; with
# OSTIARY_TEST_LAB=1 also the VM lab (three Debian 12 VMs under qemu: bundle applied, idempotence,
# compliance suite, session flows).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p reports
started=$SECONDS

stage() { echo; echo "== $1 ($((SECONDS - started)) s elapsed)"; }

# pytest's exit code 5 (nothing collected) is a failure here, never a silent pass.
run_pytest() {
  local junit=$1
  shift
  set +e
  python -m pytest -p no:cacheprovider --junitxml="$junit" "$@"
  local rc=$?
  set -e
  if [[ $rc == 5 ]]; then
    echo "test: pytest collected no tests for: $*" >&2
    return 1
  fi
  return $rc
}

stage "ruff"
ruff check src tests deploys bench scripts
stage "mypy"
mypy
stage "pytest: unit, integration (real Redis + daemons), bundle (rendered files checked by the real programs)"
run_pytest reports/junit.xml tests/unit tests/integration tests/bundle
# The VM lab stage (about 15 minutes under software emulation) runs when OSTIARY_TEST_LAB=1: its
# session flows failed in the last full rehearsal (see docs/lab.md, "Known problems"), so it is not
# yet part of the default run that CI gates on.
if [[ ${OSTIARY_TEST_LAB:-0} == 1 ]]; then
  stage "pytest: VM lab (qemu guests: apply, idempotence, compliance suite, session flows, external verifiers)"
  run_pytest reports/junit-lab.xml tests/lab
fi
stage "done"
