#!/usr/bin/env bash
# Sets up a fresh Linux machine and runs the main job: one producer process
# feeding two consumer processes through shmq, with live rates and loss counts.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
python3 -m pip install -q .
# Run outside the source tree so Python imports the installed, compiled package.
cd /tmp && exec python3 -m shmq demo "$@"
