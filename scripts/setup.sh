#!/usr/bin/env bash
# Create ./.venv (if absent) and install synthquant into it. Pass --test for the test tools.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "${here}/.venv/bin/python" ]] || python3 -m venv "${here}/.venv"
# shellcheck disable=SC1091
source "${here}/.venv/bin/activate"
bash "${here}/scripts/install.sh" "$@"
