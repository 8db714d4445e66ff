#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: skopeo, the
# distribution registry (docker-registry), openssl, umoci, gnupg (signatures in the
# tests), podman (a private containers-storage store in the tests) and debootstrap
# (the benchmarks' Debian image) from Debian, and a virtual environment in .venv with
# the package and its development tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v skopeo >/dev/null 2>&1 || ! command -v docker-registry >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1 || ! command -v umoci >/dev/null 2>&1 \
    || ! command -v gpg >/dev/null 2>&1 || ! command -v podman >/dev/null 2>&1 \
    || ! command -v debootstrap >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq skopeo docker-registry openssl umoci gnupg podman \
        debootstrap >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[dev]"
