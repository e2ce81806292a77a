#!/usr/bin/env bash
# Installs what the JupyterHub integration tests and bench/reaper.sh need:
# jupyterhub (PyPI) and configurable-http-proxy (npm). Idempotent.
set -euo pipefail

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import jupyterhub' 2>/dev/null; then
    "$PY" -m pip install --quiet 'jupyterhub>=5,<6'
fi
if ! command -v configurable-http-proxy >/dev/null 2>&1; then
    npm install -g --silent configurable-http-proxy
fi
# pyenv shims may need a rehash for the new console scripts.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
command -v jupyterhub >/dev/null
command -v configurable-http-proxy >/dev/null
echo "install-hub: jupyterhub $("$PY" -c 'import jupyterhub; print(jupyterhub.__version__)'), configurable-http-proxy $(configurable-http-proxy --version)"
