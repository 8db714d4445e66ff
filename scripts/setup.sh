#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: skopeo, the
# distribution registry (docker-registry), openssl, umoci and debootstrap (for the
# benchmarks' Debian image) from Debian, and a virtual
# environment in .venv with the package and its development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v skopeo >/dev/null 2>&1 || ! command -v docker-registry >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1 || ! command -v umoci >/dev/null 2>&1 \
    || ! command -v debootstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq skopeo docker-registry openssl umoci debootstrap >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"
