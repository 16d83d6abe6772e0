#!/usr/bin/env bash
# The Python venv for test/python.test.mjs: tests/mcp/.venv with the pinned
# MCP Python SDK (python/requirements.txt, from PyPI). Does nothing when the
# venv is already newer than the requirements.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ] && [ .venv/.installed -nt python/requirements.txt ]; then
  exit 0
fi
rm -rf .venv
# Debian splits venv out of python3: install it when missing (as root).
if ! python3 -c 'import ensurepip, venv' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r python/requirements.txt
touch .venv/.installed
