#!/bin/sh
# Builds the prebuilt (federated) labextension into
# hubfs_jupyterlab/labextension with @jupyterlab/builder against the
# JupyterLab installed in this Python (its `staging` folder holds the core's
# shared package versions). `npm run build` runs tsc, then this.
set -eu
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
CORE=$("$PY" -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))') || {
    echo "build-labextension: JupyterLab is not installed in $PY (pip install 'jupyterlab>=4.2,<5')" >&2
    exit 1
}
exec node_modules/.bin/build-labextension --core-path "$CORE" .
