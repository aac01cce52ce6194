#!/usr/bin/env bash
# Sets everything up, then runs the main job: a local hardened Redis pair and the session daemon,
# a token issued and validated (and revoked) over real HTTP, printing what happened.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ostiary demo "$@"
