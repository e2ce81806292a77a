#!/usr/bin/env bash
# Installs what the Helm chart tests (charts/tests, run by tests/tests/chart.rs)
# need: helm-python-sdk (Helm's own Go code behind a C ABI: render and lint
# without a helm binary), kubernetes-validate (Kubernetes JSON schemas per
# version), pytest and PyYAML. Idempotent: skips what is already importable.
set -euo pipefail

PY="${PYTHON:-python3}"
need=()
"$PY" -c 'import helm_python' 2>/dev/null || need+=('helm-python-sdk>=0.2,<0.3')
"$PY" -c 'import kubernetes_validate' 2>/dev/null || need+=('kubernetes-validate>=1.31')
"$PY" -c 'import pytest' 2>/dev/null || need+=('pytest>=7')
"$PY" -c 'import yaml' 2>/dev/null || need+=('PyYAML>=6')
# The spawn hook (quota/python) runs on tornado, as JupyterHub does.
"$PY" -c 'import tornado' 2>/dev/null || need+=('tornado>=6')
if [ "${#need[@]}" -gt 0 ]; then
    "$PY" -m pip install --quiet "${need[@]}"
fi
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
"$PY" - <<'PY'
import helm_python, kubernetes_validate.utils as kv, pytest, yaml
print("install-chart: helm-python-sdk", helm_python.__version__,
      "(helm", helm_python.helm_sdk_version() + ")",
      "kubernetes-validate schemas", kv.all_versions()[0], "..", kv.latest_version(),
      "pytest", pytest.__version__)
PY
