#!/usr/bin/env bash
# Sets everything up, builds a small image locally and fetches it through skopeo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
