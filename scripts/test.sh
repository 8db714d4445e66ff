#!/usr/bin/env bash
# Sets everything up, then runs the checks, a smoke run of the benchmarks and the
# whole test suite. Extra arguments go to pytest; CI adds
# --reliability-report=docs/reliability.md to write the reliability record.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
skopeo --version
ruff check src tests tools examples bench
ruff format --check src tests tools examples bench
mypy
python tools/gen_sync.py --check
python bench/run.py --smoke >/dev/null
python bench/unpack.py --smoke >/dev/null
python bench/containers_storage.py --smoke >/dev/null
python -m pytest "$@"
