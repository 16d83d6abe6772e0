#!/usr/bin/env bash
# The Python venv for test/python.test.mjs: tests/mcp/.venv with the pinned
# MCP Python SDK (python/requirements.txt). Does nothing when the venv is
# already at least as new as the requirements.
set -euo pipefail
cd "$(dirname "$0")"
if [ -x .venv/bin/python ] && [ .venv/.installed -nt python/requirements.txt ]; then
  exit 0
fi
rm -rf .venv
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check --no-input -r python/requirements.txt
touch .venv/.installed
