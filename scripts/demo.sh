#!/usr/bin/env bash
# Sets this machine up (scripts/setup-venv.sh: build tools if missing, the
# project venv .venv, shmq installed into it) and runs the main job: one
# producer process feeding two consumer processes through shmq, with live
# rates and loss counts.
#
#   bash scripts/demo.sh [--seconds S] [--size BYTES] [--capacity SLOTS]
#   PYTHON=/usr/bin/python3.12 bash scripts/demo.sh    # another interpreter (3.11+)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup-venv.sh"
shmq_setup_venv
cd "$SHMQ_ROOT"
exec "$SHMQ_PY" -m shmq demo "$@"
