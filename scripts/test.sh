#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, types, every pytest test, and the VM lab
# (three Debian 12 VMs under qemu: bundle applied, idempotence proven, compliance suite, session
# flows, external verifiers). OSTIARY_TEST_LAB=0 leaves the lab stage out (a quick local run).
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
if [[ ${OSTIARY_TEST_LAB:-1} != 0 ]]; then
  # About 11 minutes under software emulation with a cached image, plus 3-4 minutes to build the
  # image once. Output is live (each lab phase prints its progress and time) and also captured
  # into the JUnit report; the slowest tests and a table of phase times close the stage.
  stage "pytest: VM lab (qemu guests: apply, idempotence, compliance suite, session flows, external verifiers)"
  run_pytest reports/junit-lab.xml --capture=tee-sys --durations=12 tests/lab
else
  echo "test: OSTIARY_TEST_LAB=0: the VM lab stage was left out" >&2
fi
stage "done"
