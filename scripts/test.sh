#!/usr/bin/env bash
# Sets everything up, then runs the checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
skopeo --version
ruff check src tests tools examples
ruff format --check src tests tools examples
mypy
python tools/gen_sync.py --check
python -m pytest "$@"
