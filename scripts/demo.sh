#!/usr/bin/env bash
# Sets everything up, then runs the main job: three Debian 12 VMs (gw1, sess1, kv1) under qemu,
# the hardening bundle applied with pyinfra and proven idempotent, the compliance suite run against
# every host, and a per-host summary with the gateway address. The VMs stay up for a look around:
# `.venv/bin/ostiary lab ssh gw1`, and `.venv/bin/ostiary lab down` when done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ostiary lab up
.venv/bin/ostiary lab apply
.venv/bin/ostiary lab check
