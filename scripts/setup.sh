#!/usr/bin/env bash
# Idempotent setup: system packages (only those missing), then .venv with the project and its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# libsodium: ristretto255 for the OPRF. SoftHSM2 + OpenSC tools: the vault nodes' PKCS#11 tokens.
dpkg -s libsodium23 >/dev/null 2>&1 || need+=(libsodium23)
dpkg -s softhsm2 >/dev/null 2>&1 || need+=(softhsm2)
dpkg -s spin >/dev/null 2>&1 || need+=(spin)  # model check of the fleet protocol (spec/)
command -v redis-server >/dev/null || need+=(redis-server)  # relays' shared rate limits (tests)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${need[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # pip is quiet (-q): say what the silent minutes are for.
    echo "setup: installing backupvault and its Python dependencies into .venv (a few minutes the first time) …"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi

echo "setup: done. To put backupvault on PATH in this shell: . .venv/bin/activate"
echo "       (or run .venv/bin/backupvault directly)"
